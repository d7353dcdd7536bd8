"""The one place that sets up and tears down distributed runs.

Reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; SLURM's
``SLURM_PROCID``/``SLURM_NTASKS`` are *not* read here, because the SLURM
scripts launch torchrun, which sets the torchrun variables).  NCCL on GPUs,
gloo on CPU; one process per GPU.  Works unchanged without torchrun (world
size 1, no process group).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's GPU if there is one, else CPU; ``cuda`` without a GPU is an error."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {requested!r} was requested but this machine has no CUDA GPU "
                               "(torch.cuda.is_available() is False); use device = \"cpu\" or \"auto\"")
        if requested == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device(requested)
    return torch.device(requested)


def setup(device: str = "auto", timeout_s: int = 1800, init_process_group: bool = True) -> DistInfo:
    """Initialise the process group when launched by torchrun; return this rank's info."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    info = DistInfo(rank, world_size, local_rank, dev, None)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and init_process_group and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        info.backend = backend
    elif dist.is_initialized():
        info.backend = dist.get_backend()
    return info


def teardown(completed: bool = True) -> None:
    """Destroy the process group if there is one (safe to call twice).

    After a completed run, ranks first meet in a barrier so none leaves while
    another still communicates.  After an error there is no collective at
    all: the peers may be waiting in another one, and a barrier here would
    hang the job until the process-group timeout; this rank exits instead,
    and torchrun stops the others.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if completed:
        with contextlib.suppress(Exception):
            dist.barrier()
    dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values, info: DistInfo) -> list[float]:
    """Sum a list of numbers across ranks (counts, never per-rank averages)."""
    values = [float(v) for v in values]
    if not info.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj``, on every rank (what the others pass is ignored)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, on every rank."""
    if not info.distributed:
        return [obj]
    parts: list = [None] * info.world_size
    dist.all_gather_object(parts, obj)
    return parts


class RankFilter(logging.Filter):
    """Let records through on rank 0 only (or on every rank when ``all_ranks``)."""

    def __init__(self, rank: int, all_ranks: bool = False):
        super().__init__()
        self.rank, self.all_ranks = rank, all_ranks

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return self.all_ranks or self.rank == 0


def setup_logging(rank: int = 0, level: str = "INFO", all_ranks: bool = False, log_file: str | None = None) -> None:
    """stdlib logging with rank-0 filtering; idempotent."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_ner_taggers", False):
            root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s [rank %(rank)s] %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers = [logging.StreamHandler()]
    if log_file and rank == 0:
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(RankFilter(rank, all_ranks))
        h._ner_taggers = True
        root.addHandler(h)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
