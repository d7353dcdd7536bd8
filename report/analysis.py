"""The numbers of ``ner-report`` beyond error classes: breakdowns, disagreements, improvement hints.

Apart from :func:`analyse`, which scores loaded runs (:class:`report.runs.RunData`),
nothing here reads files or draws; everything takes word-level IOB2 tag
sequences (or spans from :func:`common.spans.tags_to_spans`) and returns plain
data, so it can be unit-tested with known answers.  Error classes are defined
in :mod:`report.errors`.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from common.metrics import score_words
from common.spans import tags_to_spans

from .errors import (CLASS_LABELS, CORRECT, ERROR_CLASSES, MISSED, SPURIOUS, WRONG_BOUNDARY, WRONG_TYPE,
                     WRONG_TYPE_BOUNDARY, Outcome, Span, classify_corpus, confusion_matrix, error_counts)
from .render import md_escape

if TYPE_CHECKING:
    from .runs import RunData

log = logging.getLogger(__name__)


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


# The breakdowns in the order the report shows them, with their titles.
BREAKDOWNS = (("sentence_length", "By sentence length (words)"), ("entity_length", "By entity length (words)"),
              ("seen_in_train", "Entities seen vs unseen in training"), ("casing", "All-caps vs mixed-case sentences"))


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


def improvement_hints(models: dict[str, dict]) -> list[str]:
    """Short, data-derived hints, one sentence each, numbers included.

    ``models[name]`` is the per-model entry of report.json (``scores``,
    ``errors``, ``confusion``, ``breakdowns``).  A hint is only emitted when
    its condition holds in the data.
    """
    hints: list[str] = []
    for raw_name, m in models.items():
        name = md_escape(raw_name)
        for hint in _HINTS:
            text = hint(m)
            if text:
                hints.append(f"**{name}**: {text}")
    return hints


def _error_class_hint(m: dict) -> str | None:
    """The two largest error classes, with advice on the largest."""
    err = m["errors"]
    n_err = err["errors"]
    if not n_err:
        return None
    ranked = sorted(ERROR_CLASSES, key=lambda c: -err["outcomes"][c])
    top, second = ranked[0], ranked[1]
    return (f"the largest error class is *{CLASS_LABELS[top]}* with {err['outcomes'][top]:,} of "
            f"{n_err:,} errors ({_pct(err['outcomes'][top] / n_err)}%), then *{CLASS_LABELS[second]}* with "
            f"{err['outcomes'][second]:,} ({_pct(err['outcomes'][second] / n_err)}%)" + _class_advice(top) + ".")


def _weakest_type_hint(m: dict) -> str | None:
    """The entity type with the lowest F1, and whether it is missed or over-predicted."""
    sc = m["scores"]
    per_type = {t: v for t, v in sc["per_type"].items() if v.get("support", 0) > 0}
    if len(per_type) <= 1:
        return None
    weakest = min(per_type, key=lambda t: per_type[t]["f1"])
    w = per_type[weakest]
    side = ("it is missed more than over-predicted (recall below precision)" if w["recall"] < w["precision"]
            else "it is over-predicted more than missed (precision below recall)")
    return (f"the weakest type is {weakest} (F1 {_pct(w['f1'])} vs {_pct(sc['f1'])} overall, "
            f"P {_pct(w['precision'])} / R {_pct(w['recall'])}, {w['support']:,} gold entities); {side}.")


def _confusion_hint(m: dict) -> str | None:
    """The most frequent confusion of one gold type for another (at least twice)."""
    conf = m.get("confusion")
    if not conf:
        return None
    best = None
    for r, row in enumerate(conf["rows"][:-1]):
        for c, col in enumerate(conf["cols"][:-1]):
            if row != col and conf["matrix"][r][c] and (best is None or conf["matrix"][r][c] > best[0]):
                best = (conf["matrix"][r][c], row, col)
    if not (best and best[0] >= 2):
        return None
    gold_n = sum(conf["matrix"][conf["rows"].index(best[1])])
    return (f"the most frequent type confusion is gold {best[1]} predicted as {best[2]} "
            f"({best[0]:,} times, {_pct(best[0] / gold_n)}% of gold {best[1]} entities).")


def _unseen_hint(m: dict) -> str | None:
    """F1 on entities unseen in training well below seen ones."""
    su, gap = _breakdown_gap(m, "seen_in_train", "seen", "unseen")
    if su is None:
        return None
    share = su["unseen"]["num_gold"] / (su["seen"]["num_gold"] + su["unseen"]["num_gold"])
    return (f"F1 on entities unseen in training is {_pct(su['unseen']['f1'])} against "
            f"{_pct(su['seen']['f1'])} on seen ones (a {_pct(gap)}-point gap; {_pct(share)}% of the gold "
            f"entities are unseen): generalisation beyond memorised names is the lever "
            f"(pre-trained representations, character features, gazetteers or more varied data).")


def _breakdown_gap(m: dict, name: str, good: str, bad: str) -> tuple[dict | None, float]:
    """A breakdown whose ``bad`` bucket scores more than 2 points of F1 below its ``good`` one, and the gap;
    ``(None, 0.0)`` when either bucket has no gold entity or the gap is smaller."""
    b = m.get("breakdowns", {}).get(name)
    if not (b and b[good]["num_gold"] and b[bad]["num_gold"]):
        return None, 0.0
    gap = b[good]["f1"] - b[bad]["f1"]
    return (b, gap) if gap > 0.02 else (None, 0.0)


def _casing_hint(m: dict) -> str | None:
    """All-caps sentences well below mixed-case ones."""
    cs, gap = _breakdown_gap(m, "casing", "mixed case", "all caps")
    if cs is None:
        return None
    return (f"all-caps sentences score F1 {_pct(cs['all caps']['f1'])} against "
            f"{_pct(cs['mixed case']['f1'])} for mixed case ({_pct(gap)} points; "
            f"{cs['all caps']['sentences']:,} sentences, {cs['all caps']['num_gold']:,} gold entities): "
            f"casing carries much of the signal, so try upper-casing augmentation or truecasing headlines.")


def _entity_length_hint(m: dict) -> str | None:
    """The entity length (with at least 5 gold entities) that scores furthest below overall."""
    el = m.get("breakdowns", {}).get("entity_length")
    if not el:
        return None
    scored = [(b, v) for b, v in el.items() if v["num_gold"] >= 5]
    if len(scored) < 2:
        return None
    worst_b, worst = min(scored, key=lambda x: x[1]["f1"])
    f1 = m["scores"]["f1"]
    if not f1 - worst["f1"] > 0.05:
        return None
    return (f"entities of {worst_b} words score F1 {_pct(worst['f1'])} "
            f"({worst['num_gold']:,} gold), {_pct(f1 - worst['f1'])} points below overall.")


def _strict_hint(m: dict) -> str | None:
    """Strict IOB2 F1 below conlleval's: ill-formed entities."""
    sc = m["scores"]
    strict = sc.get("strict")
    if not (strict and sc["f1"] - strict["f1"] > 0.002):
        return None
    return (f"strict IOB2 F1 is {_pct(strict['f1'])} vs {_pct(sc['f1'])} in conlleval mode: "
            f"some predicted entities start with I- (ill-formed IOB2); a CRF or constrained decoding would "
            f"remove them.")


