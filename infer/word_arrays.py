"""Raw text to CoNLL-style words for a whole buffer of texts at once, without a Python object per word.

What :mod:`infer.tagger` uses, with the rules of :mod:`infer.words`; the per-text functions of
``tests/reference_words.py`` are the reference these are tested against: :func:`split_texts` (words,
:class:`WordBuffer`), :func:`casing_classes` (``common.word_features.casing_class`` of every word),
:func:`sentence_bounds` and :func:`pack_chunks` (``sentence_chunks``).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from .words import (ABBREVIATIONS, CLOSERS, FORMAT, GAP, HARD, LETTER, MARK, SENT_END, SOFT, class_masks,
                    word_regex)


JOINERS = "-\u2010&'\u2019.,:"
IS_ALPHA, IS_LOWER, IS_UPPER, IS_DIGIT, IS_SPACE, IS_NEWLINE, IS_DECIMAL = 1, 2, 4, 8, 16, 32, 64
"""Flags of a code point: ``str.isalpha``, ``islower``, ``isupper``, ``isdigit``, ``isspace``, ``== "\\n"``, and
matched by the regular expressions' ``\\d``."""


@lru_cache(maxsize=1)
def char_tables() -> tuple[np.ndarray, np.ndarray]:
    """``(classes, flags)``: uint8 tables over all code points, from the same character classes as
    :func:`word_regex` and Python's own ``str`` predicates (built once per process, about half a second)."""
    masks = class_masks()
    everything = "".join(map(chr, range(sys.maxunicode + 1)))

    def passing(predicate) -> np.ndarray:
        return _code_points("".join(filter(predicate, everything)))

    cls = np.full(sys.maxunicode + 1, LETTER, dtype=np.uint8)
    cls[masks["marks"]] = MARK
    cls[masks["cf"]] = FORMAT
    cls[masks["ps"]] = HARD
    joiners = _code_points(JOINERS)
    assert (cls[joiners] == HARD).all(), "every joiner is a punctuation character"
    cls[joiners] = SOFT
    cls[masks["cc"]] = GAP
    cls[[m.start() for m in re.finditer(r"\s", everything)]] = GAP
    flags = np.zeros(sys.maxunicode + 1, dtype=np.uint8)
    for flag, predicate in ((IS_ALPHA, str.isalpha), (IS_LOWER, str.islower), (IS_UPPER, str.isupper),
                            (IS_DIGIT, str.isdigit), (IS_SPACE, str.isspace)):
        flags[passing(predicate)] |= flag
    flags[ord("\n")] |= IS_NEWLINE
    flags[[m.start() for m in re.finditer(r"\d", everything)]] |= IS_DECIMAL
    return cls, flags


