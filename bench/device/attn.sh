#!/bin/bash
# The model alone on the GPU: fused (sdpa) against eager attention, bf16 and fp32, two batch sizes (the export's
# own decoding). Needs /tmp/minilm/export from run_gpu_scale.sh.
export PYTHONPATH=$PWD:$PWD/.devcarry/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 bench/device/model_only.py /tmp/minilm/export bf16:sdpa:16384 bf16:sdpa:65536 bf16:eager:16384 \
    bf16:eager:65536 fp32:sdpa:16384 fp32:sdpa:65536 fp32:eager:16384 fp32:eager:65536 2>&1 | grep -v Warn
