"""IOB2 tags to entity spans, read the way conlleval reads them."""

from __future__ import annotations

from typing import Sequence

from .data import split_tag


def tags_to_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """``(start_word, end_word_exclusive, type)`` for each entity.

    ``B-X`` always opens an entity; ``I-X`` continues an open ``X`` entity and
    otherwise opens one (conlleval's reading of ill-formed IOB2); ``O`` closes.
    """
    spans = []
    start, etype = None, None
    for i, tag in enumerate(tags):
        prefix, t = split_tag(tag) if tag != "O" else ("O", None)
        if prefix in ("B", "S") or (prefix in ("I", "E") and t != etype) or prefix == "O":
            if etype is not None:
                spans.append((start, i, etype))
            start, etype = (i, t) if prefix != "O" else (None, None)
        if prefix in ("E", "S"):
            spans.append((start, i + 1, etype))
            start, etype = None, None
    if etype is not None:
        spans.append((start, len(tags), etype))
    return spans


def span_scores(spans: Sequence[tuple[int, int, str]], word_probs: Sequence[float]) -> list[float]:
    """The score of a span: the mean probability of its words' predicted tags."""
    return [sum(word_probs[a:b]) / (b - a) for a, b, _ in spans]