def _code_points(text: str) -> np.ndarray:
    """The code points of ``text`` (lone surrogates included) as uint32."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def ranges_index(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``concatenate([arange(a, b) for a, b in zip(starts, ends)])`` without the loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=first[1:])
    return np.arange(total, dtype=np.int64) + np.repeat(starts - first, lengths)


def word_spans(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)`` of the words of ``codes`` (code points) in order, by the rules of :mod:`infer.words`.

    The text falls into *segments*, maximal runs of characters that may belong to a word of more than one
    character (everything but whitespace, control characters and the punctuation and symbols that are
    always a word of their own; those are words of one character, or no word).  No rule looks across a
    segment's edge, so segments are independent, and each is settled at once:

    * a letter ... letter-or-mark run, possibly followed by joiners (``said``, ``lamb.``, ``Inc.,``): one word,
      and one word per trailing joiner; a segment of joiners only: one word per character;
    * letter runs joined by single joiners that join (``1,750.50``, ``Anglo-Dutch``, ``O'Neil``), possibly
      with a clitic split off at the end (``Germany's``): see :func:`_joined_segments`;
    * any other segment (``U.S.``, ``e.g.``, ``x.y``, stray format characters or marks at its edges) is
      matched by :func:`word_regex` itself, all such segments of the buffer in one pass.
    """
    n = len(codes)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    cls_table, _ = char_tables()
    cls = cls_table[codes]
    edges = np.flatnonzero(np.diff(cls >= SOFT, prepend=False, append=False))
    seg_start, seg_end = edges[0::2], edges[1::2]
    soft = cls == SOFT
    soft_before = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(soft, out=soft_before[1:])
    n_soft = soft_before[seg_end] - soft_before[seg_start]
    core_end = seg_end - n_soft
    last_core = cls[np.maximum(core_end - 1, seg_start)]
    simple = ((cls[seg_start] == LETTER) & (soft_before[seg_end] - soft_before[core_end] == n_soft)
              & ((last_core == LETTER) | (last_core == MARK)))
    all_soft = n_soft == seg_end - seg_start
    hard = ~(simple | all_soft)

    is_start = np.zeros(n + 1, dtype=bool)
    length = np.zeros(n, dtype=np.int64)
    single = soft | (cls == HARD)
    if hard.any():
        h_start, h_end = seg_start[hard], seg_end[hard]
        single[ranges_index(h_start, h_end)] = False
        joined, split, j_end = _joined_segments(codes, cls, h_start, h_end)
        # joined words (``1,750``, ``Anglo-Dutch``, ``O'Neil``; ``Germany`` + ``'s``), then joiners of their tail
        first_end = np.where(split >= 0, split, j_end)
        words = h_start[joined]
        is_start[words] = True
        length[words] = first_end[joined] - words
        clitics = split[joined & (split >= 0)]
        is_start[clitics] = True
        length[clitics] = j_end[joined & (split >= 0)] - clitics
        single[ranges_index(j_end[joined], h_end[joined])] = True
        h_start, h_end = h_start[~joined], h_end[~joined]
    if hard.any() and len(h_start):
        # the other segments, one space after each, matched by the regular expression in one pass
        inside = ranges_index(h_start, h_end)
        h_len = h_end - h_start
        h_first = np.zeros(len(h_len), dtype=np.int64)
        np.cumsum(h_len[:-1] + 1, out=h_first[1:])
        text = np.full(int(h_len.sum() + len(h_len)), ord(" "), dtype=np.uint32)
        text[ranges_index(h_first, h_first + h_len)] = codes[inside]
        spans = np.array([m.span() for m in word_regex().finditer(text.tobytes().decode("utf-32-le",
                                                                                          "surrogatepass"))],
                         dtype=np.int64).reshape(-1, 2)
        seg = np.searchsorted(h_first, spans[:, 0], side="right") - 1
        starts = h_start[seg] + spans[:, 0] - h_first[seg]
        is_start[starts] = True
        length[starts] = spans[:, 1] - spans[:, 0]
    singles = np.flatnonzero(single)
    is_start[singles] = True
    length[singles] = 1
    words = seg_start[simple]
    is_start[words] = True
    length[words] = core_end[simple] - words
    starts = np.flatnonzero(is_start[:n])
    return starts, starts + length[starts]


_CLITIC_1 = "sSdDmM"
_CLITIC_2 = ("re", "RE", "ve", "VE", "ll", "LL")


