"""Pure functions behind ``ner-report``: entity error classes, breakdowns, disagreements, hints.

Nothing here reads files or draws; everything takes word-level IOB2 tag
sequences (or spans from :func:`common.spans.tags_to_spans`) and returns plain
data, so it can be unit-tested with known answers.

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

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

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
NONE_TYPE = "(none)"  # confusion-matrix row/column for "no entity"


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


# --- breakdowns -----------------------------------------------------------------------------------

def prf(tp: int, n_pred: int, n_gold: int) -> dict:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "num_pred": n_pred, "num_gold": n_gold}


def entity_bucket_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                         key: Callable[[int, Span], str], order: Sequence[str] | None = None) -> dict:
    """Entity P/R/F1 per bucket of entities.

    ``key(sentence, span)`` names an entity's bucket; it must give a gold entity
    and an exactly matching prediction the same bucket (true of anything
    computed from the words and type).  Recall in a bucket is over its gold
    entities, precision over its predictions.
    """
    tp, ng, npred = Counter(), Counter(), Counter()
    for i, (g, p) in enumerate(zip(gold, pred)):
        gs, ps = set(tags_to_spans(g)), set(tags_to_spans(p))
        for s in gs:
            ng[key(i, s)] += 1
        for s in ps:
            npred[key(i, s)] += 1
        for s in gs & ps:
            tp[key(i, s)] += 1
    buckets = list(order) if order is not None else sorted(set(ng) | set(npred))
    return {b: prf(tp[b], npred[b], ng[b]) for b in buckets}


def sentence_bucket_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                           key: Callable[[int], str], order: Sequence[str] | None = None) -> dict:
    """Entity P/R/F1 (and sentence/word counts) per bucket of sentences."""
    tp, ng, npred, nsent, nwords = Counter(), Counter(), Counter(), Counter(), Counter()
    for i, (g, p) in enumerate(zip(gold, pred)):
        b = key(i)
        gs, ps = set(tags_to_spans(g)), set(tags_to_spans(p))
        tp[b] += len(gs & ps)
        ng[b] += len(gs)
        npred[b] += len(ps)
        nsent[b] += 1
        nwords[b] += len(g)
    buckets = list(order) if order is not None else sorted(nsent)
    out = {}
    for b in buckets:
        out[b] = prf(tp[b], npred[b], ng[b])
        out[b].update(sentences=nsent[b], words=nwords[b])
    return out


SENT_LEN_BUCKETS = ((1, 5), (6, 10), (11, 20), (21, 40), (41, None))
ENT_LEN_BUCKETS = ((1, 1), (2, 2), (3, 3), (4, None))


def bucket_name(n: int, buckets=SENT_LEN_BUCKETS) -> str:
    for lo, hi in buckets:
        if n >= lo and (hi is None or n <= hi):
            return _bucket_label(lo, hi)
    return _bucket_label(*buckets[0])


def _bucket_label(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"{lo}+"
    return str(lo) if lo == hi else f"{lo}-{hi}"


def bucket_labels(buckets) -> list[str]:
    return [_bucket_label(lo, hi) for lo, hi in buckets]


def is_all_caps(tokens: Sequence[str]) -> bool:
    """A sentence is all-caps when it has at least two letters and none is lower case."""
    letters = [c for t in tokens for c in t if c.isalpha()]
    return len(letters) >= 2 and not any(c.islower() for c in letters)


def entity_key(tokens: Sequence[str], span: Span) -> tuple[str, str]:
    """An entity's identity for seen/unseen: its words joined by spaces, and its type."""
    return " ".join(tokens[span[0]:span[1]]), span[2]


def training_entities(train: Iterable[tuple[Sequence[str], Sequence[str]]]) -> set[tuple[str, str]]:
    """Entity strings+types of a training fold given ``(tokens, tags)`` pairs."""
    seen = set()
    for tokens, tags in train:
        for s in tags_to_spans(tags):
            seen.add(entity_key(tokens, s))
    return seen


