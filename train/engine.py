"""Training engines: who does backward, optimizer step, accumulation and checkpoint I/O.

The loop talks to an engine only through this interface, so DDP (also
single-process) and DeepSpeed run the same loop.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
from torch.nn.parallel import DistributedDataParallel

from common.distributed import DistInfo


def linear_schedule(warmup_steps: int, total_steps: int):
    """Linear warmup to 1, then linear decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def param_groups(model, lr: float, head_lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: encoder / head learning rates, no decay on biases and norms."""
    groups = []
    for name, params, group_lr in (("encoder", model.parameter_groups()["encoder"], lr),
                                   ("head", model.parameter_groups()["head"], head_lr)):
        named = {id(p): n for n, p in model.named_parameters()}
        decay = [p for p in params if p.ndim > 1 and "norm" not in named[id(p)].lower()]
        no_decay = [p for p in params if not (p.ndim > 1 and "norm" not in named[id(p)].lower())]
        if decay:
            groups.append({"params": decay, "lr": group_lr, "weight_decay": weight_decay, "name": name})
        if no_decay:
            groups.append({"params": no_decay, "lr": group_lr, "weight_decay": 0.0, "name": name + "_no_decay"})
    return groups


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast when asked for (``auto``: on GPUs that support it), else nothing."""
    use_bf16 = precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if use_bf16:
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


class DDPEngine:
    """torch AdamW + LambdaLR, wrapped in DDP when there is more than one process."""

    name = "ddp"

    def __init__(self, model, cfg, info: DistInfo, total_steps: int):
        self.info = info
        self.cfg = cfg
        self.module = model.to(info.device)
        self.model = (DistributedDataParallel(self.module, device_ids=[info.device] if info.device.type == "cuda"
                                              else None)
                      if info.distributed else self.module)
        self.optimizer = torch.optim.AdamW(param_groups(self.module, cfg.optim.lr, cfg.optim.head_lr,
                                                        cfg.optim.weight_decay))
        warmup = math.ceil(cfg.optim.warmup_ratio * total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(warmup, total_steps))
        self.autocast = autocast_context(info.device, cfg.train.precision)

    def forward(self, batch):
        with self.autocast():
            return self.model(batch)

    def backward(self, loss, last_micro_step: bool):
        """Accumulate gradients; DDP only all-reduces on the last micro-step of an optimizer step."""
        scaled = loss / self.cfg.optim.grad_accum
        if self.info.distributed and not last_micro_step:
            with self.model.no_sync():
                scaled.backward()
        else:
            scaled.backward()

    def step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

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
        from .ds_engine import DeepSpeedEngine

        return DeepSpeedEngine(model, cfg, info, total_steps)
    return DDPEngine(model, cfg, info, total_steps)
