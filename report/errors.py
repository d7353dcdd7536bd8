"""Entity error classes of ``ner-report``: every gold and predicted entity of a sentence in one class.

Pure functions on word-level IOB2 tag sequences (or spans from
:func:`common.spans.tags_to_spans`), unit-tested with known answers.  The
section below is copied into ``report.json`` (``definitions.error_classes``).

Error classes
-------------
Every gold entity and every predicted entity of a sentence lands in exactly one
:class:`Outcome` (an outcome *owns* one gold entity, one predicted entity, or
one of each).  Classes are decided in this order:

1. **correct** -- a prediction with the gold entity's boundaries and type
   (exactly seqeval's / conlleval's true positive).
2. **wrong_type** -- a prediction with the gold entity's boundaries but
   another type.  Spans of one sequence never overlap, so steps 1-2 pair at
   most one prediction with each gold entity.
3. **wrong_boundary** / **wrong_type_boundary** -- the remaining gold and
   predicted entities that overlap (share at least one word) are paired one to
   one, greedily: pairs with the most shared words first, then pairs of the
   same type, then left to right.  A pair of the same type is a boundary error,
   of different types a type-and-boundary error.
4. One-to-many overlaps: an entity left unpaired after step 3 that still
   overlaps an entity on the other side (that one was paired with something
   else, e.g. a gold ``[New York Stock Exchange]`` predicted as two pieces
   ``[New York]`` ``[Stock Exchange]``) is a boundary error of its own:
   **wrong_boundary** if its largest-overlap partner (same-type preferred on
   ties) has its type, else **wrong_type_boundary**.  Such an outcome owns
   only that entity; ``partner`` names the overlapped one.
5. **missed** -- a gold entity that overlaps no prediction.
6. **spurious** -- a prediction that overlaps no gold entity.

Hence ``#gold = correct + wrong_type + gold-owning boundary outcomes + missed``
and ``#pred = correct + wrong_type + pred-owning boundary outcomes + spurious``;
precision = correct / #pred and recall = correct / #gold are seqeval's.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

from common.spans import tags_to_spans

Span = tuple[int, int, str]  # (start_word, end_word_exclusive, type)

CORRECT = "correct"
WRONG_TYPE = "wrong_type"
WRONG_BOUNDARY = "wrong_boundary"
WRONG_TYPE_BOUNDARY = "wrong_type_boundary"
MISSED = "missed"
SPURIOUS = "spurious"
CLASSES = (CORRECT, WRONG_TYPE, WRONG_BOUNDARY, WRONG_TYPE_BOUNDARY, MISSED, SPURIOUS)
ERROR_CLASSES = CLASSES[1:]
CLASS_LABELS = {
    CORRECT: "correct",
    WRONG_TYPE: "wrong type",
    WRONG_BOUNDARY: "wrong boundary",
    WRONG_TYPE_BOUNDARY: "wrong type and boundary",
    MISSED: "missed",
    SPURIOUS: "spurious",
}


@dataclass(frozen=True)
class Outcome:
    """One classified entity (or gold/predicted pair) of one sentence.

    ``gold``/``pred`` are the entities this outcome owns (one or both);
    ``partner`` is set for one-to-many boundary errors (step 4): the entity on
    the other side that it overlaps, already owned by another outcome.
    """

    sentence: int
    cls: str
    gold: Span | None = None
    pred: Span | None = None
    partner: Span | None = None

    @property
    def type(self) -> str:
        """The type an outcome is counted under: the gold type, else the predicted type."""
        return (self.gold or self.pred)[2]


def overlap(a: Span, b: Span) -> int:
    """Number of words two spans share."""
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def classify_spans(gold: Sequence[Span], pred: Sequence[Span], sentence: int = 0) -> list[Outcome]:
    """Classify the entities of one sentence (see module docstring)."""
    gold = sorted(set(gold))
    pred = sorted(set(pred))
    out: list[Outcome] = []
    g_free = set(range(len(gold)))
    p_free = set(range(len(pred)))
    # 1-2: same boundaries
    by_bounds = {(p[0], p[1]): j for j, p in enumerate(pred)}
    for i, g in enumerate(gold):
        j = by_bounds.get((g[0], g[1]))
        if j is not None and j in p_free:
            out.append(Outcome(sentence, CORRECT if pred[j][2] == g[2] else WRONG_TYPE, g, pred[j]))
            g_free.discard(i)
            p_free.discard(j)
    # 3: greedy one-to-one pairing of overlapping leftovers
    candidates = []
    for i in g_free:
        for j in p_free:
            k = overlap(gold[i], pred[j])
            if k:
                candidates.append((-k, gold[i][2] != pred[j][2], gold[i][0], pred[j][0], i, j))
    candidates.sort()
    for _, diff_type, _, _, i, j in candidates:
        if i in g_free and j in p_free:
            out.append(Outcome(sentence, WRONG_TYPE_BOUNDARY if diff_type else WRONG_BOUNDARY, gold[i], pred[j]))
            g_free.discard(i)
            p_free.discard(j)

    # 4-6: leftovers
    def best_partner(span: Span, others: Sequence[Span]) -> Span | None:
        scored = [(-overlap(span, o), o[2] != span[2], o[0], o) for o in others if overlap(span, o)]
        return min(scored)[3] if scored else None

    # a leftover gold entity is missed unless a prediction overlaps it; a leftover prediction is
    # spurious unless a gold entity overlaps it (then both are boundary errors, typed or not)
    for side, free, spans, others, alone in (("gold", g_free, gold, pred, MISSED),
                                             ("pred", p_free, pred, gold, SPURIOUS)):
        for i in sorted(free):
            partner = best_partner(spans[i], others)
            if partner is None:
                out.append(Outcome(sentence, alone, **{side: spans[i]}))
            else:
                cls = WRONG_BOUNDARY if partner[2] == spans[i][2] else WRONG_TYPE_BOUNDARY
                out.append(Outcome(sentence, cls, partner=partner, **{side: spans[i]}))
    out.sort(key=lambda o: ((o.gold or o.pred)[0], o.gold is None))
    return out


def classify_sentence(gold_tags: Sequence[str], pred_tags: Sequence[str], sentence: int = 0) -> list[Outcome]:
    """Classify the entities of one sentence given word-level tags."""
    if len(gold_tags) != len(pred_tags):
        raise ValueError(f"sentence {sentence}: {len(gold_tags)} gold tags but {len(pred_tags)} predicted")
    return classify_spans(tags_to_spans(gold_tags), tags_to_spans(pred_tags), sentence)


def classify_corpus(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> list[Outcome]:
    """All outcomes of a corpus; ``Outcome.sentence`` is the position in ``gold``."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    out: list[Outcome] = []
    for i, (g, p) in enumerate(zip(gold, pred)):
        out.extend(classify_sentence(g, p, i))
    return out


