"""Statistics of a report's runs beyond the exact-match scores: partial-match scores of the four SemEval-2013
schemes (:mod:`common.partial_match`) and paired-bootstrap intervals (:mod:`common.bootstrap`).

Every model of an evaluation set is resampled with the same sentence indices (same seed and sentence
count), so the per-model intervals and the pairwise differences come from one set of resamples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.bootstrap import f1_interval, paired_difference
from common.partial_match import partial_match_scores

if TYPE_CHECKING:
    from .runs import RunData

CONFIDENCE = 0.95


def bootstrap_settings(resamples: int, seed: int) -> dict:
    """report.json's ``bootstrap``: how the intervals were drawn (``resamples`` 0: no intervals)."""
    return {"resamples": resamples, "seed": seed, "confidence": CONFIDENCE, "unit": "sentence",
            "interval": "percentile"}


def add_statistics(an: dict, runs: list[RunData], resamples: int, seed: int = 0) -> dict:
    """Add to the analysis of :func:`report.analysis.analyse`, in place (and return it):

    * ``models[NAME]["partial_match"]``: :func:`common.partial_match.partial_match_scores`;
    * ``models[NAME]["f1_interval"]``: :func:`common.bootstrap.f1_interval` with ``per_type``
      (None when ``resamples`` is 0 or there are no sentences);
    * ``f1_differences``: per comparable pair, :func:`common.bootstrap.paired_difference` of F1(a) - F1(b)
      plus ``a``, ``b`` and ``more_than_noise`` (the interval excludes 0).
    """
    for r in runs:
        m = an["models"][r.name]
        m["partial_match"] = partial_match_scores(r.gold, r.pred)
        m["f1_interval"] = (f1_interval(r.gold, r.pred, resamples, seed, CONFIDENCE, per_type=True)
                            if resamples and r.gold else None)
    by_name = {r.name: r for r in runs}
    an["f1_differences"] = []
    for p in an["pairs"]:
        if not (resamples and p["comparable"] and by_name[p["a"]].gold):
            continue
        a, b = by_name[p["a"]], by_name[p["b"]]
        d = paired_difference(a.gold, a.pred, b.pred, resamples, seed, CONFIDENCE)
        an["f1_differences"].append({"a": a.name, "b": b.name, **d,
                                     "more_than_noise": bool(d["low"] > 0 or d["high"] < 0)})
    return an
