"""The rules that turn raw text into CoNLL-style words with exact character offsets, and sentence-ish chunks.

:mod:`infer.word_arrays` applies them to a whole buffer of texts at once (what :mod:`infer.tagger` uses); the
per-text reference it is tested against is in ``tests/reference_words.py``.

Words are found by one compiled regular expression (:func:`word_regex`) over the *original* string (nothing
is normalised first), so ``text[start:end]`` is always the word itself.  The rules approximate CoNLL-2003
tokenisation:

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

A text longer than the model's window is cut at sentence-ish boundaries -- after ``. ! ?`` (and closing
quotes or brackets, :data:`CLOSERS`) followed by a word starting with an upper-case letter, a digit or an
opening quote, unless the period follows a single letter or one of :data:`ABBREVIATIONS`, and at paragraph
breaks -- and consecutive sentences are packed into chunks of a bounded size.
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


# Words after which a "." does not end a sentence (lower-cased, without the period).
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st sr jr co corp inc ltd plc bros no nos vs jan feb mar apr jun jul aug sep sept oct "
    "nov dec gen gov sen rep rev mt ft pct approx dept est fig lt col capt sgt".split())
SENT_END = frozenset(".!?")
CLOSERS = frozenset("\"')]}\u2019\u201d")


# ====================================================================== whole buffers at once (numpy)
# infer.word_arrays gives the same words, casing classes and chunks as the per-text reference
# (tests/reference_words.py) and common.word_features.casing_class, for a whole buffer of texts at once: the texts
# are joined by newlines into one array of code points, every rule is evaluated for all characters in a few numpy passes over per-code-point tables,
# and the Python regular expression only sees the rare stretches where its finer rules decide (see
# word_spans: abbreviations, stray marks; one segment per 240 words of news text).

GAP, HARD, SOFT, FORMAT, MARK, LETTER = range(6)
"""Word-splitting class of a code point: whitespace or control (never in a word); punctuation or symbol that is
always a word of its own; one that may join words (``JOINERS``); format (Cf); combining mark (Mn/Me); any
other (word) character."""
