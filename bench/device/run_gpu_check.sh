#!/bin/bash
# Runs `bench/gpu_check.py` on the lent GPU machine (no network there): the project's pure-Python dependencies
# that the image lacks come from .devcarry/site, the MiniLM weights travel as fp16 and are widened back to fp32
# here, and ../shared holds the CoNLL JSON and the first 20,000 / 2,000 rows of the two corpora.
set -u
. bench/device/prepare.sh
ls -la ../shared/ ../shared/*/
nvidia-smi -L; nproc
python3 bench/gpu_check.py --data ../shared/data/conll03-iob-pos.json --work /tmp/gpu_check \
    --results "$OUT/results_gpu.md" --stage-timeout "${STAGE_TIMEOUT:-150}" ${GPU_CHECK_EXTRA:-}
rc=$?
tar czf "$OUT/gpu_check_logs.tgz" -C /tmp/gpu_check logs 2>/dev/null
echo "gpu_check exit $rc"