def _joined_segments(codes: np.ndarray, cls: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """Which segments (``codes[starts[i]:ends[i]]``) are letter runs joined by single joiners that do join,
    followed by any joiners: ``1,750.50``, ``Anglo-Dutch``, ``AT&T``, ``O'Neil``, ``don't``, ``Inc.,``; also
    with a final clitic split off (``Germany's``).  Returns ``(joined, split, core_end)``: the mask, where the
    clitic starts (-1: none) and where the trailing joiners start.

    The rules of :func:`word_regex` for such a segment: a word starts at its first letter (no abbreviation: that
    needs a period after a letter, which does not join); ``- ‐ &`` join; ``. , :`` join between two ``\\d``; an
    apostrophe joins unless the letters after it are exactly a clitic (``s d m re ve ll``, either case), which
    is then a word of its own; joiners with no letter after them are words of their own.
    """
    _, flag_table = char_tables()
    n_seg = len(starts)
    lengths = ends - starts
    inside = ranges_index(starts, ends)
    m = len(inside)
    first = np.zeros(n_seg, dtype=np.int64)  # the segments' first characters in ``inside``
    np.cumsum(lengths[:-1], out=first[1:])
    c = cls[inside]
    ch = codes[inside]
    soft = c == SOFT
    last_letter = np.maximum.accumulate(np.where(soft, -1, np.arange(m)))
    core_end = last_letter[first + lengths - 1] + 1  # after the last character that is no joiner
    seg = np.repeat(np.arange(n_seg), lengths)
    in_core = np.arange(m) < np.repeat(core_end, lengths)
    bad = np.bincount(seg[in_core & (c != LETTER) & ~soft], minlength=n_seg)  # format characters, marks
    j = np.flatnonzero(in_core & soft)  # joiners between letters (the first character is checked below)
    if len(j):
        nxt = np.minimum(j + 1, m - 1)

        def boundary(k):  # the letters after joiner j end before k
            return (k >= core_end[seg[j]]) | soft[np.minimum(k, m - 1)]

        dec = (flag_table[ch] & IS_DECIMAL) != 0
        is_dot = np.isin(ch[j], _code_points(".,:"))
        is_apostrophe = np.isin(ch[j], _code_points("'\u2019"))
        c1, c2 = ch[nxt].astype(np.int64), ch[np.minimum(j + 2, m - 1)].astype(np.int64)
        clitic1 = boundary(j + 2) & np.isin(c1, _code_points(_CLITIC_1))
        pairs = [ord(a) * 0x110000 + ord(b) for a, b in _CLITIC_2]
        clitic2 = ~boundary(j + 2) & boundary(j + 3) & np.isin(c1 * 0x110000 + c2, pairs)
        clitic = is_apostrophe & (clitic1 | clitic2)
        last_part = np.where(clitic1, j + 2, j + 3) == core_end[seg[j]]
        violation = (soft[nxt] | (is_dot & ~(dec[np.maximum(j - 1, 0)] & dec[nxt])) | (clitic & ~last_part)
                     | (j == first[seg[j]]))
        bad += np.bincount(seg[j[violation]], minlength=n_seg)
    joined = (bad == 0) & (cls[starts] == LETTER)
    split = np.full(n_seg, -1, dtype=np.int64)
    if len(j):
        at_clitic = j[clitic & last_part]
        split[seg[at_clitic]] = starts[seg[at_clitic]] + at_clitic - first[seg[at_clitic]]
    return joined, split, starts + core_end - first


@dataclass
class WordBuffer:
    """The words of a buffer of texts as flat arrays over the texts joined by newlines (``None`` = ``""``).

    Row ``r`` is ``codes[text_start[r]:text_start[r + 1] - 1]``; its words are ``row_first_word[r]`` to
    ``row_first_word[r + 1]``; word offsets within their own text are ``word_start - text_start[row]``.
    """

    codes: np.ndarray  # uint32 [chars]
    text_start: np.ndarray  # int64 [rows + 1]
    word_start: np.ndarray  # int64 [words]
    word_end: np.ndarray  # int64 [words]
    row_first_word: np.ndarray  # int64 [rows + 1]

    @property
    def num_rows(self) -> int:
        return len(self.text_start) - 1

    @property
    def num_words(self) -> int:
        return len(self.word_start)

    def word_row(self) -> np.ndarray:
        """The row of every word."""
        return np.repeat(np.arange(self.num_rows, dtype=np.int64), np.diff(self.row_first_word))

    def word(self, w: int) -> str:
        return self.codes[self.word_start[w]:self.word_end[w]].tobytes().decode("utf-32-le", "surrogatepass")


def split_texts(texts: Sequence[str | None]) -> WordBuffer:
    """The words of every text (by the rules of :mod:`infer.words`), for a whole buffer at once."""
    texts = [t or "" for t in texts]
    text_start = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1, out=text_start[1:])
    codes = _code_points("\n".join(texts))
    starts, ends = word_spans(codes)
    return WordBuffer(codes, text_start, starts, ends, np.searchsorted(starts, text_start))


