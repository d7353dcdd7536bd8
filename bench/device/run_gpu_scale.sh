#!/bin/bash
# ner-tag at GPU scale on a GPU machine without network access (see run_gpu_check.sh for what the bundle
# carries; .devcarry/base is the baseline checkout): tables and a profile go to $OUT (default /tmp/gpu_scale_out).
set -u
. bench/device/prepare.sh
OUT=${OUT:-/tmp/gpu_scale_out}
mkdir -p "$OUT"
python3 bench/bench_infer.py --make-export /tmp/minilm --memory-only > /tmp/make_export.log 2>&1 || { tail -30 /tmp/make_export.log; exit 4; }
M=/tmp/minilm/export
C=../shared/corpus/news_sentences.parquet:100000
python3 bench/bench_gpu_scale.py --model $M --corpus $C --precision bf16,fp32 --batch-tokens 16384 --host-workers 4 \
    --baseline-repo .devcarry/base --results $OUT/scale_vs_baseline.md --json $OUT/scale_vs_baseline.json
python3 bench/bench_gpu_scale.py --model $M --corpus $C --precision bf16 --batch-tokens 16384,65536 \
    --host-workers 0,2,8 --results $OUT/scale_sweep.md --json $OUT/scale_sweep.json
python3 -c "import pyarrow.parquet as pq; pq.write_table(pq.read_table('${C%:*}'), '/tmp/sample.parquet')"
NER_TAG_HOST_WORKERS=4 python3 -m cProfile -o /tmp/prof.out -m infer --model $M --input /tmp/sample.parquet \
    --output /tmp/prof_out --device cuda --precision bf16 --no-progress --overwrite 2>&1 | tail -4
python3 -c "
import pstats, sys
for key in ('cumulative', 'tottime'):
    pstats.Stats('/tmp/prof.out', stream=sys.stdout).sort_stats(key).print_stats(40)
" > $OUT/profile.txt
echo done
