"""The per-text word splitter and sentence chunker: the reference :mod:`infer.word_arrays` is tested against.

The rules are those of :mod:`infer.words` (one regular expression over the original text; sentence-ish
boundaries); ``split_words`` and ``sentence_chunks`` apply them to one text at a time, the way a reader would.
"""

from __future__ import annotations

from infer.words import ABBREVIATIONS, CLOSERS, SENT_END, word_regex


def split_words(text: str) -> tuple[list[str], list[int], list[int]]:
    """``(words, starts, ends)`` with ``text[starts[i]:ends[i]] == words[i]`` (ends exclusive)."""
    words, starts, ends = [], [], []
    for m in word_regex().finditer(text):
        words.append(m.group())
        starts.append(m.start())
        ends.append(m.end())
    return words, starts, ends


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
