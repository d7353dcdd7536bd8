"""Two parts of a BERT-recipe training step, each against what it replaced, on this machine.

    python bench/experiments/train_micro.py [--config train/configs/bert_conll03.toml] [--batches 30] [--rounds 2]

* the CRF's negative log-likelihood, forward and backward, on the recipe's first batches (random logits of the
  batch's shape, the batch's labels): pytorch-crf's ``CRF.forward`` against ``ConstrainedCRF.forward`` (the
  scaled forward-backward of ``taggers.decoding``);
* one encoder layer's attention under bf16 autocast, forward and backward, 16 windows of 128 pieces with
  padding: transformers' fp32 additive mask added as it is (scores, softmax and dropout promoted to fp32)
  against ``taggers.dropout.eager_fast_dropout`` (the mask cast to the scores' dtype).

Milliseconds per call, each variant after the other, ``--rounds`` times (the first round includes warm-up).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench" / "experiments"))

from train_step_profile import recipe_arguments, recipe_trainer  # noqa: E402


def timed(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1000


def crf_variants(args) -> tuple[dict, int]:
    """The CRF loss on the recipe's first ``--batches`` batches, one callable per implementation -> them and the
    number of batches."""
    import torch
    from torchcrf import CRF

    from common.batching import collate_windows
    from taggers.decoding import compact

    with tempfile.TemporaryDirectory(prefix="train_micro_") as tmp:
        trainer = recipe_trainer(args, f"{tmp}/run")
        crf = trainer.model.crf
        rows = []
        for idx in list(trainer.sampler)[:args.batches]:
            batch = collate_windows([trainer.windows["train"][i] for i in idx], trainer.windower.pad_id)
            order, valid = compact(batch["labels"] >= 0)
            tags = batch["labels"].gather(1, order).clamp(min=0)
            keep = valid[:, 0]
            logits = torch.randn(int(keep.sum()), tags.size(1), crf.num_tags, requires_grad=True)
            rows.append((logits, tags[keep], valid[keep]))

    def crf_loss(likelihood):
        def run():
            for em, tags, mask in rows:
                (-likelihood(em, tags, mask)).sum().backward()
        return run

    return {"pytorch-crf": crf_loss(lambda em, t, m: CRF.forward(crf, em, t, mask=m, reduction="none")),
            "scaled forward-backward": crf_loss(crf)}, len(rows)


def attention_variants() -> dict:
    """One layer's attention with padding under bf16 autocast, one callable per way of adding the mask."""
    import torch
    from torch import nn

    from taggers.dropout import eager_fast_dropout, fast_dropout

    b, h, t, d = 16, 12, 128, 32
    q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))
    mask = torch.zeros(b, 1, t, t)
    mask[:, :, :, 100:] = torch.finfo(torch.float32).min  # padding keys, as transformers builds the mask
    layer = nn.Module().train()

    def fp32_mask():  # eager_fast_dropout as it was: the fp32 mask promotes the scores to fp32
        weights = torch.matmul(q, k.transpose(2, 3)) * d ** -0.5 + mask
        probs = fast_dropout(nn.functional.softmax(weights, dim=-1), 0.1)
        return torch.matmul(probs, v).transpose(1, 2).contiguous()

    def attention(fn):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = fn()
            out.float().sum().backward()
        return run

    return {"fp32 mask (as transformers passes it)": attention(fp32_mask),
            "eager_fast_dropout (mask cast)": attention(
                lambda: eager_fast_dropout(layer, q, k, v, mask, dropout=0.1)[0])}


def main():
    """Both comparisons, ``--rounds`` times, printed."""
    p = recipe_arguments(__doc__)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    import torch

    torch.manual_seed(0)
    crf, n_batches = crf_variants(args)
    attention = attention_variants()
    torch.set_num_threads(args.threads)
    for r in range(args.rounds):
        for name, fn in crf.items():
            ms = timed(fn, 1) / n_batches
            print(f"round {r + 1}  CRF loss, {n_batches} batches  {name:40s} {ms:7.2f} ms a batch", flush=True)
        for name, fn in attention.items():
            print(f"round {r + 1}  attention, one layer           {name:40s} {timed(fn, 10):7.2f} ms", flush=True)


if __name__ == "__main__":
    main()
