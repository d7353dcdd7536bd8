"""The one precision rule: which floating-point format a model runs in, and the autocast that applies it.

``auto`` resolves per device and job:

* GPU: bf16 where the GPU computes it natively (Ampere and later; emulated
  bf16 on V100/T4 is slow, so ``including_emulation=False``); otherwise fp16
  for inference and fp32 for training (fp16 training would need loss scaling);
* CPU: bf16 where the CPU has native bf16 (AVX512-BF16/AMX), else fp32; for
  training too (autocast; the weights and optimizer stay fp32): both CoNLL
  recipes reach the validation F1 of fp32 in less time (bench/results_train.md).
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ATTENTIONS = ("auto", "eager", "sdpa")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix products run natively (about 1.5-2x fp32 speed)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # pragma: no cover - older torch
        return False


def gpu_has_native_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(requested: str, device: torch.device, training: bool = False) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``requested`` (one of :data:`PRECISIONS`) on ``device``."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if gpu_has_native_bf16() else ("fp32" if training else "fp16")
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """A context that runs the model's matrix products in ``precision`` (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def cast_for_inference(model, precision: str, device: torch.device | str | None = None):
    """Eval mode, weights in ``precision`` (the CRF stays fp32: its log-sum-exp needs the range); in place.

    On a GPU in bf16/fp16 the Hugging Face encoder also switches to eager attention: on the short, padded
    windows of NER batches PyTorch's fused attention was the slower one (``bench/results_gpu.md``); fp32 and
    CPUs showed no difference, so they keep the default.
    """
    model.eval()
    if precision != "fp32":
        model.to(DTYPES[precision])
        if getattr(model, "crf", None) is not None:
            model.crf.float()
        if device is not None and torch.device(device).type == "cuda":
            use_attention(model, "eager")
    return model


def training_attention(requested: str) -> str:
    """The attention a Hugging Face encoder trains with, for ``requested`` (one of :data:`ATTENTIONS`).

    ``auto`` is eager: on NER's short windows PyTorch's fused attention trained slower in bf16 autocast, on a
    CPU and on a GPU (``bench/results_train.md``, ``bench/results_gpu.md``).
    """
    if requested not in ATTENTIONS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {requested!r}")
    return "eager" if requested == "auto" else requested


def attention_of(model) -> str | None:
    """The attention implementation of the first Hugging Face model inside ``model`` (None without one)."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            return module.config._attn_implementation
    return None


def padded_eager_mask(*args, **kwargs):
    """transformers' eager (additive) attention mask, built for a batch without padding too: deciding to skip it
    reads the mask on the host, a device sync in every forward, and adding its zeros changes no score."""
    from transformers.masking_utils import eager_mask

    return eager_mask(*args, **{**kwargs, "allow_is_bidirectional_skip": False})


def register_eager_masks(*implementations: str) -> None:
    """Eager attention (and the named implementations that take its masks) gets :func:`padded_eager_mask`."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    for name in ("eager",) + implementations:
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, padded_eager_mask)


def use_attention(model, implementation: str) -> None:
    """Every Hugging Face model inside ``model`` computes attention with ``implementation``."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and hasattr(module, "set_attn_implementation"):
            module.set_attn_implementation(implementation)
