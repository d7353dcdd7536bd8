#!/bin/bash
# As attn.sh, bf16, batch 65536: eager and sdpa with constrained decoding off, and eager with it on (the export is
# trained for 60 steps only, so many rows need the Viterbi pass).
export PYTHONPATH=$PWD:$PWD/.devcarry/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 bench/device/model_only.py /tmp/minilm/export bf16:eager:65536:0 bf16:sdpa:65536:0 bf16:eager:65536:1 \
    2>&1 | grep -v Warn
