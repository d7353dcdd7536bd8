"""IOB2 tags to entity spans, read the way conlleval reads them (seqeval's ``get_entities``)."""

from __future__ import annotations

from typing import Sequence

from seqeval.metrics.sequence_labeling import get_entities


def tags_to_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """``(start_word, end_word_exclusive, type)`` for each entity.

    ``B-X`` always opens an entity; ``I-X`` continues an open ``X`` entity and
    otherwise opens one (conlleval's reading of ill-formed IOB2); ``O`` closes.
    """
    return [(start, end + 1, etype) for etype, start, end in get_entities(list(tags))]
