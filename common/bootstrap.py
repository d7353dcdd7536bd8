"""Bootstrap confidence intervals for entity F1, resampling sentences with replacement.

Entities are matched exactly (``common.spans.tags_to_spans``, i.e. seqeval's default
mode), so the point estimates equal ``common.metrics.entity_scores``.  Per sentence the
counts (true positives, predicted, gold) are computed once; a resample's micro F1 is
``2 tp / (n_pred + n_gold)`` of the summed counts (0 when both are 0).

Resampled indices are ``np.random.default_rng(seed).integers(0, n, size=(resamples, n))``
(row r = the n sentence indices of resample r), one matrix for all resamples and, in
``paired_difference``, for both models.  Intervals are percentile intervals
(``np.percentile``, linear interpolation) at ``(1 - confidence)/2`` and ``(1 + confidence)/2``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from common.spans import tags_to_spans


def _check_aligned(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")


def sentence_counts(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                    types: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Per-sentence exact-match counts.

    Returns ``(types, counts)``; ``counts[i, k] = (tp, n_pred, n_gold)`` of sentence ``i``,
    ``k = 0`` over all types and ``k = 1 + j`` for ``types[j]`` (default: every type seen, sorted).
    """
    _check_aligned(gold, pred)
    spans = [(set(tags_to_spans(g)), set(tags_to_spans(p))) for g, p in zip(gold, pred)]
    if types is None:
        types = sorted({s[2] for gs, ps in spans for s in gs | ps})
    col = {t: 1 + j for j, t in enumerate(types)}
    counts = np.zeros((len(spans), 1 + len(types), 3), dtype=np.int64)
    for i, (gs, ps) in enumerate(spans):
        for which, group in enumerate((gs & ps, ps, gs)):
            counts[i, 0, which] = len(group)
            for s in group:
                if s[2] in col:
                    counts[i, col[s[2]], which] += 1
    return list(types), counts


def _f1(totals: np.ndarray) -> np.ndarray:
    """Micro F1 from summed ``(tp, n_pred, n_gold)`` in the last axis."""
    tp, denom = totals[..., 0], totals[..., 1] + totals[..., 2]
    return np.divide(2.0 * tp, denom, out=np.zeros(tp.shape), where=denom > 0)


def _resampled_totals(counts: Sequence[np.ndarray], resamples: int, seed: int) -> list[np.ndarray]:
    """Summed counts of each resample, ``(resamples, ...)``, for arrays sharing the sentence axis."""
    n = len(counts[0])
    if n == 0:
        raise ValueError("no sentences to resample")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    # how often each sentence is drawn in each resample: a (resamples, n) matrix product
    # instead of gathering counts[idx] (resamples x n x types x 3 would not fit for large sets)
    offsets = (np.arange(resamples) * n)[:, None]
    weights = np.bincount((idx + offsets).ravel(), minlength=resamples * n).reshape(resamples, n)
    weights = weights.astype(np.float64)     # BLAS; exact for integer sums below 2**53
    return [(weights @ c.reshape(n, -1).astype(np.float64)).reshape((resamples,) + c.shape[1:])
            for c in counts]


def _bounds(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = 1 - confidence
    low, high = np.percentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return low, high


def f1_interval(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], resamples: int = 1000,
                seed: int = 0, confidence: float = 0.95, per_type: bool = False) -> dict:
    """Micro entity F1 and its bootstrap percentile interval: ``{"f1", "low", "high"}``.

    With ``per_type`` adds ``"per_type": {T: {"f1", "low", "high"}}`` from the same resamples.
    """
    types, counts = sentence_counts(gold, pred)
    (totals,) = _resampled_totals([counts], resamples, seed)
    point = _f1(counts.sum(axis=0))
    low, high = _bounds(_f1(totals), confidence)
    out = {"f1": float(point[0]), "low": float(low[0]), "high": float(high[0])}
    if per_type:
        out["per_type"] = {t: {"f1": float(point[k]), "low": float(low[k]), "high": float(high[k])}
                           for k, t in enumerate(types, start=1)}
    return out


def paired_difference(gold: Sequence[Sequence[str]], pred_a: Sequence[Sequence[str]],
                      pred_b: Sequence[Sequence[str]], resamples: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> dict:
    """F1(a) - F1(b) with a paired bootstrap: ``{"diff", "low", "high", "p_value"}``.

    Both models are scored on the same resampled sentences.  ``p_value`` is two-sided:
    twice the share of resamples whose difference is <= 0 when the observed one is > 0
    (>= 0 when it is < 0), capped at 1; 1 when the observed difference is 0.  A p_value
    of 0 means below ``1 / resamples``.
    """
    _, counts_a = sentence_counts(gold, pred_a, types=())
    _, counts_b = sentence_counts(gold, pred_b, types=())
    totals_a, totals_b = _resampled_totals([counts_a[:, 0], counts_b[:, 0]], resamples, seed)
    diff = float(_f1(counts_a[:, 0].sum(axis=0)) - _f1(counts_b[:, 0].sum(axis=0)))
    diffs = _f1(totals_a) - _f1(totals_b)
    low, high = _bounds(diffs, confidence)
    if diff > 0:
        p = min(1.0, 2 * float(np.mean(diffs <= 0)))
    elif diff < 0:
        p = min(1.0, 2 * float(np.mean(diffs >= 0)))
    else:
        p = 1.0
    return {"diff": diff, "low": float(low), "high": float(high), "p_value": p}
