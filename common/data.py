"""Reading labelled NER data: the user's JSON and CoNLL column files.

Everything is converted to IOB2 on load.  Bad input raises :class:`DataError`
with the file, fold, sentence index and problem; ill-formed IOB2 (an ``I-X``
that follows ``O`` or another type) is repaired the way conlleval reads it
(the ``I-X`` opens a new entity) and counted, with one warning per fold.
Files may start with a UTF-8 byte order mark.  After loading, the caller checks
that every fold's tags are in the model's label set with
:func:`check_fold_labels`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence

log = logging.getLogger(__name__)

FOLDS = ("train", "valid", "test")
SCHEMES = ("auto", "IOB1", "IOB2", "BIOES")
OUTSIDE = "O"


class DataError(ValueError):
    """Input data that cannot be used as it is; the message says where and why."""


def normalise_scheme(value: str) -> str:
    """The canonical spelling (one of :data:`SCHEMES`) of a tagging scheme name given in any case.

    ``normalise_scheme("iob2") == "IOB2"``; an unknown value raises :class:`DataError`
    listing the allowed ones.
    """
    if isinstance(value, str):
        for scheme in SCHEMES:
            if value.lower() == scheme.lower():
                return scheme
    raise DataError(f"unknown tagging scheme {value!r}: expected one of {', '.join(SCHEMES)} (any case)")


def _checked_scheme(value: str, path: str) -> str:
    try:
        return normalise_scheme(value)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None


@dataclass
class Sentence:
    """One word-tokenized sentence.

    ``doc`` groups sentences of one document (``None`` when the input has no
    document marks); ``index`` is the sentence's position in its fold.
    """

    tokens: list[str]
    tags: list[str] | None = None
    doc: int | None = None
    index: int = 0
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)


def split_tag(tag: str) -> tuple[str, str | None]:
    """``'B-PER' -> ('B', 'PER')``, ``'O' -> ('O', None)``."""
    if tag == OUTSIDE:
        return OUTSIDE, None
    prefix, sep, etype = tag.partition("-")
    if not sep or prefix not in ("B", "I", "E", "S") or not etype:
        raise ValueError(f"not an IOB/BIOES tag: {tag!r}")
    return prefix, etype


def tag_type(tag) -> str | None:
    """The entity type of a tag; ``None`` for ``O`` and for anything that is not a tag."""
    if not isinstance(tag, str):
        return None
    try:
        return split_tag(tag)[1]
    except ValueError:
        return None


def detect_scheme(tag_sequences: Iterable[Sequence[str]]) -> str:
    """Guess the tagging scheme of a fold.

    BIOES if any ``E-``/``S-`` prefix occurs; IOB1 if some entity starts with
    ``I-`` after ``O``/another type and no ``B-`` ever starts an entity after
    ``O`` (IOB1 only uses ``B-`` between two adjacent entities of one type);
    IOB2 otherwise.
    """
    saw_i_start = False
    saw_b_after_outside = False
    for tags in tag_sequences:
        prev_type = None
        for tag in tags:
            prefix, etype = split_tag(tag)
            if prefix in ("E", "S"):
                return "BIOES"
            if prefix == "I" and etype != prev_type:
                saw_i_start = True
            if prefix == "B" and prev_type is None:
                saw_b_after_outside = True
            prev_type = etype
    if saw_i_start and not saw_b_after_outside:
        return "IOB1"
    return "IOB2"


def to_iob2(tags: Sequence[str], scheme: str) -> tuple[list[str], int]:
    """Convert one sentence's tags to IOB2.

    Returns the new tags and how many ill-formed ``I-`` tags had to be read as
    entity starts (only counted for IOB2 input, where they are errors; in IOB1
    such an ``I-`` is the normal way to open an entity).
    """
    out: list[str] = []
    repaired = 0
    prev_type: str | None = None
    prev_prefix = OUTSIDE
    for tag in tags:
        prefix, etype = split_tag(tag)
        if prefix == OUTSIDE:
            out.append(OUTSIDE)
        elif scheme == "BIOES":
            if prefix in ("B", "S"):
                out.append(f"B-{etype}")
            else:  # I or E continue an entity of the same type that is still open
                if etype != prev_type or prev_prefix in ("E", "S", OUTSIDE):
                    repaired += 1
                    out.append(f"B-{etype}")
                else:
                    out.append(f"I-{etype}")
        else:  # IOB1 / IOB2
            if prefix == "B":
                out.append(f"B-{etype}")
            elif prefix in ("E", "S"):
                raise ValueError(f"tag {tag!r} is not valid in {scheme}")
            elif etype != prev_type:
                if scheme == "IOB2":
                    repaired += 1
                out.append(f"B-{etype}")
            else:
                out.append(f"I-{etype}")
        prev_type = etype
        prev_prefix = prefix
    return out, repaired


def _check_sentence(tokens, tags, where: str) -> None:
    if not isinstance(tokens, list):
        raise DataError(f"{where}: 'tokens' must be a list, got {type(tokens).__name__}")
    if len(tokens) == 0:
        raise DataError(f"{where}: empty sentence (no tokens)")
    for i, tok in enumerate(tokens):
        if not isinstance(tok, str):
            raise DataError(f"{where}: token {i} is {type(tok).__name__} {tok!r}, expected a string")
    if tags is not None:
        if not isinstance(tags, list):
            raise DataError(f"{where}: 'tags' must be a list, got {type(tags).__name__}")
        if len(tags) != len(tokens):
            raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags")
        for i, tag in enumerate(tags):
            if not isinstance(tag, str):
                raise DataError(f"{where}: tag {i} is {type(tag).__name__} {tag!r}, expected a string")
            try:
                split_tag(tag)
            except ValueError:
                raise DataError(
                    f"{where}: unknown tag {tag!r} at token {i} ({tokens[i]!r}); "
                    "expected O or B-/I-/E-/S- followed by a type"
                ) from None


def _normalise_fold(sentences: list[Sentence], path: str, fold: str, scheme: str,
                    labels: Sequence[str] | None) -> list[Sentence]:
    """Convert a fold's tags to IOB2, repairing and counting ill-formed ``I-``."""
    tagged = [s for s in sentences if s.tags is not None]
    fold_scheme = detect_scheme(s.tags for s in tagged) if scheme == "auto" else scheme
    repaired_total = 0
    allowed_types = None
    if labels is not None:
        for label in labels:
            if tag_type(label) is None and label != OUTSIDE:
                raise DataError(f"{path}: the given label set {list(labels)} has {label!r}, which is not "
                                "a tag (O or B-/I-/E-/S- followed by a type)")
        allowed_types = {split_tag(t)[1] for t in labels} - {None}
    for s in tagged:
        where = f"{path}: fold {fold!r}, sentence {s.index}"
        try:
            s.tags, repaired = to_iob2(s.tags, fold_scheme)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        repaired_total += repaired
        if allowed_types is not None:
            for i, tag in enumerate(s.tags):
                etype = split_tag(tag)[1]
                if etype is not None and etype not in allowed_types:
                    raise DataError(
                        f"{where}: unknown tag {tag!r} at token {i}; the label set is {list(labels)}")
    if repaired_total:
        log.warning("%s: fold %r: %d ill-formed I- tags (after O or another type) read as entity "
                    "starts, as conlleval does", path, fold, repaired_total)
    return sentences