def error_counts(outcomes: Iterable[Outcome]) -> dict:
    """Counts per class (outcomes, gold entities owned, predicted entities owned) and per type.

    ``per_type[T][cls]`` counts outcomes under :attr:`Outcome.type`.
    """
    counts = Counter()
    gold_counts = Counter()
    pred_counts = Counter()
    per_type: dict[str, Counter] = defaultdict(Counter)
    for o in outcomes:
        counts[o.cls] += 1
        per_type[o.type][o.cls] += 1
        if o.gold is not None:
            gold_counts[o.cls] += 1
        if o.pred is not None:
            pred_counts[o.cls] += 1
    return {
        "outcomes": {c: counts[c] for c in CLASSES},
        "gold": {c: gold_counts[c] for c in CLASSES},
        "pred": {c: pred_counts[c] for c in CLASSES},
        "num_gold": sum(gold_counts.values()),
        "num_pred": sum(pred_counts.values()),
        "errors": sum(counts[c] for c in ERROR_CLASSES),
        "per_type": {t: {c: per_type[t][c] for c in CLASSES} for t in sorted(per_type)},
    }


def confusion_matrix(outcomes: Iterable[Outcome], types: Sequence[str] | None = None) -> dict:
    """Entity-type confusion: rows gold type, columns predicted type.

    Every gold entity is counted once in its type's row: the column is the type
    of the prediction it was paired with (or, for one-to-many leftovers, its
    partner's type), or ``missed``.  The last row, ``spurious``, counts
    predictions that overlap no gold entity, by predicted type.  Predictions
    owned by one-to-many leftover outcomes (extra fragments of an already
    paired gold entity) are not in the matrix; they are in :func:`error_counts`.
    Row sums are the gold counts per type.
    """
    outcomes = list(outcomes)
    if types is None:
        types = sorted({t for o in outcomes for s in (o.gold, o.pred, o.partner) if s for t in [s[2]]})
    rows = list(types) + [SPURIOUS]
    cols = list(types) + [MISSED]
    r_ix = {t: i for i, t in enumerate(rows)}
    c_ix = {t: i for i, t in enumerate(cols)}
    m = [[0] * len(cols) for _ in rows]
    for o in outcomes:
        if o.gold is not None:
            other = o.pred or o.partner
            m[r_ix[o.gold[2]]][c_ix[other[2]] if other else c_ix[MISSED]] += 1
        elif o.cls == SPURIOUS:
            m[r_ix[SPURIOUS]][c_ix[o.pred[2]]] += 1
    return {"rows": rows, "cols": cols, "matrix": m}
