#!/bin/bash
# Issues 23 and 24 on a GPU machine without network access, in one run (its stages fit in measure.py's
# --budget-s, 340 s by default): ner-tag end to end for the BERT and BiLSTM recipes on the news corpus written up
# to 10 times into one input, against the plain forward of the same model; GPU busy %, first-batch time, time
# by stage; the GPU recipe trained to its test F1; the plain training step against the trainer for the MiniLM-L6
# and BERT-large shapes, MFU.  The table is printed last; the JSON
# (bench/results_gpu.json's schema) and the logs go to $OUT (default /tmp/measure_out).
# It needs torch with CUDA there and the bundle beside the checkout: on a machine with network access,
# BASE=none bash bench/device/make_bundle.sh; copy the checkout with .devcarry to the GPU machine, then there:
#   bash bench/device/measure.sh
set -u
. bench/device/prepare.sh
OUT=${OUT:-/tmp/measure_out}
mkdir -p "$OUT"
python3 bench/device/measure.py --work /tmp/measure --json "$OUT/results_gpu.json" "$@" 2>&1 | tee "$OUT/measure.log"
rc=${PIPESTATUS[0]}
tar czf "$OUT/measure_logs.tgz" -C /tmp/measure logs 2>/dev/null
exit "$rc"
