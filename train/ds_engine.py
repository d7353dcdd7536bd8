"""DeepSpeed engine: the same interface as :class:`train.engine.TorchEngine`.

``--engine deepspeed --deepspeed-config train/configs/ds_zero2.json`` runs the
ordinary training loop; DeepSpeed does backward, gradient accumulation,
clipping, the optimizer step (ZeRO 0/1/2 partitioning) and checkpoint I/O.

The JSON file holds only what is DeepSpeed's own business (the ZeRO stage and
its knobs, communication settings).  Everything the trainer already decides is
filled in from the run config, so one JSON works for every recipe:

* ``train_micro_batch_size_per_gpu`` = 1 (a micro-batch is one token-budget
  batch of varying size; DeepSpeed only uses the number for bookkeeping),
  ``gradient_accumulation_steps`` = ``optim.grad_accum``,
  ``train_batch_size`` = their product times the world size;
* ``gradient_clipping`` = ``optim.max_grad_norm``;
* the optimizer is torch AdamW with its linear warmup/decay schedule
  (:func:`train.optim.build_optimizer`; torch's fused kernel where the device has one),
  handed to ``deepspeed.initialize`` -- DeepSpeed's fused Adam would need a JIT compile;
* precision from ``train.precision``: bf16 (``bf16``, or ``auto`` on a GPU that
  supports it) uses DeepSpeed's ``torch_autocast`` (fp32 weights, bf16
  autocast, like the DDP engine), else fp32.  fp16 is not offered.

Values for these keys in the JSON must be absent or ``"auto"``; a different
value is an error rather than silently ignored.  An explicit ``"bf16"``
section (bf16 *weights*, fp32 master copy in the optimizer) is honoured, but
then the exported weights are bf16-rounded.

Needs DeepSpeed 0.17.2 or later (``torch_autocast``; setup.cfg pins the floor).

ZeRO stages 0, 1 and 2 keep full weights on every rank, so ``self.module`` is
the complete model (evaluation and the export use it).  Stage 3 partitions the
weights and is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import warnings

import torch.distributed as dist

from common.distributed import DistInfo

from taggers.precision import resolve_precision

from .config import ConfigError
from .optim import build_optimizer

log = logging.getLogger(__name__)

CHECKPOINT_TAG = "deepspeed"
_TRAINER_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                 "gradient_clipping")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_ds_config(path: str) -> dict:
    if not path:
        raise ConfigError("train.engine = 'deepspeed' needs a DeepSpeed JSON config: pass --deepspeed-config "
                          "(e.g. train/configs/ds_zero2.json) or set train.deepspeed_config")
    try:
        with open(path) as f:
            ds = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"train.deepspeed_config: {path} not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"train.deepspeed_config: {path} is not valid JSON: {e}") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"train.deepspeed_config: {path} must hold a JSON object")
    return ds


def build_ds_config(ds: dict, cfg, info: DistInfo, where: str = "DeepSpeed config") -> dict:
    """The JSON file's settings plus the values the trainer owns (see the module docstring)."""
    ds = json.loads(json.dumps(ds))  # a copy
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(f"{where}: remove the {key!r} section; the DeepSpeed engine uses torch AdamW and "
                              "the linear warmup/decay schedule from the optim.* settings")
    if "fp16" in ds and ds["fp16"].get("enabled") not in (False, "auto"):
        raise ConfigError(f"{where}: fp16 is not supported by this trainer; use train.precision = \"bf16\"")
    ds.pop("fp16", None)
    stage = int(ds.get("zero_optimization", {}).get("stage", 0))
    if stage not in (0, 1, 2):
        raise ConfigError(f"{where}: ZeRO stage {stage} is not supported (use 0, 1 or 2: the trainer evaluates "
                          "and exports the full model on each rank)")
    wanted = {"train_micro_batch_size_per_gpu": 1,
              "gradient_accumulation_steps": cfg.optim.grad_accum,
              "train_batch_size": cfg.optim.grad_accum * info.world_size,
              "gradient_clipping": float(cfg.optim.max_grad_norm)}
    for key in _TRAINER_KEYS:
        given = ds.get(key, "auto")
        if given != "auto" and given != wanted[key]:
            source = {"gradient_accumulation_steps": "optim.grad_accum",
                      "gradient_clipping": "optim.max_grad_norm"}.get(key, "the token-budget batching")
            raise ConfigError(f"{where}: {key} = {given!r} conflicts with {source} ({wanted[key]!r}); "
                              f"set it to \"auto\" or leave it out")
        ds[key] = wanted[key]
    bf16_weights = isinstance(ds.get("bf16"), dict) and ds["bf16"].get("enabled") is True
    if not bf16_weights:
        ds.pop("bf16", None)
        autocast = ds.get("torch_autocast", {})
        if autocast.get("enabled", "auto") == "auto":
            bf16 = resolve_precision(cfg.train.precision, info.device, training=True) == "bf16"
            ds["torch_autocast"] = {**autocast, "enabled": bf16}
            if bf16:
                ds["torch_autocast"].setdefault("dtype", "bfloat16")
            elif not ds["torch_autocast"]:
                ds.pop("torch_autocast")
    ds.setdefault("steps_per_print", 10 ** 9)  # the trainer logs progress itself
    ds.setdefault("wall_clock_breakdown", False)
    return ds


