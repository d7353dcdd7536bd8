"""Entity scores under the four SemEval-2013 task 9.1 schemes: strict, exact, partial, type.

Each gold and predicted entity of a sentence gets exactly one outcome:

* a matched pair (one gold, one prediction) is COR, INC or PAR depending on the scheme:

  ========  ==========================  ===================================
  scheme    COR                         otherwise (the pair overlaps)
  ========  ==========================  ===================================
  strict    same boundaries and type    INC
  exact     same boundaries             INC
  partial   same boundaries             PAR (type ignored)
  type      same type                   INC
  ========  ==========================  ===================================

* a gold entity left unmatched is MIS, a prediction left unmatched is SPU.

Matching rule (one-to-one, per sentence, the same for all four schemes), so that no
entity is counted twice (nervaluate counts a prediction overlapping two gold
entities once per gold entity):

1. pair gold and predicted entities with the same boundaries, same type first;
2. pair the remaining overlapping entities greedily, largest overlap first; ties go
   to the leftmost gold entity, then the leftmost prediction;
3. what is left is MIS (gold) or SPU (prediction) -- also a prediction that overlaps
   a gold entity already paired with another prediction.

POS = COR+INC+PAR+MIS, ACT = COR+INC+PAR+SPU, precision = (COR + 0.5 PAR)/ACT,
recall = (COR + 0.5 PAR)/POS (PAR is 0 outside *partial*), F1 their harmonic mean;
each is 0 when its denominator is 0.

Per type, a pair and a MIS are counted under the gold type, a SPU under the
predicted type, so per-type counts add up to the overall counts and a type's scores
depend only on the pairs its entities take part in.  Consequence: a prediction of
the wrong type lowers the gold type's precision, not the predicted type's, so
per-type *strict* precision differs from seqeval's (recall and the overall scores
are the same: strict COR is the number of exact matches, POS the number of gold and
ACT the number of predicted entities).
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from common.spans import tags_to_spans

Span = tuple[int, int, str]          # (start, end_exclusive, type): words or characters
SCHEMES = ("strict", "exact", "partial", "type")
OUTCOMES = ("correct", "incorrect", "partial", "missed", "spurious")


def match_spans(gold: Sequence[Span], pred: Sequence[Span]
                ) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """One-to-one matching of one sentence's entities (rule in the module docstring).

    Returns ``(pairs of (gold index, pred index), unmatched gold indices, unmatched pred indices)``.
    """
    candidates = []
    for gi, (gs, ge, gt) in enumerate(gold):
        for pi, (ps, pe, pt) in enumerate(pred):
            overlap = min(ge, pe) - max(gs, ps)
            if overlap <= 0:
                continue
            same_bounds = (gs, ge) == (ps, pe)
            rank = 0 if same_bounds and gt == pt else 1 if same_bounds else 2
            candidates.append((rank, -overlap, gs, ps, gi, pi))
    pairs, gold_used, pred_used = [], set(), set()
    for *_, gi, pi in sorted(candidates):
        if gi not in gold_used and pi not in pred_used:
            pairs.append((gi, pi))
            gold_used.add(gi)
            pred_used.add(pi)
    return (pairs, [i for i in range(len(gold)) if i not in gold_used],
            [i for i in range(len(pred)) if i not in pred_used])


def _pair_outcome(g: Span, p: Span, scheme: str) -> str:
    same_bounds, same_type = g[:2] == p[:2], g[2] == p[2]
    if scheme == "strict":
        return "correct" if same_bounds and same_type else "incorrect"
    if scheme == "exact":
        return "correct" if same_bounds else "incorrect"
    if scheme == "partial":
        return "correct" if same_bounds else "partial"
    return "correct" if same_type else "incorrect"


def scores_from_counts(c: Counter) -> dict:
    """Precision, recall and F1 of summed outcome counts (``c[outcome]``), with the counts."""
    cor, inc, par, mis, spu = (c[k] for k in OUTCOMES)
    pos, act = cor + inc + par + mis, cor + inc + par + spu
    hit = cor + 0.5 * par
    p = hit / act if act else 0.0
    r = hit / pos if pos else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f1, "correct": cor, "incorrect": inc, "partial": par,
            "missed": mis, "spurious": spu, "possible": pos, "actual": act}


def _check_spans(spans: Sequence[Span], what: str, i: int) -> None:
    for s in spans:
        if not s[0] < s[1]:
            raise ValueError(f"sentence {i}: empty or reversed {what} span {tuple(s)}")


def partial_match_span_scores(gold_spans: Sequence[Sequence[Span]],
                              pred_spans: Sequence[Sequence[Span]]) -> dict:
    """Scores of entity spans ``(start, end_exclusive, type)``, one list per sentence (or document).

    Returns ``{scheme: {"precision", "recall", "f1", "correct", "incorrect", "partial", "missed",
    "spurious", "possible", "actual", "per_type": {T: {same keys}}}}`` for the four schemes.
    """
    if len(gold_spans) != len(pred_spans):
        raise ValueError(f"{len(gold_spans)} gold sentences but {len(pred_spans)} predicted")
    counts = {s: Counter() for s in SCHEMES}
    per_type = {s: {} for s in SCHEMES}
    types = set()

    def add(scheme, etype, outcome):
        counts[scheme][outcome] += 1
        per_type[scheme].setdefault(etype, Counter())[outcome] += 1

    for i, (gold, pred) in enumerate(zip(gold_spans, pred_spans)):
        _check_spans(gold, "gold", i)
        _check_spans(pred, "predicted", i)
        types.update(s[2] for s in gold)
        types.update(s[2] for s in pred)
        pairs, missed, spurious = match_spans(gold, pred)
        for scheme in SCHEMES:
            for gi, pi in pairs:
                add(scheme, gold[gi][2], _pair_outcome(gold[gi], pred[pi], scheme))
            for gi in missed:
                add(scheme, gold[gi][2], "missed")
            for pi in spurious:
                add(scheme, pred[pi][2], "spurious")
    # every type seen is listed, with zeros when all its predictions were paired under other types
    return {s: {**scores_from_counts(counts[s]),
                "per_type": {t: scores_from_counts(per_type[s].get(t, Counter())) for t in sorted(types)}}
            for s in SCHEMES}


def partial_match_scores(gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict:
    """The four schemes' scores for tag sequences, entities read by ``common.spans.tags_to_spans``."""
    if len(gold_tags) != len(pred_tags):
        raise ValueError(f"{len(gold_tags)} gold sentences but {len(pred_tags)} predicted")
    for i, (g, p) in enumerate(zip(gold_tags, pred_tags)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
    return partial_match_span_scores([tags_to_spans(g) for g in gold_tags],
                                     [tags_to_spans(p) for p in pred_tags])
