"""Decoding under IOB2 constraints: a CRF whose transitions forbid invalid moves, and a
constrained Viterbi over per-piece probabilities for taggers without a CRF."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchcrf import CRF

from common.data import split_tag


def iob2_allowed(labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Allowed transitions (from, to) and allowed start tags under IOB2: I-X only after B-X or I-X."""
    n = len(labels)
    parsed = [split_tag(t) for t in labels]
    trans = torch.ones(n, n, dtype=torch.bool)
    start = torch.ones(n, dtype=torch.bool)
    for j, (pj, tj) in enumerate(parsed):
        if pj == "I":
            start[j] = False
            for i, (pi, ti) in enumerate(parsed):
                trans[i, j] = pi in ("B", "I") and ti == tj
    return trans, start


class ConstrainedCRF(CRF):
    """pytorch-crf's CRF whose transitions forbid invalid IOB2 moves (scores -10000)."""

    def __init__(self, labels: list[str]):
        super().__init__(len(labels), batch_first=True)
        trans, start = iob2_allowed(labels)
        self.register_buffer("transition_penalty", (~trans).float() * -10000.0, persistent=False)
        self.register_buffer("start_penalty", (~start).float() * -10000.0, persistent=False)

    def reset_parameters(self) -> None:
        for name in ("start_transitions", "end_transitions", "transitions"):
            nn.init.uniform_(self._parameters[name], -0.1, 0.1)

    def _raw(self, name):
        try:
            return self._parameters[name]
        except KeyError:  # not registered yet: lets nn.Module register it
            raise AttributeError(name) from None

    # pytorch-crf reads self.transitions / self.start_transitions; serve the constrained ones
    @property
    def transitions(self):
        return self._raw("transitions") + self.transition_penalty

    @transitions.setter
    def transitions(self, value):
        self._parameters["transitions"] = value

    @property
    def start_transitions(self):
        return self._raw("start_transitions") + self.start_penalty

    @start_transitions.setter
    def start_transitions(self, value):
        self._parameters["start_transitions"] = value


def compact(mask: torch.Tensor):
    """Indices that move the True positions of each row to the left: (index [B, S], valid [B, S])."""
    counts = mask.sum(1)
    width = max(int(counts.max()), 1)
    # stable sort puts True (key 0) before False (key 1), preserving order
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return order, valid


def constrained_viterbi(log_probs, mask, allowed, start_allowed) -> list[list[int]]:
    """Best tag path per row under IOB2 constraints, from per-position log-probabilities.

    ``log_probs`` [B, S, C] and ``mask`` [B, S] are left-aligned (valid positions first);
    tensors or arrays.  Used by taggers without a CRF so that decoding never produces an
    ``I-X`` that no ``B-X``/``I-X`` precedes.  In numpy: a per-position loop of small
    torch ops is several times slower on a CPU.
    """
    as_np = (lambda x: x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))
    log_probs, mask, allowed, start_allowed = map(as_np, (log_probs, mask, allowed, start_allowed))
    n, steps, c = log_probs.shape
    penalty = np.where(allowed, 0.0, -10000.0).astype(np.float32)
    score = log_probs[:, 0] + np.where(start_allowed, 0.0, -10000.0).astype(np.float32)
    ident = np.broadcast_to(np.arange(c), (n, c))
    history = np.empty((n, steps, c), dtype=np.int64)
    history[:, 0] = ident
    for t in range(1, steps):
        cand = score[:, :, None] + penalty[None]  # [n, from, to]
        idx = cand.argmax(1)
        best = np.take_along_axis(cand, idx[:, None, :], 1)[:, 0]
        m = mask[:, t, None]
        score = np.where(m, best + log_probs[:, t], score)
        history[:, t] = np.where(m, idx, ident)
    last = score.argmax(-1)
    path = np.empty((n, steps), dtype=np.int64)
    path[:, -1] = last
    for t in range(steps - 1, 0, -1):
        last = history[np.arange(n), t, last]
        path[:, t - 1] = last
    lengths = mask.sum(1)
    return [path[b, :k].tolist() for b, k in enumerate(lengths)]