def _balance_hint(m: dict) -> str | None:
    """Precision and recall far apart."""
    sc, err = m["scores"], m["errors"]
    p, r = sc["precision"], sc["recall"]
    if not abs(p - r) > 0.02:
        return None
    return (f"precision {_pct(p)} and recall {_pct(r)} are unbalanced: the model "
            + (f"under-predicts entities ({err['outcomes'][MISSED]:,} missed)" if r < p
               else f"over-predicts entities ({err['outcomes'][SPURIOUS]:,} spurious)") + ".")


# in the order the hints are listed for each model
_HINTS = (_error_class_hint, _weakest_type_hint, _confusion_hint, _unseen_hint, _casing_hint, _entity_length_hint,
          _strict_hint, _balance_hint)


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
    a, b = md_escape(a), md_escape(b)
    na, nb = len(dis["a_only"]), len(dis["b_only"])
    if not na and not nb:
        return None
    total = na + nb + dis["both"] + dis["neither"]
    return (f"**{a}** gets {na:,} gold entities exactly right that **{b}** does not, and **{b}** gets {nb:,} "
            f"that **{a}** does not ({_pct((na + nb) / total) if total else '0.0'}% of {total:,} gold entities); "
            f"{dis['neither']:,} are wrong in both"
            + (": an ensemble or a look at the differing examples could pay off." if min(na, nb) >= 0.1 * max(na, nb)
               else "."))


