#!/usr/bin/env bash
# Does a packed BERT export score better when it sees more context at inference than in training?
#   bash bench/experiments/inference_context.sh EXPORT OUT [DATA]
# Copies EXPORT once per (pack_pieces, context_pieces) pair with those two windowing settings changed in its
# ner_config.json (the weights are the same) and scores valid and test with `python -m train.evaluate` (fp32).
# Prints one line per pair and fold: entity F1.
set -euo pipefail
export_dir=$1
out=$2
data=${3:-../shared/data/conll03-iob-pos.json}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
for pair in "128 0" "256 0" "512 0" "0 32" "0 64" "128 32"; do
  set -- $pair
  copy="$out/pack$1_context$2"
  rm -rf "$copy" && cp -r "$export_dir" "$copy"
  "$python" - "$copy/ner_config.json" "$1" "$2" <<'PY'
import json, sys
path, pack, context = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = json.load(open(path))
for section in (config, config["model"]):
    section["pack_pieces"], section["context_pieces"] = pack, context
json.dump(config, open(path, "w"), indent=1)
PY
  for fold in valid test; do
    "$python" -m train.evaluate --model "$copy" --data "$data" --fold "$fold" --precision fp32 > "$copy.$fold.json"
    "$python" -c "import json, sys; print(f'pack_pieces {sys.argv[1]:>3}  context_pieces {sys.argv[2]:>2}  {sys.argv[3]:5}  F1 {100 * json.load(open(sys.argv[4]))[\"f1\"]:.2f}')" \
      "$1" "$2" "$fold" "$copy.$fold.json"
  done
done
