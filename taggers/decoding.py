"""Decoding under IOB2 constraints: a CRF whose transitions forbid invalid moves, and one Viterbi that
decodes both the CRF and the per-piece probabilities of taggers without a CRF."""

from __future__ import annotations

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

    def forward(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Log-likelihood of ``tags`` [n, steps] for each row: left-aligned ``emissions`` [n, steps, C] and
        ``mask`` [n, steps] (each row at least one position).  The same value as pytorch-crf's
        ``reduction="none"``, without its per-position loops (:class:`_Lattice`)."""
        transitions, start, end = self.transitions, self.start_transitions, self.end_transitions
        rows = torch.arange(len(tags), device=tags.device)
        gold = (emissions.gather(2, tags[..., None])[..., 0] * mask).sum(1)
        gold = gold + (transitions[tags[:, :-1], tags[:, 1:]] * mask[:, 1:]).sum(1)
        gold = gold + start[tags[:, 0]] + end[tags[rows, mask.sum(1) - 1]]
        log_z = (_LogPartition.apply if emissions.device.type == "cpu" else log_partition_scan)(
            emissions, mask, transitions, start, end)
        return gold - log_z


def crf_marginals(emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor,
                  end: torch.Tensor) -> torch.Tensor:
    """Each position's posterior probabilities over the tags under a linear-chain CRF: [n, steps, C] from
    left-aligned ``emissions`` [n, steps, C] and ``mask`` [n, steps]; rows of at least one position; positions
    past a row's length are undefined.  A CRF tagger's per-piece softmax ignores its transitions (its argmax
    breaks with the Viterbi path on about a quarter of the entities of the BERT recipe's export); these
    marginals are what the CRF believes, so they are what it teaches."""
    with torch.no_grad():
        lattice = _Lattice(emissions, mask, transitions, start, end)
        return (lattice.alpha * lattice.beta()).float()


class _Lattice:
    """The forward-backward of a linear-chain CRF over left-aligned rows, in probability space with each
    position's forward vector rescaled to sum 1 (Rabiner's scaling), in float64.

    pytorch-crf computes the log-partition with a per-position loop of log-sum-exps that autograd records and
    replays, and the gold path's score with another per-position loop. Here each position costs one [n, C] x
    [C, C] product and a rescale, and the gradient is the posterior marginals (no recorded loop); timings in
    ``bench/results_train.md`` (``bench/experiments/train_micro.py``). float64 keeps exp() from underflowing for
    any emissions a tagger produces (a difference of 700 between a position's scores would be needed).
    """

    def __init__(self, emissions, mask, transitions, start, end):
        em = emissions.detach().double()
        self.mask = mask
        self.lengths = mask.sum(1)
        shift = em.amax(-1, keepdim=True)
        self.ex = (em - shift).exp()  # emissions as factors, each position's largest 1
        transitions, start, end = (x.detach().double() for x in (transitions, start, end))
        top = (transitions.max(), start.max(), end.max())  # forbidden moves (-10000) become factors of exactly 0
        self.trans_w = (transitions - top[0]).exp()
        self.end_w = (end - top[2]).exp()
        n, steps, _ = em.shape
        alpha, scale = torch.empty_like(em), torch.ones(n, steps, dtype=em.dtype, device=em.device)
        v = (start - top[1]).exp() * self.ex[:, 0]
        scale[:, 0] = v.sum(-1)
        alpha[:, 0] = v / scale[:, :1]
        for t in range(1, steps):  # past a row's length: alpha repeats, the scale is 1
            on = mask[:, t, None]
            v = (alpha[:, t - 1] @ self.trans_w) * self.ex[:, t]
            c = torch.where(on, v.sum(-1, keepdim=True), 1.0)
            alpha[:, t] = torch.where(on, v / c, alpha[:, t - 1])
            scale[:, t] = c[:, 0]
        self.alpha, self.scale = alpha, scale
        self.final = alpha[torch.arange(n, device=em.device), self.lengths - 1] @ self.end_w
        self.log_z = (scale.log().sum(1) + (shift[..., 0] * mask).sum(1) + (self.lengths - 1) * top[0] + top[1]
                      + top[2] + self.final.log())

    def beta(self) -> torch.Tensor:
        """Backward vectors scaled so that ``alpha * beta`` is each position's marginals (rows sum to 1)."""
        alpha, mask, steps = self.alpha, self.mask, self.alpha.size(1)
        at_end = self.end_w / (alpha @ self.end_w)[..., None]  # beta at each position, were it a row's last
        beta = torch.empty_like(alpha)
        beta[:, -1] = at_end[:, -1]
        trans_t = self.trans_w.t()
        for t in range(steps - 2, -1, -1):
            after = ((self.ex[:, t + 1] * beta[:, t + 1]) @ trans_t) / self.scale[:, t + 1, None]
            beta[:, t] = torch.where(mask[:, t + 1, None], after, at_end[:, t])
        return beta


class _LogPartition(torch.autograd.Function):
    """log Z of each row; its gradient is the posterior marginals (emissions, start, end) and the expected
    transition counts (transitions)."""

    @staticmethod
    def forward(ctx, emissions, mask, transitions, start, end):
        lattice = _Lattice(emissions, mask, transitions, start, end)
        ctx.lattice, ctx.dtype = lattice, transitions.dtype
        return lattice.log_z.to(emissions.dtype)

    @staticmethod
    def backward(ctx, grad):
        lat = ctx.lattice
        beta, c = lat.beta(), lat.alpha.size(-1)
        valid = lat.mask[..., None] * grad.double()[:, None, None]
        marginals = lat.alpha * beta * valid
        after = lat.ex[:, 1:] * beta[:, 1:] / lat.scale[:, 1:, None] * valid[:, 1:]
        moves = (lat.alpha[:, :-1].reshape(-1, c).t() @ after.reshape(-1, c)) * lat.trans_w
        rows = torch.arange(len(marginals), device=marginals.device)
        dtype = ctx.dtype
        return (marginals.to(grad.dtype), None, moves.to(dtype), marginals[:, 0].sum(0).to(dtype),
                marginals[rows, lat.lengths - 1].sum(0).to(dtype))


def log_partition_scan(emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor,
                       end: torch.Tensor) -> torch.Tensor:
    """log Z of each row (the :class:`_LogPartition` value, differentiable by autograd) in O(log steps) launches:
    the positions' transfer matrices multiplied pairwise, level by level (a tree over positions), in log space
    (log-sum-exp products: exact for any emissions) and float64; positions past a row's length are the identity.
    It does C times the arithmetic of the per-position loop and more memory, so the CRF uses it off the CPU only,
    where the loop's launches, not the arithmetic, cost."""
    n, steps, c = emissions.shape
    em = emissions.double()
    transitions, start, end = transitions.double(), start.double(), end.double()
    eye = torch.full((c, c), float("-inf"), dtype=em.dtype, device=em.device)
    eye.diagonal().zero_()
    m = torch.where(mask[:, 1:, None, None], transitions + em[:, 1:, None, :], eye)  # [n, steps - 1, from, to]
    while m.size(1) > 1:
        if m.size(1) % 2:
            m = torch.cat([m, eye.expand(n, 1, c, c)], 1)
        m = torch.logsumexp(m[:, 0::2, :, :, None] + m[:, 1::2, None, :, :], dim=-2)
    alpha = start + em[:, 0]
    if m.size(1):
        alpha = torch.logsumexp(alpha[:, :, None] + m[:, 0], dim=1)
    return torch.logsumexp(alpha + end, dim=-1).to(emissions.dtype)


def compact(mask: torch.Tensor, full_width: bool = False):
    """Indices that move the True positions of each row to the left: (index [B, W], valid [B, W]); W is the
    longest row's count, or with ``full_width`` all S positions (no device sync to read the count)."""
    counts = mask.sum(1)
    width = mask.size(1) if full_width else max(int(counts.max()), 1)
    # stable sort puts True (key 0) before False (key 1), preserving order
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return order, valid


@torch.no_grad()
def viterbi(scores: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor,
            end: torch.Tensor | None = None) -> torch.Tensor:
    """Best tag path per row: int64 [n, steps] on ``scores``' device (positions past a row's length repeat its
    last tag).

    ``scores`` [n, steps, C] (emissions, or log-probabilities) and ``mask`` [n, steps] are left-aligned
    (valid positions first); ``transitions`` [C, C] (from, to), ``start`` and ``end`` [C] are added scores,
    as in a linear-chain CRF (-10000 forbids a move).  Serves both the CRF's decoding and the IOB2-constrained
    best path of taggers without one.  Tensor ops only, so on a GPU it queues behind the model without a
    device sync (pytorch-crf's per-row backtrace reads every tag with ``.item()``); ties go to the lowest tag.
    """
    n, steps, c = scores.shape
    dev = scores.device
    transitions, start = transitions.to(dev, scores.dtype), start.to(dev, scores.dtype)
    lengths = mask.to(dev).sum(1)
    # every row runs to the full width (3 launches a position, no masking); a row's result is read at its own
    # last position, and the backtrace holds its tag past it
    score = torch.empty((steps, n, c), dtype=scores.dtype, device=dev)
    history = torch.empty((steps, n, c), dtype=torch.long, device=dev)
    torch.add(scores[:, 0], start, out=score[0])
    for t in range(1, steps):
        torch.max(score[t - 1, :, :, None] + transitions, 1, out=(score[t], history[t]))  # best previous tag
        score[t] += scores[:, t]
    final = score[(lengths - 1).clamp(min=0), torch.arange(n, device=dev)]
    if end is not None:
        final = final + end.to(dev, scores.dtype)
    last = final.argmax(-1, keepdim=True)
    live = torch.arange(steps, device=dev)[:, None, None] < lengths[None, :, None]  # [steps, n, 1]
    path = torch.empty((steps, n), dtype=torch.long, device=dev)
    path[-1] = last[:, 0]
    for t in range(steps - 1, 0, -1):
        last = torch.where(live[t], history[t].gather(1, last), last)
        path[t - 1] = last[:, 0]
    return path.t()