def casing_classes(buf: WordBuffer) -> np.ndarray:
    """``common.word_features.casing_class`` of every word (uint8), from per-character counts."""
    from common.word_features import CASE_DIGITS, CASE_LOWER, CASE_MIXED, CASE_OTHER, CASE_TITLE, CASE_UPPER

    _, flag_table = char_tables()
    ws, we = buf.word_start, buf.word_end
    if not len(ws):
        return np.zeros(0, dtype=np.uint8)
    flags = flag_table[buf.codes]
    alpha = (flags & IS_ALPHA) != 0

    def per_word(mask: np.ndarray) -> np.ndarray:
        before = np.zeros(len(mask) + 1, dtype=np.int64)
        np.cumsum(mask, out=before[1:])
        return before[we] - before[ws]

    letters = per_word(alpha)
    lower = per_word(alpha & ((flags & IS_LOWER) != 0))
    upper = per_word(alpha & ((flags & IS_UPPER) != 0))
    digits = per_word((flags & IS_DIGIT) != 0)
    # the first letter: usually the word's first character
    first = ws.copy()
    late = np.flatnonzero(~alpha[ws] & (letters > 0))
    if len(late):
        first[late] = np.flatnonzero(alpha)[np.searchsorted(np.flatnonzero(alpha), ws[late])]
    first_upper = (flags[first] & IS_UPPER) != 0
    out = np.full(len(ws), CASE_MIXED, dtype=np.uint8)
    out[first_upper & (lower == letters - 1)] = CASE_TITLE
    out[upper == letters] = np.where(letters[upper == letters] == 1, CASE_TITLE, CASE_UPPER)
    out[lower == letters] = CASE_LOWER
    out[letters == 0] = np.where(digits[letters == 0] > 0, CASE_DIGITS, CASE_OTHER)
    return out


_ABBREVIATION_KEYS = None


def _short_word_keys(buf: WordBuffer, words: np.ndarray, max_len: int = 6) -> np.ndarray:
    """A number per word that equals that of ``w.lower()`` for ASCII words of at most ``max_len`` characters
    (-1 for the others: no such word lower-cases to an ASCII abbreviation; only the Kelvin sign lower-cases
    to ASCII, and no abbreviation has a k)."""
    ws, we = buf.word_start[words], buf.word_end[words]
    n = we - ws
    keys = np.full(len(words), -1, dtype=np.int64)
    ok = n <= max_len
    if not ok.any():
        return keys
    idx = ws[ok, None] + np.arange(max_len)[None, :]
    valid = np.arange(max_len)[None, :] < n[ok, None]
    chars = np.where(valid, buf.codes[np.minimum(idx, len(buf.codes) - 1)], 0).astype(np.int64)
    ascii_ = (chars < 128).all(1)
    chars = np.where((chars >= 65) & (chars <= 90), chars + 32, chars)
    k = (chars * (128 ** np.arange(max_len, dtype=np.int64))[None, :]).sum(1)
    keys[np.flatnonzero(ok)[ascii_]] = k[ascii_]
    return keys


def _abbreviation_keys() -> np.ndarray:
    global _ABBREVIATION_KEYS
    if _ABBREVIATION_KEYS is None:
        buf = split_texts([" ".join(sorted(ABBREVIATIONS))])
        _ABBREVIATION_KEYS = np.sort(_short_word_keys(buf, np.arange(buf.num_words)))
    return _ABBREVIATION_KEYS


