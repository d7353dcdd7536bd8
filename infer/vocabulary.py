"""Word pieces for a buffer of words, each distinct word encoded once: which tokenizers can encode words joined by
spaces (:func:`joined_words_tokenizer`), and the per-process vocabulary of words already encoded."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .word_arrays import JOINERS, ranges_index


def joined_words_tokenizer(tokenizer):
    """A copy of ``tokenizer``'s Rust tokenizer (no truncation, no padding) when encoding words joined by
    single spaces gives every word exactly the pieces that ``is_split_into_words`` gives it; else ``None``.

    That holds for BERT's normaliser (character by character: cleaning, CJK spacing, accents, lower case)
    and pre-tokeniser (splits at whitespace and punctuation), whatever the model (WordPiece, ...), as long
    as no added token can match across or absorb a space (``lstrip``/``rstrip`` on a token that can occur
    inside a word).  Byte-level BPE and SentencePiece treat a word after a space differently: ``None``.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    if not (backend.normalizer is None or isinstance(backend.normalizer, normalizers.BertNormalizer)):
        return None
    if not isinstance(backend.pre_tokenizer, pre_tokenizers.BertPreTokenizer):
        return None
    for token in backend.get_added_tokens_decoder().values():
        text = token.content
        if not text or any(c.isspace() for c in text):
            return None
        # a punctuation or symbol character that never joins is always a word of its own
        never_inside_a_word = len(text) > 1 and any(unicodedata.category(c)[0] in "PS" and c not in JOINERS
                                                    for c in text)
        if (token.lstrip or token.rstrip) and not never_inside_a_word:
            return None
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


@dataclass
class Pieces:
    """Word pieces of a buffer's words: word ``w`` has ``ids[first[w]:first[w + 1]]`` (at least one)."""

    ids: np.ndarray  # int64 [pieces]
    first: np.ndarray  # int64 [words + 1]


def distinct_words(codes: np.ndarray, at: np.ndarray) -> np.ndarray:
    """An id per word (``codes[at[i]:at[i + 1]]``, code points), equal for equal words, numbered in order of
    first occurrence (Arrow's hash-based dictionary encoding of the words' bytes)."""
    n = len(at) - 1
    data = pa.py_buffer(codes.view(np.uint8))
    if int(at[-1]) * 4 < 2**31:
        arr = pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer((at * 4).astype(np.int32)), data])
    else:
        arr = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(at * 4), data])
    return arr.dictionary_encode().indices.to_numpy().astype(np.int64)


def word_hashes(codes: np.ndarray, at: np.ndarray) -> np.ndarray:
    """A 64-bit polynomial hash of each word ``codes[at[i]:at[i + 1]]`` (non-empty), vectorised."""
    lengths = np.diff(at)
    if not len(lengths):
        return np.zeros(0, dtype=np.uint64)
    powers = np.ones(int(lengths.max()), dtype=np.uint64)
    powers[1:] = np.cumprod(np.full(len(powers) - 1, 0x100000001B3, dtype=np.uint64))  # wraps modulo 2**64
    terms = codes.astype(np.uint64) * powers[np.arange(len(codes)) - np.repeat(at[:-1], lengths)]
    return np.add.reduceat(terms, at[:-1]) ^ (lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))


class Vocabulary:
    """Words met so far (code points) and their pieces.  A word is looked up by a hash of its code points
    (a sorted array and binary search) and then compared character by character, so a hash collision can
    only cost an encoding, never give a word another word's pieces."""

    def __init__(self):
        self.codes = np.zeros(0, dtype=np.uint32)
        self.at = np.zeros(1, dtype=np.int64)
        self.pieces = Pieces(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64))
        self.hashes = np.zeros(0, dtype=np.uint64)  # sorted
        self.entry = np.zeros(0, dtype=np.int64)  # the word of each sorted hash

    def __len__(self) -> int:
        return len(self.at) - 1

    def find(self, codes: np.ndarray, at: np.ndarray) -> np.ndarray:
        """The entry of each word ``codes[at[i]:at[i + 1]]``, -1 for words not met yet."""
        found = np.full(len(at) - 1, -1, dtype=np.int64)
        if not len(self.hashes) or not len(found):
            return found
        h = word_hashes(codes, at)
        pos = np.minimum(np.searchsorted(self.hashes, h), len(self.hashes) - 1)
        cand = np.flatnonzero(self.hashes[pos] == h)
        entry = self.entry[pos[cand]]
        same_length = (at[cand + 1] - at[cand]) == (self.at[entry + 1] - self.at[entry])
        cand, entry = cand[same_length], entry[same_length]
        if len(cand):
            differs = codes[ranges_index(at[cand], at[cand + 1])] != self.codes[ranges_index(self.at[entry],
                                                                                                self.at[entry + 1])]
            starts = np.zeros(len(cand), dtype=np.int64)
            np.cumsum((at[cand + 1] - at[cand])[:-1], out=starts[1:])
            same = ~np.logical_or.reduceat(differs, starts)
            found[cand[same]] = entry[same]
        return found

    def extended(self, codes: np.ndarray, at: np.ndarray, pieces: Pieces) -> tuple["Vocabulary", np.ndarray]:
        """A copy with the words ``codes[at[i]:at[i + 1]]`` (not met yet) and their pieces; and their entries.
        (A copy, so that a thread that reads this vocabulary meanwhile never sees it half updated.)"""
        out = Vocabulary()
        entries = len(self) + np.arange(len(at) - 1, dtype=np.int64)
        h = word_hashes(codes, at)
        order = np.argsort(h, kind="stable")
        where = np.searchsorted(self.hashes, h[order])
        out.hashes = np.insert(self.hashes, where, h[order])
        out.entry = np.insert(self.entry, where, entries[order])
        out.codes = np.concatenate([self.codes, codes])
        out.at = np.concatenate([self.at, self.at[-1] + at[1:]])
        out.pieces = Pieces(np.concatenate([self.pieces.ids, pieces.ids]),
                             np.concatenate([self.pieces.first, self.pieces.first[-1] + pieces.first[1:]]))
        return out, entries
