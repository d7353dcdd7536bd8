#!/bin/bash
# On a GPU machine without network access (after `BASE=<commit> bash bench/device/make_bundle.sh` here): the BERT
# recipe's export (CRF, packing 128; trained 100 steps in bf16 there) tags the first 100,000 news rows with the
# baseline code (.devcarry/base) and with this checkout, bf16, 65,536 batch tokens; then the spans of both are compared.
set -u
. bench/device/prepare.sh >/dev/null
SRC=/tmp/scale_src.parquet
python3 -c "import pyarrow.dataset as ds, pyarrow.parquet as pq; pq.write_table(ds.dataset('../shared/corpus/news_sentences.parquet').head(100000), '$SRC')"
python3 -m train --config train/configs/bert_conll03.toml --data ../shared/data/conll03-iob-pos.json \
    --output-dir /tmp/crf --overwrite train.max_steps=100 'train.precision="bf16"' train.progress=false \
    'wandb.mode="disabled"' 2>&1 | grep -E "best model|steps" | tail -3
for name in base main; do
  code=$PWD; [ $name = base ] && code=$PWD/.devcarry/base
  for p in bf16 fp32; do
    out=/tmp/o_${name}_$p; rm -rf "$out"
    (cd "$code" && PYTHONPATH="$code:$PYTHONPATH" python3 -m infer --model /tmp/crf/export --input $SRC \
        --output "$out" --precision $p --batch-tokens 65536 --no-progress 2>&1 | grep -E "^tagged" | sed "s|^|$name $p: |")
  done
done
python3 - <<'PY'
import pyarrow.parquet as pq
for p in ("bf16", "fp32"):
    a = pq.read_table(f"/tmp/o_base_{p}").column("entities").to_pylist()
    b = pq.read_table(f"/tmp/o_main_{p}").column("entities").to_pylist()
    spans = lambda rows: [[(e["start"], e["end"], e["label"]) for e in r] for r in rows]
    print(p, "rows", len(a), "same spans:", spans(a) == spans(b), "same spans and scores:", a == b)
PY