def breakdowns(tokens: Sequence[Sequence[str]], gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
               seen: set[tuple[str, str]] | None = None) -> dict:
    """F1 by sentence length, entity length, seen/unseen in training, and all-caps vs mixed case."""
    out = {
        "sentence_length": sentence_bucket_scores(
            gold, pred, lambda i: bucket_name(len(tokens[i]), SENT_LEN_BUCKETS), bucket_labels(SENT_LEN_BUCKETS)),
        "entity_length": entity_bucket_scores(
            gold, pred, lambda i, s: bucket_name(s[1] - s[0], ENT_LEN_BUCKETS), bucket_labels(ENT_LEN_BUCKETS)),
        "casing": sentence_bucket_scores(
            gold, pred, lambda i: "all caps" if is_all_caps(tokens[i]) else "mixed case", ["mixed case", "all caps"]),
    }
    if seen is not None:
        out["seen_in_train"] = entity_bucket_scores(
            gold, pred, lambda i, s: "seen" if entity_key(tokens[i], s) in seen else "unseen", ["seen", "unseen"])
    return out


# --- comparing models ----------------------------------------------------------------------------

def correct_gold(outcomes: Iterable[Outcome]) -> set[tuple[int, Span]]:
    return {(o.sentence, o.gold) for o in outcomes if o.cls == CORRECT}


def outcome_by_gold(outcomes: Iterable[Outcome]) -> dict[tuple[int, Span], Outcome]:
    return {(o.sentence, o.gold): o for o in outcomes if o.gold is not None}


def disagreements(outcomes_a: Sequence[Outcome], outcomes_b: Sequence[Outcome]) -> dict:
    """Gold entities one model gets exactly right and the other does not, both ways.

    Returns ``{"a_only": [(sentence, gold_span, b's class)], "b_only": [...],
    "both": n, "neither": n}``.
    """
    ca, cb = correct_gold(outcomes_a), correct_gold(outcomes_b)
    ga, gb = outcome_by_gold(outcomes_a), outcome_by_gold(outcomes_b)
    a_only = sorted(ca - cb)
    b_only = sorted(cb - ca)
    all_gold = set(ga) | set(gb)
    return {
        "a_only": [(s, g, gb[(s, g)].cls) for s, g in a_only],
        "b_only": [(s, g, ga[(s, g)].cls) for s, g in b_only],
        "both": len(ca & cb),
        "neither": len(all_gold - ca - cb),
    }


def sample(items: Sequence, k: int, seed: int = 0) -> list:
    """Up to ``k`` items spread over the list (deterministic), kept in list order."""
    if len(items) <= k:
        return list(items)
    idx = sorted(random.Random(seed).sample(range(len(items)), k))
    return [items[i] for i in idx]


# --- improvement hints ---------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _md(name: str) -> str:
    """Escape a model name for the report's Markdown."""
    return "".join("\\" + c if c in "\\`*_[]{}<>|#" else c for c in name)