# --- the runs of one report ------------------------------------------------------------------------

def analyse(runs: list[RunData], seen: set | None) -> dict:
    """Scores, error classes, confusion, breakdowns and learning summary per run, and comparisons per pair.

    Returns ``{"types", "models", "pairs", "_outcomes"}``; ``models[name]`` is report.json's entry of a run.
    Keys starting with ``_`` are for the document only (not written to report.json).
    """
    types = sorted({s[2] for r in runs for seqs in (r.gold, r.pred) for tags in seqs for s in tags_to_spans(tags)})
    models = {}
    outcomes = {}
    for r in runs:
        scores = score_words(r.gold, r.pred)
        oc = classify_corpus(r.gold, r.pred)
        outcomes[r.name] = oc
        errors = error_counts(oc)
        # consistency: our exact matches are seqeval's true positives
        ours = prf(errors["outcomes"][CORRECT], errors["num_pred"], errors["num_gold"])
        if abs(ours["f1"] - scores["f1"]) > 1e-9:
            log.warning("%s: error-class F1 %.6f differs from seqeval %.6f", r.name, ours["f1"], scores["f1"])
        m = r.metrics
        logged = m.get(r.fold) if isinstance(m.get(r.fold), dict) else None
        if logged and logged.get("f1") is not None and abs(logged["f1"] - scores["f1"]) > 1e-6:
            r.notes.append(f"metrics.json reports {r.fold} F1 {100 * logged['f1']:.2f}, the report scores "
                           f"{100 * scores['f1']:.2f} on the {r.source}")
            log.warning("%s: %s", r.name, r.notes[-1])
        models[r.name] = {
            "run_dir": os.path.abspath(r.path),
            "model_type": m.get("model_type") or r.config.get("model", {}).get("type"),
            "num_parameters": m.get("num_parameters"),
            "train_wall_s": m.get("train_wall_s"),
            "train_tokens_per_s": m.get("train_tokens_per_s"),
            "best_step": m.get("best_step"),
            "source": r.source,
            "sentences": len(r.gold),
            "words": sum(len(g) for g in r.gold),
            "scores": {**scores, "token_accuracy": scores["word_accuracy"]},
            "tagging": r.tagging,
            "errors": errors,
            "confusion": confusion_matrix(oc, types),
            "breakdowns": breakdowns(r.tokens, r.gold, r.pred, seen),
            "learning": _learning_summary(r.train_log),
            "notes": r.notes,
        }
    pairs = []
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            a, b = runs[i], runs[j]
            if a.indices != b.indices or a.tokens != b.tokens or a.gold != b.gold:
                pairs.append({"a": a.name, "b": b.name, "comparable": False})
                continue
            d = disagreements(outcomes[a.name], outcomes[b.name])
            pairs.append({"a": a.name, "b": b.name, "comparable": True, "a_only_correct": len(d["a_only"]),
                          "b_only_correct": len(d["b_only"]), "both_correct": d["both"],
                          "neither_correct": d["neither"], "_detail": d})
    return {"types": types, "models": models, "pairs": pairs, "_outcomes": outcomes}


def _learning_summary(tl: dict) -> dict:
    out = {"steps_logged": len(tl["step"]), "evals_logged": len(tl["eval"])}
    if tl["step"]:
        out["last_step"] = tl["step"][-1][0]
        out["final_loss"] = tl["step"][-1][2]
    if tl["eval"]:
        best = max(tl["eval"], key=lambda e: e[2])
        out.update(best_valid_f1=best[2], best_valid_step=best[0], best_valid_elapsed_s=best[1])
    return out