def read_json(path: str, folds: Sequence[str] = FOLDS, scheme: str = "auto",
              labels: Sequence[str] | None = None, require_tags: bool = True) -> dict[str, list[Sentence]]:
    """Read ``{"train"|"valid"|"test": [{"tokens": [...], "tags": [...], ...}]}``.

    Extra fields are kept in ``Sentence.extra`` (``doc`` goes to ``Sentence.doc``).
    A sentence without ``doc`` inherits none; sentences stay in file order.
    A fold may be empty here (:func:`load_folds` refuses that).
    """
    scheme = _checked_scheme(scheme, path)
    try:
        with open(path, encoding="utf-8-sig") as f:   # -sig: a leading byte order mark is skipped
            obj = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read file: {e}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object with folds {list(folds)}, got {type(obj).__name__}")
    out: dict[str, list[Sentence]] = {}
    for fold in folds:
        if fold not in obj:
            raise DataError(f"{path}: missing fold {fold!r} (found {sorted(obj)})")
        records = obj[fold]
        if not isinstance(records, list):
            raise DataError(f"{path}: fold {fold!r} must be a list of sentences")
        sentences = []
        for i, rec in enumerate(records):
            where = f"{path}: fold {fold!r}, sentence {i}"
            if not isinstance(rec, dict) or "tokens" not in rec:
                raise DataError(f"{where}: expected an object with 'tokens' (and 'tags')")
            tags = rec.get("tags")
            if tags is None and require_tags:
                raise DataError(f"{where}: no 'tags'")
            _check_sentence(rec["tokens"], tags, where)
            doc = rec.get("doc")
            extra = {k: v for k, v in rec.items() if k not in ("tokens", "tags", "doc")}
            sentences.append(Sentence(list(rec["tokens"]), list(tags) if tags is not None else None,
                                      doc if isinstance(doc, int) else None, i, extra))
        out[fold] = _normalise_fold(sentences, path, fold, scheme, labels)
    return out