def sentence_bounds(buf: WordBuffer) -> np.ndarray:
    """For every word, whether the sentence rules of :mod:`infer.words` may cut before it (never before a row's
    first word)."""
    nw = buf.num_words
    bound = np.zeros(nw, dtype=bool)
    if nw < 2:
        return bound
    _, flag_table = char_tables()
    codes, ws, we = buf.codes, buf.word_start, buf.word_end
    flags = flag_table[codes]
    row_first = np.repeat(buf.row_first_word[:-1], np.diff(buf.row_first_word))  # first word of each word's row
    i = np.flatnonzero(row_first[1:] == row_first[:-1])  # words followed by a word of the same row
    gap_start, gap_end = we[i], ws[i + 1]
    newline_before = np.zeros(len(codes) + 1, dtype=np.int64)
    np.cumsum((flags & IS_NEWLINE) != 0, out=newline_before[1:])
    newlines = newline_before[gap_end] - newline_before[gap_start]
    para = newlines > 1
    one = np.flatnonzero(newlines == 1)
    if len(one):
        nl = np.flatnonzero((flags & IS_NEWLINE) != 0)
        pos = nl[np.searchsorted(nl, gap_start[one])]
        nonspace_before = np.zeros(len(codes) + 1, dtype=np.int64)
        np.cumsum((flags & IS_SPACE) == 0, out=nonspace_before[1:])
        rest = (pos + 1 < gap_end[one]) & (nonspace_before[gap_end[one]] - nonspace_before[pos + 1] == 0)
        para[one] = rest
    # single-character words: closers and sentence ends
    single_char = np.where(we - ws == 1, codes[ws], 0)
    closer = np.isin(single_char, _code_points("".join(sorted(CLOSERS))))
    # j: the word before the closers that end at word i (i itself when it is no closer)
    not_closer_at = np.where(~closer, np.arange(nw), -1)
    last_not_closer = np.maximum.accumulate(not_closer_at)
    own_first = row_first[i]
    prev = np.maximum(last_not_closer[np.maximum(i - 1, 0)], own_first)
    j = np.where(closer[i] & (i > own_first), prev, i)
    w_end = single_char[j]
    ends = np.isin(w_end, _code_points("".join(sorted(SENT_END))))
    cand = np.flatnonzero(ends & ~para & (gap_end > gap_start))
    if len(cand):
        nxt = codes[ws[i[cand] + 1]]
        nflags = flags[ws[i[cand] + 1]]
        ok = ((nflags & (IS_UPPER | IS_DIGIT)) != 0) | np.isin(nxt, _code_points("\"'(\u201c\u2018["))
        period = ok & (w_end[cand] == ord("."))
        if period.any():
            pc = cand[period]
            jb = j[pc]
            has_before = jb > own_first[pc]
            before = np.maximum(jb - 1, 0)
            one_letter = has_before & (we[before] - ws[before] == 1) & ((flags[ws[before]] & IS_ALPHA) != 0)
            keys = np.where(has_before, _short_word_keys(buf, before), -1)
            abbrev = np.isin(keys, _abbreviation_keys())
            ok[np.flatnonzero(period)[one_letter | abbrev]] = False
        cand = cand[ok]
    bound[i[para] + 1] = True
    bound[i[cand] + 1] = True
    return bound


def pack_chunks(bound: np.ndarray, sizes: np.ndarray, first: int, end: int, max_size: int) -> list[int]:
    """The chunk starts of words ``first:end`` (one row) by the greedy packing of ``sentence_chunks`` of its
    sentences (cut before words where ``bound``) into chunks of at most ``max_size`` (sum of ``sizes``)."""
    n = end - first
    total = int(sizes[first:end].sum())
    if n == 0:
        return []
    if max_size <= 0 or total <= max_size:
        return [first]
    bounds = np.concatenate(([first], first + 1 + np.flatnonzero(bound[first + 1:end]), [end]))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes[first:end], out=offsets[1:])
    at = offsets[bounds - first]  # cumulative size at every bound
    starts = [first]
    k = 0  # index of the current chunk's first bound
    last = len(bounds) - 1
    while True:
        # the first bound e > a whose chunk (a, e) is too big; cut at the bound before it, or at e itself when
        # that is the next bound (a single sentence larger than max_size stays whole)
        e = int(np.searchsorted(at, at[k] + max_size, side="right"))
        if e > last:
            return starts
        k = max(e - 1, k + 1)
        if k >= last:
            return starts
        starts.append(int(bounds[k]))
