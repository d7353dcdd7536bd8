"""What the training loop keeps between steps: the saved state, the log window, the stop signal, the seeds."""

from __future__ import annotations

import signal
from dataclasses import dataclass

import torch

PREEMPTED_EXIT_CODE = 3


class Preempted(Exception):
    """Raised after a checkpoint was written because a stop signal arrived."""


class StopFlag:
    """Set by SIGUSR1/SIGTERM; the loop checkpoints at the next step boundary."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def install(self):
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass

    def _handle(self, signum, frame):
        self.signum = signum

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class TrainState:
    """Everything the loop changes; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_f1: float = -1.0
    best_step: int = -1
    bad_evals: int = 0
    train_time_s: float = 0.0
    train_tokens: int = 0
    world_size: int = 1
    """Processes that wrote the state: the sampler's position and optimizer partitions depend on it."""
    grad_accum: int = 0
    """optim.grad_accum of the processes that wrote the state (0 = not recorded); resharding needs it."""


@dataclass
class LogWindow:
    """Loss and tokens summed since the last ``step`` row of the training log."""

    loss: float | torch.Tensor = 0.0
    """Summed on the model's device in float64 (the sum Python's floats gave), read at the log row: no device
    sync per step."""
    micro_batches: int = 0
    tokens: int = 0
    start_s: float = 0.0


def batch_seed(seed: int, epoch: int, global_batch: int) -> int:
    """The random seed of one global batch of one epoch (dropout masks), the same on any number of processes."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + global_batch) % 2**63