def read_conll(path: str, fold: str = "data", scheme: str = "auto", labels: Sequence[str] | None = None,
               require_tags: bool = True) -> list[Sentence]:
    """Read a CoNLL column file: token first, tag last, blank line between sentences.

    ``-DOCSTART-`` lines start a new document (``Sentence.doc`` counts them);
    without any, ``doc`` stays ``None``.  A file without sentences is refused.
    """
    scheme = _checked_scheme(scheme, path)
    try:
        with open(path, encoding="utf-8-sig") as f:   # -sig: a leading byte order mark is skipped
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read file: {e}") from None
    sentences: list[Sentence] = []
    doc: int | None = None
    tokens: list[str] = []
    tags: list[str] = []
    extra_cols: list[list[str]] = []
    start_line = 0

    def flush():
        nonlocal tokens, tags, extra_cols
        if tokens:
            where = f"{path}: fold {fold!r}, sentence {len(sentences)} (line {start_line})"
            _check_sentence(tokens, tags if require_tags else None, where)
            sentences.append(Sentence(tokens, tags if require_tags else None, doc, len(sentences),
                                      {"columns": extra_cols} if any(extra_cols) else {}))
        tokens, tags, extra_cols = [], [], []

    for lineno, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped:
            flush()
            continue
        cols = stripped.split()
        if cols[0] == "-DOCSTART-":
            flush()
            doc = 0 if doc is None else doc + 1
            continue
        if not tokens:
            start_line = lineno
        if require_tags and len(cols) < 2:
            raise DataError(f"{path}: line {lineno}: expected 'token ... tag', got {line!r}")
        tokens.append(cols[0])
        if require_tags:
            tags.append(cols[-1])
            extra_cols.append(cols[1:-1])
    flush()
    if not sentences:
        raise DataError(f"{path}: fold {fold!r} has no sentences")
    return _normalise_fold(sentences, path, fold, scheme, labels)


def load_folds(path: str, folds: Sequence[str] = FOLDS, scheme: str = "auto",
               labels: Sequence[str] | None = None) -> dict[str, list[Sentence]]:
    """Load labelled folds from a JSON file or a folder of CoNLL files.

    A folder must hold ``{fold}.txt`` (or ``.conll``/``.iob``) per fold.  Every requested fold must
    have sentences; ``scheme`` is one of :data:`SCHEMES` in any case.
    """
    scheme = _checked_scheme(scheme, path)
    if not os.path.exists(path):
        raise DataError(
            f"{path}: data not found. Pass the path of your CoNLL-style JSON "
            "({'train'|'valid'|'test': [{'tokens': [...], 'tags': [...]}]}) or a folder of CoNLL files "
            "train.txt/valid.txt/test.txt")
    if os.path.isdir(path):
        out = {}
        for fold in folds:
            for ext in (".txt", ".conll", ".iob"):
                candidate = os.path.join(path, fold + ext)
                if os.path.exists(candidate):
                    out[fold] = read_conll(candidate, fold, scheme, labels)
                    break
            else:
                raise DataError(f"{path}: missing fold {fold!r} (no {fold}.txt/.conll/.iob)")
        return out
    if path.endswith((".txt", ".conll", ".iob")):
        if len(folds) != 1:
            raise DataError(f"{path}: a single CoNLL file holds one fold; pass a folder for {list(folds)}")
        return {folds[0]: read_conll(path, folds[0], scheme, labels)}
    out = read_json(path, folds, scheme, labels)
    empty = [fold for fold in folds if not out[fold]]
    if empty:
        raise DataError(f"{path}: fold {empty[0]!r} has no sentences" if len(empty) == 1 else
                        f"{path}: folds {', '.join(map(repr, empty))} have no sentences")
    return out


def sentences_alone(sentences: list[Sentence]) -> list[Sentence]:
    """Copies without document marks: each sentence is its own window, with no packing and no context (how
    ``ner-tag`` meets a corpus of one sentence a row)."""
    return [dataclasses.replace(s, doc=None) for s in sentences]


def some_alone(sentences: list[Sentence], fraction: float, seed: int) -> list[Sentence]:
    """Copies in which a share ``fraction`` of the sentences, drawn once by ``seed``, lose their document mark
    (so they become windows of their own: no packing, no context); the others are the originals."""
    if fraction <= 0:
        return list(sentences)
    draw = random.Random(seed)
    return [dataclasses.replace(s, doc=None) if draw.random() < fraction else s for s in sentences]


def assign_documents(sentences: list[Sentence]) -> list[Sentence]:
    """Give every sentence a document number for context windows.

    Sentences with ``doc`` keep it; a fold without any document marks is read
    as one document in file order (the user's JSON may only keep order).
    """
    if all(s.doc is None for s in sentences):
        for s in sentences:
            s.doc = 0
    else:
        last = 0
        for s in sentences:
            if s.doc is None:
                s.doc = last
            last = s.doc
    return sentences
