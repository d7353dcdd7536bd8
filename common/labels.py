"""The label set of labelled data, and the check that every fold fits it."""

from __future__ import annotations

import json
import logging
from typing import Iterable, Sequence

from .data import OUTSIDE, DataError, Sentence, split_tag, tag_type

log = logging.getLogger(__name__)


def label_list(sentences: Iterable[Sentence]) -> list[str]:
    """The IOB2 label set of the data in a stable order: ``O`` then B-/I- per type, types sorted."""
    types = set()
    for s in sentences:
        for tag in s.tags or ():
            etype = split_tag(tag)[1]
            if etype is not None:
                types.add(etype)
    return labels_for_types(sorted(types))


def labels_for_types(types: Sequence[str]) -> list[str]:
    labels = [OUTSIDE]
    for t in types:
        labels += [f"B-{t}", f"I-{t}"]
    return labels


def _preview(tokens: Sequence[str], n: int = 6) -> str:
    words = " ".join(tokens[:n])
    return repr(words + " ..." if len(tokens) > n else words)


def check_fold_labels(folds: dict[str, list[Sentence]], labels: Sequence[str], path: str) -> None:
    """Refuse folds that use a tag outside ``labels``, the model's IOB2 tag set.

    Folds are checked in order; the :class:`DataError` names ``path``, the first offending fold and
    sentence (its index and first words), the tag and its token.  When ``labels`` is the tag set of
    the train fold (``label_list(folds["train"])``, what the trainer uses without ``data.labels``),
    the message suggests ``data.labels=[...]`` listing the tags of ``labels`` and all folds.

    Entity types that differ only in case (``LOC`` and ``loc``, in the folds or ``labels``) are
    separate types to the model: one warning names them all, before any error.
    """
    known = set(labels)
    types = {t for t in map(tag_type, labels) if t is not None}
    for sentences in folds.values():
        for s in sentences:
            for tag in s.tags or ():
                if tag not in known:
                    etype = tag_type(tag)
                    if etype is not None:
                        types.add(etype)
    by_case: dict[str, list[str]] = {}
    for t in sorted(types):
        by_case.setdefault(t.casefold(), []).append(t)
    clashes = [group for group in by_case.values() if len(group) > 1]
    if clashes:
        log.warning("%s: entity types that differ only in case: %s; they are different types to the "
                    "model (rename one if they mean the same)", path,
                    "; ".join(" and ".join(map(repr, group)) for group in clashes))
    known_types = {t for t in map(tag_type, labels) if t is not None}
    for fold, sentences in folds.items():
        for s in sentences:
            for i, tag in enumerate(s.tags or ()):
                if tag in known:
                    continue
                where = f"{path}: fold {fold!r}, sentence {s.index} ({_preview(s.tokens)})"
                problem = f"tag {tag!r} at token {i} ({s.tokens[i]!r})"
                etype = tag_type(tag)
                same = sorted(k for k in known_types if etype is not None and k != etype
                              and k.casefold() == etype.casefold())
                hint = f" (the label set has type {same[0]!r}, which differs only in case)" if same else ""
                if "train" in folds and list(labels) == label_list(folds["train"]):
                    union = json.dumps(labels_for_types(sorted(types)), separators=(",", ":"))
                    raise DataError(f"{where}: {problem} never occurs in fold 'train', which gives the "
                                    f"label set{hint}; to train with the tags of all folds, set "
                                    f"data.labels={union}")
                raise DataError(f"{where}: {problem} is not in the label set {list(labels)}{hint}")
