"""The numbers of ``ner-report`` beyond error classes: breakdowns and disagreements (the hints that read them
are in :mod:`report.hints`).

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

from .errors import CORRECT, Outcome, Span, classify_corpus, confusion_matrix, error_counts

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
