"""Dropout with cheap random masks, for training on CPUs.

torch's CPU dropout draws one random number per element (Bernoulli), which made the encoder's dropouts a large
share of a BERT-recipe training step on a CPU (``bench/results_train.md``). Here one 64-bit draw gives the masks
of four elements: each 16-bit slice is compared with ``p``, so ``p`` is applied to within 1/65,536. The masks
come from torch's default generator, so training stays seeded and deterministic.

:func:`use_fast_dropout` swaps every ``nn.Dropout`` of a model for :class:`FastDropout` and gives a Hugging Face
encoder with eager attention the same dropout on its attention probabilities (``eager_fast_dropout``, eager
attention with the cheap masks). Neither changes the state dict or inference (dropout is off in eval mode).
"""

from __future__ import annotations

import torch
from torch import nn

from .precision import register_eager_masks

DROPOUT_KERNELS = ("auto", "torch", "fast")
FAST_EAGER = "eager_fast_dropout"  # the attention implementation registered below
# Encoders whose eager attention is BERT's (the same ``eager_attention_forward`` in transformers 5); any other
# keeps its own attention, and torch's dropout on the attention probabilities.
BERT_ATTENTION = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert")
_SLICES = 4  # 16-bit slices in a 64-bit random word


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``x`` with each element zeroed with probability ``p`` (to within 1/65,536), the rest scaled by 1/(1-p)."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    words = -(-x.numel() // _SLICES)
    bits = torch.empty(words, dtype=torch.int64, device=x.device).random_(-2**63, None).view(torch.int16)
    threshold = round(p * 65536) - 32768  # an int16 slice is below it with probability p
    keep = (bits[:x.numel()] >= threshold).view(x.shape).to(x.dtype)  # a 0/1 multiplier: the cheapest backward
    return x * keep * (1.0 / (1.0 - p))  # the scale as a Python float: no bf16 rounding of 1/(1-p)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with :func:`fast_dropout`'s masks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def eager_fast_dropout(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Transformers' eager attention (BERT's ``eager_attention_forward``) with :func:`fast_dropout`, the
    additive mask in the scores' dtype.

    Under bf16 autocast the scores come out of their matrix product in bf16; transformers' mask is fp32, and
    adding it made the scores, their softmax, dropout and backward fp32, only for the probabilities to be cast
    back to bf16 for the next product. torch's CPU autocast keeps softmax in bf16 (it accumulates in fp32), so
    casting the mask keeps the whole attention in bf16 (timings: ``bench/experiments/train_micro.py``)."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype != weights.dtype:  # fp32's lowest value would round to -inf in bf16
            attention_mask = attention_mask.clamp(min=torch.finfo(weights.dtype).min).to(weights.dtype)
        weights = weights + attention_mask
    weights = fast_dropout(nn.functional.softmax(weights, dim=-1), dropout, module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def training_dropout(requested: str, device: torch.device) -> str:
    """``torch`` or ``fast`` for ``requested`` (one of :data:`DROPOUT_KERNELS`): auto is fast on a CPU only
    (torch's GPU dropout already draws its masks in parallel)."""
    if requested not in DROPOUT_KERNELS:
        raise ValueError(f"dropout kernel must be one of {', '.join(DROPOUT_KERNELS)}, got {requested!r}")
    if requested == "auto":
        return "fast" if device.type == "cpu" else "torch"
    return requested


def use_fast_dropout(model: nn.Module) -> None:
    """Every ``nn.Dropout`` of ``model`` becomes a :class:`FastDropout` of the same ``p``, in place; a Hugging
    Face encoder of the BERT family with eager attention switches to :data:`FAST_EAGER`."""
    from transformers import AttentionInterface, PreTrainedModel

    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace).train(child.training))
    AttentionInterface.register(FAST_EAGER, eager_fast_dropout)
    # Transformers builds attention masks per implementation and passes none to one it does not know:
    # this one takes eager attention's (additive) masks.
    register_eager_masks(FAST_EAGER)
    for module in model.modules():
        if (isinstance(module, PreTrainedModel) and module.config.model_type in BERT_ATTENTION
                and module.config._attn_implementation == "eager"):
            module.set_attn_implementation(FAST_EAGER)  # as taggers.precision.use_attention switches attention
