"""Training engines: who does backward, optimizer step, accumulation and checkpoint I/O.

The loop talks to an engine only through this interface (``micro_batch``,
``forward``, ``backward``, ``step``, ``lr``, ``train``, ``save``, ``load``, ``module``), so
plain torch (one process or DDP) and DeepSpeed run the same loop.
"""

from __future__ import annotations

import contextlib
import inspect
import os

import torch
from torch.nn.parallel import DistributedDataParallel

from common.distributed import DistInfo
from taggers.precision import autocast, resolve_precision

from .optim import build_optimizer


# The taggers' buffers are constants built alike on every rank (position ids, tag constraints): DDP's broadcast
# of them before every forward is a collective per micro-batch that changes nothing.
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})  # torch < 2.13


class TorchEngine:
    """torch AdamW + LambdaLR; the model is wrapped in DDP when there is more than one process."""

    name = "ddp"  # the train.engine value that selects it

    def __init__(self, model, cfg, info: DistInfo, total_steps: int):
        self.info = info
        self.grad_accum = cfg.optim.grad_accum
        self.max_grad_norm = cfg.optim.max_grad_norm
        self.module = model.to(info.device)
        device_ids = [info.device] if info.device.type == "cuda" else None
        self.model = (DistributedDataParallel(self.module, device_ids=device_ids, **_NO_BUFFER_SYNC)
                      if info.distributed else self.module)
        self.optimizer, self.scheduler = build_optimizer(self.module, cfg.optim, total_steps)
        self.precision = resolve_precision(cfg.train.precision, info.device, training=True)

    def micro_batch(self, last_micro_step: bool):
        """The context of one micro-batch's forward and backward: DDP all-reduces the gradients only on the last
        micro-batch of an optimizer step (its reducer is armed in the forward, so the forward belongs inside)."""
        if self.info.distributed and not last_micro_step:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def forward(self, batch):
        with autocast(self.info.device, self.precision):
            return self.model(batch)

    def backward(self, loss, last_micro_step: bool):
        """Accumulate gradients, scaled so that a step's micro-batches average."""
        (loss / self.grad_accum).backward()

    def step(self) -> None:
        if self.max_grad_norm > 0:  # 0 = no clipping, as in DeepSpeed
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def train(self, mode: bool = True):
        self.model.train(mode)

    def save(self, ckpt_dir: str) -> None:
        if self.info.is_main:
            torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict()}, os.path.join(ckpt_dir, "engine.pt"))

    def load(self, ckpt_dir: str) -> None:
        state = torch.load(os.path.join(ckpt_dir, "engine.pt"), map_location=self.info.device, weights_only=False)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def make_engine(model, cfg, info: DistInfo, total_steps: int):
    if cfg.train.engine == "deepspeed":
        from .ds_engine import DeepSpeedEngine  # deepspeed is an optional dependency

        return DeepSpeedEngine(model, cfg, info, total_steps)
    return TorchEngine(model, cfg, info, total_steps)
