"""Decoding under IOB2 constraints: a CRF whose transitions forbid invalid moves, and one Viterbi that
decodes both the CRF and the per-piece probabilities of taggers without a CRF."""

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


def iob2_penalties(labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores added to transitions (from, to) and to start tags: 0 where IOB2 allows the move, -10000 where not."""
    trans, start = iob2_allowed(labels)
    return (~trans).float() * -10000.0, (~start).float() * -10000.0


class ConstrainedCRF(CRF):
    """pytorch-crf's CRF whose transitions forbid invalid IOB2 moves (scores -10000)."""

    def __init__(self, labels: list[str]):
        super().__init__(len(labels), batch_first=True)
        transition_penalty, start_penalty = iob2_penalties(labels)
        self.register_buffer("transition_penalty", transition_penalty, persistent=False)
        self.register_buffer("start_penalty", start_penalty, persistent=False)

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


def crf_marginals(emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor,
                  end: torch.Tensor) -> torch.Tensor:
    """Each position's posterior probabilities over the tags under a linear-chain CRF (forward-backward in log
    space): [n, steps, C] from left-aligned ``emissions`` [n, steps, C] and ``mask`` [n, steps]; rows of at
    least one position; positions past a row's length are undefined.  A CRF tagger's per-piece softmax ignores
    its transitions (its argmax breaks with the Viterbi path on about a quarter of the entities of the BERT
    recipe's export); these marginals are what the CRF believes, so they are what it teaches."""
    emissions, transitions = emissions.float(), transitions.float()
    n, steps, _ = emissions.shape
    alpha = [start + emissions[:, 0]]
    for t in range(1, steps):
        nxt = torch.logsumexp(alpha[-1][:, :, None] + transitions[None], dim=1) + emissions[:, t]
        alpha.append(torch.where(mask[:, t, None], nxt, alpha[-1]))
    beta = [end.expand(n, -1)]
    for t in range(steps - 2, -1, -1):  # beta[t]: scores after position t (the end score past a row's last)
        nxt = torch.logsumexp(transitions[None] + (emissions[:, t + 1] + beta[0])[:, None, :], dim=2)
        beta.insert(0, torch.where(mask[:, t + 1, None], nxt, end.expand(n, -1)))
    scores = torch.stack(alpha, 1) + torch.stack(beta, 1)
    return (scores - torch.logsumexp(scores[:, :1], dim=-1, keepdim=True)).exp()


def compact(mask: torch.Tensor):
    """Indices that move the True positions of each row to the left: (index [B, S], valid [B, S])."""
    counts = mask.sum(1)
    width = max(int(counts.max()), 1)
    # stable sort puts True (key 0) before False (key 1), preserving order
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return order, valid


def viterbi(scores, mask, transitions, start, end=None) -> np.ndarray:
    """Best tag path per row: [n, steps] (positions past a row's length repeat its last tag).

    ``scores`` [n, steps, C] (emissions, or log-probabilities) and ``mask`` [n, steps] are left-aligned
    (valid positions first); ``transitions`` [C, C] (from, to), ``start`` and ``end`` [C] are added scores,
    as in a linear-chain CRF (-10000 forbids a move).  Serves both the CRF's decoding and the IOB2-constrained
    best path of taggers without one.  In numpy with a vectorised backtrace: a per-position loop of small
    torch ops is several times slower on a CPU, and pytorch-crf's per-row backtrace reads every tag with
    ``.item()`` (a device sync each on a GPU).
    """
    as_np = (lambda x: x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))
    scores, mask, transitions, start = map(as_np, (scores, mask, transitions, start))
    n, steps, c = scores.shape
    score = scores[:, 0] + start
    ident = np.broadcast_to(np.arange(c), (n, c))
    history = np.empty((n, steps, c), dtype=np.int64)
    history[:, 0] = ident
    for t in range(1, steps):
        cand = score[:, :, None] + transitions[None]  # [n, from, to]
        idx = cand.argmax(1)
        best = np.take_along_axis(cand, idx[:, None, :], 1)[:, 0]
        m = mask[:, t, None]
        score = np.where(m, best + scores[:, t], score)
        history[:, t] = np.where(m, idx, ident)
    if end is not None:
        score = score + as_np(end)
    last = score.argmax(-1)
    path = np.empty((n, steps), dtype=np.int64)
    path[:, -1] = last
    for t in range(steps - 1, 0, -1):
        last = history[np.arange(n), t, last]
        path[:, t - 1] = last
    return path
