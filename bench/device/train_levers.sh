#!/bin/bash
# The training speed levers on a GPU machine (issue 12): the GPU check's tests and 100-step bf16 training stages
# (fused AdamW and train.attention=auto by default), then the BERT recipe for 200 steps with each lever
# switched, one run after the other (train tokens/s from metrics.json).  There: bash bench/device/train_levers.sh
set -u
. bench/device/prepare.sh
STAGE_TIMEOUT=${STAGE_TIMEOUT:-150} GPU_CHECK_EXTRA="--skip bench,scale" bash bench/device/run_gpu_check.sh 2>&1 \
    | grep "gpu-check\|GPU 0"
mkdir -p /tmp/levers
for variant in "optim.fused=false train.attention=sdpa" "train.attention=sdpa" "train.attention=eager"; do
  out=/tmp/levers/$(echo "$variant" | tr -dc 'a-z=.')
  # shellcheck disable=SC2086  # the variant is several overrides
  python3 -m train --config train/configs/bert_conll03.toml --data ../shared/data/conll03-iob-pos.json \
      --output-dir "$out" --overwrite train.max_steps=200 train.precision=bf16 train.progress=false $variant \
      > "$out.log" 2>&1 || { tail -5 "$out.log"; continue; }
  python3 - "$out" "$variant" <<'PY'
import json, sys
m = json.load(open(sys.argv[1] + "/metrics.json"))
print(f"{sys.argv[2]:40s} {m['attention']:6s} {m['train_wall_s']:6.1f} s {m['train_tokens_per_s']:8,.0f} tokens/s "
      f"valid F1 {100 * m['valid']['f1']:.2f}")
PY
done