def improvement_hints(models: dict[str, dict]) -> list[str]:
    """Short, data-derived hints, one sentence each, numbers included.

    ``models[name]`` is the per-model entry of report.json (``scores``,
    ``errors``, ``confusion``, ``breakdowns``).  A hint is only emitted when
    its condition holds in the data.
    """
    hints: list[str] = []
    for raw_name, m in models.items():
        name = _md(raw_name)
        sc, err = m["scores"], m["errors"]
        f1 = sc["f1"]
        n_err = err["errors"]
        if n_err:
            ranked = sorted(ERROR_CLASSES, key=lambda c: -err["outcomes"][c])
            top, second = ranked[0], ranked[1]
            hints.append(
                f"**{name}**: the largest error class is *{CLASS_LABELS[top]}* with {err['outcomes'][top]:,} of "
                f"{n_err:,} errors ({_pct(err['outcomes'][top] / n_err)}%), then *{CLASS_LABELS[second]}* with "
                f"{err['outcomes'][second]:,} ({_pct(err['outcomes'][second] / n_err)}%)" + _class_advice(top) + ".")
        per_type = {t: v for t, v in sc["per_type"].items() if v.get("support", 0) > 0}
        if len(per_type) > 1:
            weakest = min(per_type, key=lambda t: per_type[t]["f1"])
            w = per_type[weakest]
            side = ("it is missed more than over-predicted (recall below precision)" if w["recall"] < w["precision"]
                    else "it is over-predicted more than missed (precision below recall)")
            hints.append(
                f"**{name}**: the weakest type is {weakest} (F1 {_pct(w['f1'])} vs {_pct(f1)} overall, "
                f"P {_pct(w['precision'])} / R {_pct(w['recall'])}, {w['support']:,} gold entities); {side}.")
        conf = m.get("confusion")
        if conf:
            best = None
            for r, row in enumerate(conf["rows"][:-1]):
                for c, col in enumerate(conf["cols"][:-1]):
                    if row != col and conf["matrix"][r][c] and (best is None or conf["matrix"][r][c] > best[0]):
                        best = (conf["matrix"][r][c], row, col)
            if best and best[0] >= 2:
                gold_n = sum(conf["matrix"][conf["rows"].index(best[1])])
                hints.append(
                    f"**{name}**: the most frequent type confusion is gold {best[1]} predicted as {best[2]} "
                    f"({best[0]:,} times, {_pct(best[0] / gold_n)}% of gold {best[1]} entities).")
        bd = m.get("breakdowns", {})
        su = bd.get("seen_in_train")
        if su and su["seen"]["num_gold"] and su["unseen"]["num_gold"]:
            gap = su["seen"]["f1"] - su["unseen"]["f1"]
            share = su["unseen"]["num_gold"] / (su["seen"]["num_gold"] + su["unseen"]["num_gold"])
            if gap > 0.02:
                hints.append(
                    f"**{name}**: F1 on entities unseen in training is {_pct(su['unseen']['f1'])} against "
                    f"{_pct(su['seen']['f1'])} on seen ones (a {_pct(gap)}-point gap; {_pct(share)}% of the gold "
                    f"entities are unseen): generalisation beyond memorised names is the lever "
                    f"(pre-trained representations, character features, gazetteers or more varied data).")
        cs = bd.get("casing")
        if cs and cs["all caps"]["num_gold"] and cs["mixed case"]["num_gold"]:
            gap = cs["mixed case"]["f1"] - cs["all caps"]["f1"]
            if gap > 0.02:
                hints.append(
                    f"**{name}**: all-caps sentences score F1 {_pct(cs['all caps']['f1'])} against "
                    f"{_pct(cs['mixed case']['f1'])} for mixed case ({_pct(gap)} points; "
                    f"{cs['all caps']['sentences']:,} sentences, {cs['all caps']['num_gold']:,} gold entities): "
                    f"casing carries much of the signal, so try upper-casing augmentation or truecasing headlines.")
        el = bd.get("entity_length")
        if el:
            scored = [(b, v) for b, v in el.items() if v["num_gold"] >= 5]
            if len(scored) >= 2:
                worst_b, worst = min(scored, key=lambda x: x[1]["f1"])
                if f1 - worst["f1"] > 0.05:
                    hints.append(
                        f"**{name}**: entities of {worst_b} words score F1 {_pct(worst['f1'])} "
                        f"({worst['num_gold']:,} gold), {_pct(f1 - worst['f1'])} points below overall.")
        strict = sc.get("strict")
        if strict and sc["f1"] - strict["f1"] > 0.002:
            hints.append(
                f"**{name}**: strict IOB2 F1 is {_pct(strict['f1'])} vs {_pct(sc['f1'])} in conlleval mode: "
                f"some predicted entities start with I- (ill-formed IOB2); a CRF or constrained decoding would "
                f"remove them.")
        p, r = sc["precision"], sc["recall"]
        if abs(p - r) > 0.02:
            hints.append(
                f"**{name}**: precision {_pct(p)} and recall {_pct(r)} are unbalanced: the model "
                + (f"under-predicts entities ({err['outcomes'][MISSED]:,} missed)" if r < p
                   else f"over-predicts entities ({err['outcomes'][SPURIOUS]:,} spurious)") + ".")
    return hints


def _class_advice(cls: str) -> str:
    return {
        WRONG_TYPE: ": the spans are found but typed wrongly, so context for typing (document context, "
                    "a larger encoder) matters more than boundaries",
        WRONG_BOUNDARY: ": look at the examples for systematic boundary slips (titles, 'the', nested names)",
        WRONG_TYPE_BOUNDARY: "",
        MISSED: ": recall is the bottleneck",
        SPURIOUS: ": precision is the bottleneck",
    }.get(cls, "")


def disagreement_hint(a: str, b: str, dis: dict) -> str | None:
    a, b = _md(a), _md(b)
    na, nb = len(dis["a_only"]), len(dis["b_only"])
    if not na and not nb:
        return None
    total = na + nb + dis["both"] + dis["neither"]
    return (f"**{a}** gets {na:,} gold entities exactly right that **{b}** does not, and **{b}** gets {nb:,} "
            f"that **{a}** does not ({_pct((na + nb) / total) if total else '0.0'}% of {total:,} gold entities); "
            f"{dis['neither']:,} are wrong in both"
            + (": an ensemble or a look at the differing examples could pay off." if min(na, nb) >= 0.1 * max(na, nb)
               else "."))
