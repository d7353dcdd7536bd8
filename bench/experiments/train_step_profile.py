"""Where a training step's time goes on this machine: forward, backward, gradient clipping, optimizer step.

    python bench/experiments/train_step_profile.py [--config train/configs/bert_conll03.toml] [--steps 30] \\
        [section.option=value ...]

Builds the recipe's model, engine and batches exactly as ``python -m train`` does (``train.trainer.Trainer``,
the overrides applied last, e.g. ``train.attention=sdpa`` for the attention as it was), then
times the first ``--steps`` batches of the first epoch after 3 warm-up batches, each phase on its own, in
training mode (dropout on).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def recipe_arguments(description: str) -> argparse.ArgumentParser:
    """The options of a script that builds a recipe's trainer: ``--config``, ``--data``, ``--threads``."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "train/configs/bert_conll03.toml"))
    p.add_argument("--data", default=str(REPO.parent / "shared/data/conll03-iob-pos.json"))
    p.add_argument("--threads", type=int, default=2)
    return p


def recipe_trainer(args, run_dir: str, overrides=()):
    """The recipe's ``Trainer`` on one CPU process, built as ``python -m train`` builds it, writing into
    ``run_dir`` (no progress bars, no wandb; ``overrides`` applied last)."""
    from common import distributed
    from train.config import load_config
    from train.trainer import StopFlag, Trainer

    cfg = load_config(args.config, [f'data.path="{args.data}"', f'train.output_dir="{run_dir}"',
                                    "train.progress=false", 'wandb.mode="disabled"',
                                    f"train.num_threads={args.threads}", *overrides])
    return Trainer(cfg, distributed.setup("cpu"), StopFlag(), resume=False, overwrite=True)


def main():
    p = recipe_arguments(__doc__)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    import torch

    from common.batching import collate_windows

    with tempfile.TemporaryDirectory(prefix="step_profile_") as tmp:
        trainer = recipe_trainer(args, f"{tmp}/run", args.overrides)
        cfg, model, engine = trainer.cfg, trainer.model, trainer.engine
        engine.train()  # as Trainer.train() does: a Hugging Face encoder is built in eval mode, without dropout
        trained = [p for p in model.parameters() if p.requires_grad]
        seconds = {"forward": 0.0, "backward": 0.0, "clip": 0.0, "optimizer": 0.0}
        tokens = 0
        for k, idx in enumerate(list(trainer.sampler)[:args.steps + 3]):
            batch = collate_windows([trainer.windows["train"][i] for i in idx], trainer.windower.pad_id)
            t0 = time.perf_counter()
            loss = engine.forward(batch)["loss"]
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(trained, cfg.optim.max_grad_norm)
            t3 = time.perf_counter()
            engine.optimizer.step()
            engine.optimizer.zero_grad(set_to_none=True)
            t4 = time.perf_counter()
            if k >= 3:
                for name, dt in zip(seconds, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    seconds[name] += dt
                tokens += int(batch["attention_mask"].sum())
    total = sum(seconds.values())
    what = " ".join(args.overrides)
    phases = " ".join(f"{k} {v / args.steps * 1000:6.1f} ms" for k, v in seconds.items())
    print(f"{what or 'as committed':55s} {phases}  step {total / args.steps * 1000:6.1f} ms, "
          f"{tokens / total:7,.0f} tokens/s ({trainer.attention} attention, {trainer.dropout_kernel} dropout)",
          flush=True)


if __name__ == "__main__":
    main()
