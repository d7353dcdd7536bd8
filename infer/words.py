"""Raw text to CoNLL-style words with exact character offsets, and sentence-ish chunks.

:func:`split_words` finds words with one compiled regular expression over the
*original* string (nothing is normalised first), so ``text[start:end]`` is
always the word itself.  The rules approximate CoNLL-2003 tokenisation:

* whitespace (``str.isspace``: spaces, tabs, newlines, NBSP, ...) separates words;
* every punctuation or symbol character (Unicode categories ``P*``/``S*``:
  ``. , ; ( ) " $ % + < >``, emoji, ...) is a word of its own, except:

  - a hyphen or ``&`` between two word characters joins them
    (``Anglo-Dutch``, ``1996-08-22``, ``AT&T``);
  - ``. , :`` between two digits join them (``5.93``, ``1,750``, ``10:30``);
  - letter-period abbreviations stay whole (``U.S.``, ``e.g.``);
  - an apostrophe inside a word joins it (``O'Neil``, ``don't``) but the
    clitics ``'s 'S 'd 'm 're 've 'll`` (also with ``’``) are split off as
    their own word, as in CoNLL (``Germany 's``);

* control characters (``Cc``) are never part of a word; format characters
  (``Cf``: zero-width space/joiners, soft hyphen, BOM) and combining marks
  (``Mn``/``Me``) may sit *inside* a word (``Zwing\\u00admann``, a
  decomposed ``é``) but never start one, and ``Cf`` never ends one, so a
  stray zero-width character or variation selector is not a word.

A word is then handed to the model's tokenizer like any CoNLL token (which
lower-cases, strips accents and so on for the *pieces*; the offsets stay
those of the original text).

:func:`sentence_chunks` cuts the words of a long text at sentence-ish
boundaries and packs consecutive sentences into chunks of a bounded size
(used by :class:`infer.tagger.TextTagger` for texts longer than the model's window).

:mod:`infer.word_arrays` does the same for a whole buffer of texts at once (what
:mod:`infer.tagger` uses); the functions here are the reference it is tested against.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import lru_cache

import numpy as np


_CLASS_CATEGORIES = {"ps": ("Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So"),  # punctuation, symbols
                     "cc": ("Cc",), "cf": ("Cf",), "marks": ("Mn", "Me")}


@lru_cache(maxsize=1)
def class_masks() -> dict[str, np.ndarray]:
    """For each class of the word rules, whether each code point is in it (by its Unicode category)."""
    categories = "".join(map(unicodedata.category, map(chr, range(sys.maxunicode + 1))))
    pairs = np.frombuffer(categories.encode("ascii"), dtype=np.uint16)  # one 2-letter category per code point
    code = {c: np.frombuffer(c.encode("ascii"), dtype=np.uint16)[0] for cs in _CLASS_CATEGORIES.values() for c in cs}
    return {name: np.isin(pairs, [code[c] for c in cs]) for name, cs in _CLASS_CATEGORIES.items()}


def _ranges(mask: np.ndarray) -> str:
    """A regex character-class body for the code points where ``mask`` is true."""
    edges = np.flatnonzero(np.diff(mask, prepend=False, append=False))

    def esc(cp):
        return "\\U%08x" % cp

    return "".join(esc(a) if a == b - 1 else f"{esc(a)}-{esc(b - 1)}"
                   for a, b in zip(edges[0::2].tolist(), edges[1::2].tolist()))


@lru_cache(maxsize=1)
def _class_ranges() -> dict[str, str]:
    """Character-class bodies of the word rules: punctuation and symbols, control, format, combining marks."""
    return {name: _ranges(mask) for name, mask in class_masks().items()}


@lru_cache(maxsize=1)
def word_regex() -> re.Pattern:
    classes = _class_ranges()
    ps, cc, cf, marks = classes["ps"], classes["cc"], classes["cf"], classes["marks"]
    inner = rf"[^\s{ps}{cc}]"  # may appear inside a word
    start = rf"[^\s{ps}{cc}{cf}{marks}]"  # may start a word
    end = rf"[^\s{ps}{cc}{cf}]"  # may end a word
    core = rf"{start}(?:{inner}*{end})?"
    clitic = r"(?:[sSdDmM]|re|RE|ve|VE|ll|LL)"
    joiner = (rf"(?:[-\u2010&]|['\u2019](?!{clitic}(?!{inner}))|(?<=\d)[.,:](?=\d))")
    word = rf"{core}(?:{joiner}{core})*"
    abbreviation = r"(?:[^\W\d_]\.){2,}"
    clitic_word = rf"['\u2019]{clitic}(?!{inner})"
    single = rf"[{ps}]"
    return re.compile(rf"{abbreviation}|{clitic_word}|{word}|{single}")


def split_words(text: str) -> tuple[list[str], list[int], list[int]]:
    """``(words, starts, ends)`` with ``text[starts[i]:ends[i]] == words[i]`` (ends exclusive)."""
    words, starts, ends = [], [], []
    for m in word_regex().finditer(text):
        words.append(m.group())
        starts.append(m.start())
        ends.append(m.end())
    return words, starts, ends


# Words after which a "." does not end a sentence (lower-cased, without the period).
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st sr jr co corp inc ltd plc bros no nos vs jan feb mar apr jun jul aug sep sept oct "
    "nov dec gen gov sen rep rev mt ft pct approx dept est fig lt col capt sgt".split())
SENT_END = frozenset(".!?")
CLOSERS = frozenset("\"')]}\u2019\u201d")


def sentence_chunks(text: str, words: list[str], starts: list[int], ends: list[int], max_size: int,
                    sizes: list[int] | None = None) -> list[tuple[int, int]]:
    """Word ranges ``[(a, b), ...]`` covering all words in order, each of at most ``max_size``
    (words, or the sum of ``sizes[i]``, e.g. word pieces) where sentence boundaries allow.

    A text that fits is one chunk.  A longer text is cut at sentence-ish
    boundaries -- after ``. ! ?`` (and closing quotes or brackets) followed by
    a word starting with an upper-case letter, a digit or an opening quote,
    unless the period follows a single letter or a common abbreviation
    (``Mr``, ``Inc``, ``Jan``...), and at paragraph breaks (a newline followed
    by another newline or by indentation) -- and consecutive sentences are
    packed greedily into chunks of at most ``max_size``.  A single sentence
    longer than that stays whole (the encoder then splits it into overlapping
    windows).  ``max_size <= 0`` disables chunking.
    """
    n = len(words)
    if n == 0:
        return []
    if sizes is None:
        total = n
        offsets = None
    else:
        offsets = [0]
        for c in sizes:
            offsets.append(offsets[-1] + c)
        total = offsets[-1]
    if max_size <= 0 or total <= max_size:
        return [(0, n)]
    bounds = [0]
    for i in range(n - 1):
        gap = text[ends[i]:starts[i + 1]]
        if "\n" in gap and (gap.count("\n") > 1 or not gap.endswith("\n") and gap[gap.rindex("\n") + 1:].isspace()):
            bounds.append(i + 1)
            continue
        w = words[i]
        if w in CLOSERS and i > 0:
            j = i - 1
            while j > 0 and words[j] in CLOSERS:
                j -= 1
            w_end, before = words[j], (words[j - 1] if j > 0 else "")
        else:
            w_end, before = w, (words[i - 1] if i > 0 else "")
        if w_end not in SENT_END:
            continue
        if w_end == "." and (len(before) == 1 and before.isalpha() or before.lower() in ABBREVIATIONS):
            continue
        if not gap:  # "end.Next" without a space: not a boundary we trust
            continue
        c = words[i + 1][0]
        if c.isupper() or c.isdigit() or c in "\"'(\u201c\u2018[":
            bounds.append(i + 1)
    bounds.append(n)

    def size(a, b):
        return b - a if offsets is None else offsets[b] - offsets[a]

    chunks: list[tuple[int, int]] = []
    a = 0
    for s, e in zip(bounds, bounds[1:]):
        if size(a, e) > max_size and s > a:
            chunks.append((a, s))
            a = s
    chunks.append((a, n))
    return chunks


# ====================================================================== whole buffers at once (numpy)
# The functions below give the same words, casing classes and chunks as split_words, casing_class and
# sentence_chunks, for a whole buffer of texts at once: the texts are joined by newlines into one array of
# code points, every rule is evaluated for all characters in a few numpy passes over per-code-point tables,
# and the Python regular expression only sees the rare stretches where its finer rules decide (see
# word_spans: abbreviations, stray marks; one segment per 240 words of news text).

GAP, HARD, SOFT, FORMAT, MARK, LETTER = range(6)
"""Word-splitting class of a code point: whitespace or control (never in a word); punctuation or symbol that is
always a word of its own; one that may join words (``JOINERS``); format (Cf); combining mark (Mn/Me); any
other (word) character."""
