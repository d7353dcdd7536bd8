#!/bin/bash
# Runs `bench/gpu_check.py` on a GPU machine without network access, from the bundle that make_bundle.sh builds
# (.devcarry/): the project's pure-Python dependencies that the machine's torch image lacks come from
# .devcarry/site, the MiniLM weights travel as fp16 and are widened back to fp32 here, and ../shared holds the
# CoNLL JSON, the news corpus and the first 2,000 rows of reuters21578.  The results file and the logs go to
# $OUT (default /tmp/gpu_check_out); STAGE_TIMEOUT and GPU_CHECK_EXTRA pass options to gpu_check.py.
set -u
. bench/device/prepare.sh
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
ls -la ../shared/ ../shared/*/
nvidia-smi -L; nproc
python3 bench/gpu_check.py --data ../shared/data/conll03-iob-pos.json --work /tmp/gpu_check \
    --results "$OUT/results_gpu.md" --stage-timeout "${STAGE_TIMEOUT:-150}" ${GPU_CHECK_EXTRA:-}
rc=$?
tar czf "$OUT/gpu_check_logs.tgz" -C /tmp/gpu_check logs 2>/dev/null
echo "gpu_check exit $rc"