class DeepSpeedEngine:
    """Wraps ``deepspeed.initialize``; ZeRO 0/1/2, torch AdamW + LambdaLR."""

    name = "deepspeed"

    def __init__(self, model, cfg, info: DistInfo, total_steps: int):
        self.info = info
        self.cfg = cfg
        ds_config = build_ds_config(load_ds_config(cfg.train.deepspeed_config), cfg, info,
                                    f"train.deepspeed_config {cfg.train.deepspeed_config}")
        # Pick DeepSpeed's accelerator from the trainer's device (it must be set before deepspeed is imported).
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if info.device.type == "cuda" else "cpu")
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        if get_accelerator().device_name() != info.device.type:
            raise ConfigError(f"DeepSpeed's accelerator is {get_accelerator().device_name()!r} but the trainer "
                              f"runs on {info.device}; set DS_ACCELERATOR={info.device.type} (or train.device)")
        if not info.backend and not dist.is_initialized():
            # Single process (no torchrun): DeepSpeed needs a process group, so make a one-process one.
            # common.distributed.teardown() destroys it at the end of the run.
            for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                               ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port()))):
                os.environ.setdefault(key, value)
        # Reuses the process group made by common.distributed.setup() when there is one (then it is a no-op).
        deepspeed.init_distributed(dist_backend=info.backend or ("nccl" if info.device.type == "cuda" else "gloo"),
                                   verbose=False)
        _quiet_deepspeed()

        model = model.to(info.device)
        optimizer, scheduler = build_optimizer(model, cfg.optim, total_steps)
        self.ds_config = ds_config
        if ds_config.get("bf16", {}).get("enabled"):
            log.warning("the DeepSpeed config enables bf16 weights: training keeps fp32 master weights in the "
                        "optimizer, but evaluation and the export use the bf16 model")
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        self.module = self.model.module
        self.zero_stage = self.model.zero_optimization_stage()
        # what the engine really runs, read back from it (a config key it ignores would not show here)
        if self.model.bfloat16_enabled():
            precision = "bf16 weights"
        elif self.model.torch_autocast_enabled():
            precision = f"{self.model.torch_autocast_dtype()} autocast".replace("torch.", "")
        else:
            precision = "fp32"
        log.info("DeepSpeed %s: ZeRO stage %d, %s, gradient accumulation %d, clipping %s", deepspeed.__version__,
                 self.zero_stage, precision, self.model.gradient_accumulation_steps(),
                 self.model.gradient_clipping() or "off")

    def micro_batch(self, last_micro_step: bool):
        """DeepSpeed reduces on its accumulation boundary (set in :meth:`backward`): nothing to enter."""
        return contextlib.nullcontext()

    def forward(self, batch):
        return self.model(batch)

    def backward(self, loss, last_micro_step: bool):
        """DeepSpeed scales by 1/grad_accum and reduces gradients; the update happens in :meth:`step`.

        The trainer's accumulation windows can end early (the last batches of
        an epoch), so the boundary is set explicitly rather than counted by
        DeepSpeed; non-final micro-steps still pass through ``engine.step()``,
        which only advances DeepSpeed's micro-step counter there.
        """
        self.model.set_gradient_accumulation_boundary(last_micro_step)
        self.model.backward(loss)
        if not last_micro_step:
            self.model.step()

    def step(self) -> None:
        self.model.set_gradient_accumulation_boundary(True)
        self.model.step()

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def train(self, mode: bool = True):
        self.model.train(mode)

    def save(self, ckpt_dir: str) -> None:
        """All ranks: DeepSpeed writes the model (rank 0) and each rank's optimizer partition."""
        self.model.save_checkpoint(ckpt_dir, tag=CHECKPOINT_TAG, save_latest=False)

    def load(self, ckpt_dir: str) -> None:
        path, _ = self.model.load_checkpoint(ckpt_dir, tag=CHECKPOINT_TAG, load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
        if path is None:
            raise ConfigError(f"{ckpt_dir}: no DeepSpeed checkpoint in it (was the run trained with another "
                              "engine?)")


def _quiet_deepspeed() -> None:
    """DeepSpeed logs its whole config at INFO on every rank; keep warnings only."""
    from deepspeed.utils import logger as ds_logger

    # ZeRO still calls torch.distributed.all_gather_into_tensor, deprecated in recent torch
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated", category=FutureWarning)

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        ds_logger.setLevel(logging.WARNING)
