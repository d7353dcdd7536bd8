"""What a word-piece model is given beside the pieces, per word: its casing class (the default encoder is
uncased) and its characters.  The windower (training, the report) and the batch tagger's host encoder both read
them from here, so training and tagging see the same ids."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Casing classes of a word, computed from the original text (the default encoder is uncased).
CASING_CLASSES = ("pad", "lower", "title", "upper", "mixed", "digits", "other")
CASE_PAD, CASE_LOWER, CASE_TITLE, CASE_UPPER, CASE_MIXED, CASE_DIGITS, CASE_OTHER = range(7)


# Character features: the first MAX_WORD_CHARS characters of a word, each as an id of a table of CHAR_VOCAB
# rows (0 = no character): code points 1-255 keep their own row, all others share rows 256-511 by code point.
MAX_WORD_CHARS = 20
CHAR_VOCAB = 512


def char_rows(codes: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """int16 [words, MAX_WORD_CHARS]: the character ids of the words ``codes[starts[i]:ends[i]]`` (code points),
    cut after MAX_WORD_CHARS characters, 0 after a word's end.  The windower and the batch tagger both call it,
    so training and tagging see the same ids."""
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    at = starts[:, None] + np.arange(MAX_WORD_CHARS)[None, :]
    inside = at < ends[:, None]
    c = codes[np.where(inside, at, 0)].astype(np.int64) if len(codes) else np.zeros(at.shape, dtype=np.int64)
    ids = np.where((c > 0) & (c < 256), c, 256 + c % 256)
    return np.where(inside, ids, 0).astype(np.int16)


def word_char_rows(words: Sequence[str]) -> np.ndarray:
    """:func:`char_rows` of a list of words (Python strings)."""
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    ends = np.cumsum(lengths)
    codes = np.frombuffer("".join(words).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return char_rows(codes, ends - lengths, ends)


def casing_class(word: str) -> int:
    """The casing class of a word: all-lower / Title / ALL-CAPS / mixed / digits / other."""
    letters = [c for c in word if c.isalpha()]
    if not letters:
        return CASE_DIGITS if any(c.isdigit() for c in word) else CASE_OTHER
    if all(c.islower() for c in letters):
        return CASE_LOWER
    if all(c.isupper() for c in letters):
        # a one-letter capital ("I", "A") reads as Title, not shouting
        return CASE_TITLE if len(letters) == 1 else CASE_UPPER
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return CASE_TITLE
    return CASE_MIXED
