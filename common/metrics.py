"""Entity-level precision/recall/F1 (seqeval).

The headline number is seqeval's default mode, which reads tags as conlleval
does; strict IOB2 mode is reported beside it.  Under DDP the word-level
predictions of all ranks are gathered (``taggers.predict``) and scored once,
so the distributed score equals the single-process score.
"""

from __future__ import annotations

from typing import Sequence

from seqeval.metrics import classification_report
from seqeval.scheme import IOB2


def _report(gold, pred, **kwargs) -> dict:
    return classification_report(gold, pred, output_dict=True, zero_division=0, **kwargs)


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """Entity P/R/F1 overall (micro) and per type, default (conlleval) and strict IOB2 modes.

    Returns ``{"precision", "recall", "f1", "support", "per_type": {T: {...}},
    "strict": {"precision", "recall", "f1", "per_type": ...}}``.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")

    def pack(report):
        micro = report["micro avg"]
        per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                        "f1": float(v["f1-score"]), "support": int(v["support"])}
                    for k, v in report.items() if not k.endswith(" avg")}
        return {"precision": float(micro["precision"]), "recall": float(micro["recall"]),
                "f1": float(micro["f1-score"]),
                "support": int(micro["support"]), "per_type": per_type}

    default = pack(_report(list(map(list, gold)), list(map(list, pred))))
    strict = pack(_report(list(map(list, gold)), list(map(list, pred)), mode="strict", scheme=IOB2))
    default["strict"] = strict
    return default


def score_words(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """Entity scores plus word-level accuracy for word-level tag sequences."""
    scores = entity_scores(gold, pred)
    correct = sum(g == p for gs, ps in zip(gold, pred) for g, p in zip(gs, ps))
    total = sum(len(g) for g in gold)
    scores["word_accuracy"] = correct / total if total else 0.0
    return scores


def span_agreement(pred_a: Sequence[Sequence[str]], pred_b: Sequence[Sequence[str]]) -> dict:
    """How alike two taggings of the same sentences are: the share of entity spans (sentence, boundaries,
    type) that both predict among those either predicts, and the share of sentences tagged identically."""
    from .spans import tags_to_spans

    both = either = same_sentences = 0
    for a, b in zip(pred_a, pred_b, strict=True):
        spans_a, spans_b = set(tags_to_spans(a)), set(tags_to_spans(b))
        both += len(spans_a & spans_b)
        either += len(spans_a | spans_b)
        same_sentences += list(a) == list(b)
    return {"identical_spans": both / either if either else 1.0,
            "identical_sentences": same_sentences / len(pred_a) if len(pred_a) else 1.0}
