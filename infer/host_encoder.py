"""The host side of the batch tagger: a buffer of raw texts to padded model batches, with no Python object
per word (see :mod:`infer.tagger` for the whole path).  :class:`HostEncoder` pickles, so host worker processes
(:mod:`infer.host_workers`) can run it; it imports no torch until batches are made.  A buffer goes through:

- words with exact offsets for all texts at once (:func:`infer.word_arrays.split_texts`, the rules of
  :mod:`infer.words`), and their casing classes;
- word pieces: for BERT-style tokenizers (the project's default) a word's pieces do not depend on its
  neighbours, so each distinct word is encoded once per process (:class:`_Vocabulary`); new words are encoded
  joined by single spaces in a few large calls to the Rust tokenizer and every piece is assigned to its word
  by its character offset (a piece that does not sit inside one word sends the buffer to the per-word
  encoding, as any other tokenizer gets);
- long texts: with ``chunking="sentences"`` (the default) cut at sentence-ish boundaries into chunks of up to
  one window, every piece computed once; a "sentence" longer than a window, and every long text with
  ``chunking="windows"``, split into overlapping windows, each word predicted where it has the most context
  (``plan_windows``, ``assign_owners``).  Nothing is truncated or dropped;
- windows (special tokens, FLERT context, ``word_index``/``scored``/``casing`` per piece, ``chars`` for a
  model with character features) as one flat array, sorted by length, cut into token-budget batches, each
  padded by one gather: the windows and batches of ``PieceWindower.windows`` + ``token_budget_batches`` +
  ``collate_windows``, the training path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from common.encoding import assign_owners, plan_windows
from common.word_features import CASE_PAD, char_rows

from .vocabulary import Pieces, Vocabulary, distinct_words, joined_words_tokenizer
from .word_arrays import WordBuffer, casing_classes, pack_chunks, ranges_index, sentence_bounds, split_texts

log = logging.getLogger(__name__)

CHUNKING = ("sentences", "windows")

_GROUP_CHARS = 4096
"""Characters per tokenizer input when words are encoded joined by spaces (long inputs encode slower)."""
_VOCABULARY_WORDS = 1 << 18
"""Distinct words whose pieces a host encoder keeps (some 20 MB at most)."""


@dataclass
class Prepared:
    """One buffer of texts, ready for the model (see :meth:`HostEncoder.encode`).

    Word ``w`` of the buffer spans ``word_start[w]:word_end[w]`` of its own text; row ``r`` owns words
    ``row_first_word[r]:row_first_word[r + 1]``.  ``batches`` hold numpy arrays as the encoder makes them
    (picklable, for worker processes) and torch tensors once :meth:`TextTagger.attach` has run.
    """

    num_rows: int
    row_first_word: np.ndarray  # int64 [rows + 1]
    word_start: np.ndarray  # int64 [words]
    word_end: np.ndarray  # int64 [words]
    chunk_first_word: np.ndarray  # int64 [chunks]: flat offset of each chunk's first word
    batches: list[dict] = field(default_factory=list)
    num_pieces: int = 0
    padded_pieces: int = 0
    texts: list | None = None

    @property
    def num_words(self) -> int:
        return int(self.row_first_word[-1])


class HostEncoder:
    """Texts to padded model batches (numpy), the CPU side of :class:`TextTagger`.

    Picklable for host worker processes (:func:`serve`): with a BERT-style tokenizer only the Rust tokenizer's
    JSON and the windower's settings travel, so a worker imports neither torch nor transformers.
    """

    def __init__(self, windower, batch_tokens: int, chunking: str = "sentences", chunk_pieces: int = 0):
        if chunking not in CHUNKING:
            raise ValueError(f"chunking must be one of {CHUNKING}, got {chunking!r}")
        self.batch_tokens = batch_tokens
        self.chunking = chunking
        self.budget = windower.max_length - windower.num_special  # word pieces per window
        # by default a chunk holds what the model was trained on: a packed window (document packing) or a window
        packed = windower.pack_pieces - windower.num_special if windower.pack_pieces else self.budget
        self.chunk_pieces = min(chunk_pieces if chunk_pieces > 0 else packed, self.budget)
        for name in ("cls_id", "sep_id", "unk_id", "pad_id", "label_all_pieces", "context_pieces", "window_stride",
                     "char_features"):
            setattr(self, name, getattr(windower, name))
        self._joined = joined_words_tokenizer(windower.tokenizer)
        self.tokenizer = windower.tokenizer if self._joined is None else None  # words encoded one by one
        self._vocabulary: Vocabulary | None = None  # the words met so far and their pieces

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_vocabulary"] = None
        if self._joined is not None:
            state["_joined"] = self._joined.to_str()
        return state

    def __setstate__(self, state):
        from tokenizers import Tokenizer

        self.__dict__.update(state)
        if isinstance(self._joined, str):
            self._joined = Tokenizer.from_str(self._joined)

    # ------------------------------------------------------------------ pieces
    def _pieces_joined(self, buf: WordBuffer) -> Pieces | None:
        """Pieces of all words (see :func:`joined_words_tokenizer`), each distinct word encoded once per process:
        natural text repeats its words (a buffer of 4,096 news sentences has about six occurrences per distinct
        word, and most of its distinct words were in earlier buffers), so the words met so far keep their pieces
        (:class:`Vocabulary`).  ``None`` when a piece does not sit inside one word (then the caller encodes
        word by word)."""
        nw = buf.num_words
        lengths = buf.word_end - buf.word_start
        codes = buf.codes[ranges_index(buf.word_start, buf.word_end)]  # the words back to back
        at = np.zeros(nw + 1, dtype=np.int64)
        np.cumsum(lengths, out=at[1:])
        kind = distinct_words(codes, at)  # the distinct word of each word, numbered in order of first use
        seen = np.zeros(nw, dtype=bool)
        seen[1:] = kind[1:] <= np.maximum.accumulate(kind)[:-1]
        firsts = np.flatnonzero(~seen)  # the first occurrence of each distinct word
        d_codes = codes[ranges_index(at[firsts], at[firsts + 1])]
        d_at = np.zeros(len(firsts) + 1, dtype=np.int64)
        np.cumsum(lengths[firsts], out=d_at[1:])
        vocab = self._vocabulary
        if vocab is None or len(vocab) + len(firsts) > _VOCABULARY_WORDS:
            vocab = Vocabulary()  # start afresh rather than grow without bound
        where = vocab.find(d_codes, d_at)
        new = np.flatnonzero(where < 0)
        if len(new):
            pieces = self._encode_joined(d_codes, d_at[new], d_at[new + 1])
            if pieces is None:
                return None
            new_at = np.zeros(len(new) + 1, dtype=np.int64)
            np.cumsum(d_at[new + 1] - d_at[new], out=new_at[1:])
            vocab, where[new] = vocab.extended(d_codes[ranges_index(d_at[new], d_at[new + 1])], new_at, pieces)
            self._vocabulary = vocab
        v = where[kind]  # the vocabulary entry of every word
        known = vocab.pieces
        counts = np.diff(known.first)[v]
        first = np.zeros(nw + 1, dtype=np.int64)
        np.cumsum(counts, out=first[1:])
        return Pieces(known.ids[ranges_index(known.first[v], known.first[v] + counts)], first)

    def _encode_joined(self, codes: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Pieces | None:
        """Pieces of the words ``codes[starts[i]:ends[i]]``, encoded joined by spaces in a few large calls."""
        nw = len(starts)
        lengths = ends - starts
        at = np.zeros(nw + 1, dtype=np.int64)  # where each word starts in the joined text
        np.cumsum(lengths + 1, out=at[1:])
        joined = np.full(int(at[-1]), ord(" "), dtype=np.uint32)
        joined[ranges_index(at[:-1], at[:-1] + lengths)] = codes[ranges_index(starts, ends)]
        text = joined.tobytes().decode("utf-32-le", "surrogatepass")
        group_at = np.searchsorted(at[:-1], np.arange(0, len(text), _GROUP_CHARS))
        cuts = np.unique(np.append(at[group_at[group_at < nw]], len(text))).tolist()
        encodings = self._joined.encode_batch([text[a:b] for a, b in zip(cuts, cuts[1:])], add_special_tokens=False)
        ids = np.concatenate([np.array(e.ids, dtype=np.int64) for e in encodings])
        offsets = np.concatenate([np.array(e.offsets, dtype=np.int64).reshape(-1, 2) for e in encodings])
        counts = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        offsets += np.repeat(np.array(cuts[:-1], dtype=np.int64), counts)[:, None]
        word = np.searchsorted(at[:-1], offsets[:, 0], side="right") - 1
        if len(ids) and ((word < 0).any() or (offsets[:, 1] > at[word] + lengths[word]).any()
                         or (np.diff(word) < 0).any()):
            return None
        return self._with_unknown(ids, word, nw)

    def _with_unknown(self, ids: np.ndarray, word: np.ndarray, nw: int) -> Pieces:
        """Pieces (``word``: the word of each, non-decreasing) with ``[UNK]`` for words that got none."""
        counts = np.bincount(word, minlength=nw)
        first = np.zeros(nw + 1, dtype=np.int64)
        np.cumsum(np.maximum(counts, 1), out=first[1:])
        if len(ids) == int(first[-1]):
            return Pieces(ids, first)
        out = np.full(int(first[-1]), self.unk_id, dtype=np.int64)
        own_first = np.zeros(nw + 1, dtype=np.int64)
        np.cumsum(counts, out=own_first[1:])
        out[first[word] + np.arange(len(ids)) - own_first[word]] = ids
        return Pieces(out, first)

    def _pieces_per_word(self, buf: WordBuffer, groups: np.ndarray) -> Pieces:
        """Pieces of the words of each group of consecutive words (``groups``: first word of each, + the end),
        each group encoded as one ``is_split_into_words`` sequence, as ``PieceWindower.word_pieces`` does."""
        nw = buf.num_words
        text = buf.codes.tobytes().decode("utf-32-le", "surrogatepass")
        words = [text[a:b] for a, b in zip(buf.word_start.tolist(), buf.word_end.tolist())]
        bounds = groups.tolist()
        sequences = [words[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
        ids, word = [], []
        starts = [a for a, b in zip(bounds, bounds[1:]) if b > a]
        for k in range(0, len(sequences), 2048):
            enc = self.tokenizer(sequences[k:k + 2048], is_split_into_words=True, add_special_tokens=False,
                                 return_attention_mask=False, return_token_type_ids=False)
            for e, first in zip(enc.encodings, starts[k:k + 2048]):
                wid = np.array([-1 if w is None else w for w in e.word_ids], dtype=np.int64)
                keep = wid >= 0
                ids.append(np.array(e.ids, dtype=np.int64)[keep])
                word.append(wid[keep] + first)
        ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        word = np.concatenate(word) if word else np.zeros(0, dtype=np.int64)
        return self._with_unknown(ids, word, nw)

    # ------------------------------------------------------------------ chunks
    def _chunks(self, buf: WordBuffer, sizes: np.ndarray) -> np.ndarray:
        """First word of every chunk: sentence chunks of the long rows, one chunk per other row with words."""
        rf = buf.row_first_word
        rows_with_words = np.flatnonzero(rf[1:] > rf[:-1])
        if self.chunking != "sentences" or not len(rows_with_words):
            return rf[:-1][rows_with_words]
        budget = self.chunk_pieces
        # the old quick bound (UTF-8 bytes + words > budget) picks the rows to look at; then the pieces decide
        extra = ((buf.codes >= 0x80).astype(np.int64) + (buf.codes >= 0x800) + (buf.codes >= 0x10000))
        extra_before = np.zeros(len(extra) + 1, dtype=np.int64)
        np.cumsum(extra, out=extra_before[1:])
        ts = buf.text_start
        utf8 = (ts[1:] - ts[:-1] - 1) + extra_before[np.maximum(ts[1:] - 1, ts[:-1])] - extra_before[ts[:-1]]
        size_before = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=size_before[1:])
        row_size = size_before[rf[1:]] - size_before[rf[:-1]]
        long_rows = np.flatnonzero((utf8 + np.diff(rf) > budget) & (row_size > budget))
        if not len(long_rows):
            return rf[:-1][rows_with_words]
        bound = sentence_bounds(buf)
        firsts = [rf[:-1][rows_with_words]]
        for r in long_rows.tolist():
            starts = pack_chunks(bound, sizes, int(rf[r]), int(rf[r + 1]), budget)
            firsts.append(np.array(starts[1:], dtype=np.int64))
        return np.sort(np.concatenate(firsts))

    # ------------------------------------------------------------------ windows
    def _windows(self, pieces: Pieces, casing: np.ndarray, chunk_first: np.ndarray, chunk_end: np.ndarray,
                 chunk_row: np.ndarray, row_first_word: np.ndarray) -> dict[str, np.ndarray]:
        """All windows of all chunks as flat per-piece arrays (see ``PieceWindower.windows``)."""
        w = self  # the windower's settings
        budget = self.budget
        counts = np.diff(pieces.first)
        kept = np.minimum(counts, budget)  # a word longer than the window is cut there
        kept_before = np.zeros(len(kept) + 1, dtype=np.int64)
        np.cumsum(kept, out=kept_before[1:])
        chunk_size = kept_before[chunk_end] - kept_before[chunk_first]
        win_chunk, win_a, win_b, owner = self._plan(kept, chunk_first, chunk_end, chunk_size)
        k = len(win_chunk)
        size = kept_before[win_b] - kept_before[win_a]
        n_left, n_right = self._context_sizes(pieces, size, win_chunk, chunk_first, chunk_end, chunk_row,
                                              row_first_word)
        n_cls = int(w.cls_id is not None)
        n_sep = int(w.sep_id is not None)
        length = n_cls + n_left + size + n_right + n_sep
        win_first = np.zeros(k + 1, dtype=np.int64)
        np.cumsum(length, out=win_first[1:])
        total = int(win_first[-1])
        input_ids = np.empty(total, dtype=np.int64)
        case = np.full(total, CASE_PAD, dtype=np.int64)
        # character features: each piece's word (-1: none), whose character row the batches gather
        word = np.full(total, -1, dtype=np.int64) if w.char_features else None
        word_index = np.full(total, -1, dtype=np.int64)
        scored = np.zeros(total, dtype=bool)
        if n_cls:
            input_ids[win_first[:-1]] = w.cls_id
        if n_sep:
            input_ids[win_first[1:] - 1] = w.sep_id
        # the words of each window, their pieces cut at the budget
        pair_word = ranges_index(win_a, win_b)
        pair_win = np.repeat(np.arange(k, dtype=np.int64), win_b - win_a)
        pair_len = kept[pair_word]
        pair_at = (win_first[:-1][pair_win] + n_cls + n_left[pair_win]
                   + kept_before[pair_word] - kept_before[win_a[pair_win]])
        dst = ranges_index(pair_at, pair_at + pair_len)
        input_ids[dst] = pieces.ids[ranges_index(pieces.first[pair_word], pieces.first[pair_word] + pair_len)]
        case[dst] = np.repeat(casing[pair_word], pair_len)
        if word is not None:
            word[dst] = np.repeat(pair_word, pair_len)
        owned = owner[pair_word] == pair_win
        word_index[pair_at[owned]] = pair_word[owned] - chunk_first[win_chunk[pair_win[owned]]]
        if w.label_all_pieces:
            scored[dst[np.repeat(owned, pair_len)]] = True
        else:
            scored[pair_at[owned]] = True
        # document context: the pieces before and after the chunk within its row, uncut
        if w.context_pieces > 0 and (n_left.any() or n_right.any()):
            piece_word = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
            for n_ctx, src_start, dst_start in (
                    (n_left, pieces.first[chunk_first[win_chunk]] - n_left, win_first[:-1] + n_cls),
                    (n_right, pieces.first[chunk_end[win_chunk]], win_first[:-1] + n_cls + n_left + size)):
                src, dst = ranges_index(src_start, src_start + n_ctx), ranges_index(dst_start, dst_start + n_ctx)
                input_ids[dst], case[dst] = pieces.ids[src], casing[piece_word[src]]
                if word is not None:
                    word[dst] = piece_word[src]
        out = {"input_ids": input_ids, "casing": case, "word_index": word_index, "scored": scored,
               "first": win_first, "length": length, "sentence": win_chunk}
        if word is not None:
            out["word"] = word
        return out

    def _plan(self, kept: np.ndarray, chunk_first: np.ndarray, chunk_end: np.ndarray, chunk_size: np.ndarray):
        """Each window's chunk and word range, and the window that predicts each word: one window per chunk that
        fits (nearly all); planned, overlapping windows for the others."""
        budget = self.budget
        n_win = np.ones(len(chunk_first), dtype=np.int64)
        planned = {}
        for c in np.flatnonzero(chunk_size > budget).tolist():
            a0, b0 = int(chunk_first[c]), int(chunk_end[c])
            windows = plan_windows(kept[a0:b0].tolist(), budget, self.window_stride)
            owners = np.array(assign_owners(windows, b0 - a0), dtype=np.int64)
            used = np.unique(owners)  # a window that predicts no word is skipped
            planned[c] = (np.array(windows, dtype=np.int64)[used] + a0, np.searchsorted(used, owners))
            n_win[c] = len(used)
        chunk_win = np.zeros(len(chunk_first), dtype=np.int64)  # each chunk's first window
        np.cumsum(n_win[:-1], out=chunk_win[1:])
        win_chunk = np.repeat(np.arange(len(chunk_first), dtype=np.int64), n_win)
        win_a, win_b = chunk_first[win_chunk], chunk_end[win_chunk]
        owner = np.repeat(chunk_win, chunk_end - chunk_first)  # the window that predicts each word
        for c, (spans, local_owner) in planned.items():
            k0 = int(chunk_win[c])
            win_a[k0:k0 + len(spans)], win_b[k0:k0 + len(spans)] = spans[:, 0], spans[:, 1]
            owner[chunk_first[c]:chunk_end[c]] = k0 + local_owner
        return win_chunk, win_a, win_b, owner

    def _context_sizes(self, pieces: Pieces, size: np.ndarray, win_chunk: np.ndarray, chunk_first: np.ndarray,
                       chunk_end: np.ndarray, chunk_row: np.ndarray, row_first_word: np.ndarray):
        """Pieces of document context left and right of each window: up to ``context_pieces`` a side from its
        row, in the room the window leaves (the left side first gets half of it)."""
        zeros = np.zeros(len(win_chunk), dtype=np.int64)
        if self.context_pieces <= 0:
            return zeros, zeros
        room = self.budget - size
        doc = chunk_row[win_chunk]
        left_limit = np.minimum(self.context_pieces, room // 2 + room % 2)
        before = pieces.first[chunk_first[win_chunk]] - pieces.first[row_first_word[doc]]  # the row's, before
        after = pieces.first[row_first_word[doc + 1]] - pieces.first[chunk_end[win_chunk]]
        n_left = np.where(room > 0, np.minimum(left_limit, before), 0)
        n_right = np.where(room > 0, np.minimum(np.minimum(self.context_pieces, room - n_left), after), 0)
        return n_left, n_right

    # ------------------------------------------------------------------ batches
    def _batches(self, win: dict[str, np.ndarray]) -> tuple[list[dict[str, np.ndarray]], int, int]:
        """``token_budget_batches`` (no shuffle) + ``collate_windows`` over the flat windows."""
        length = win["length"]
        order = np.argsort(length, kind="stable")
        sorted_len = length[order]
        batches, padded = [], 0
        s, n = 0, len(order)
        max_tokens = self.batch_tokens
        while s < n:
            # the greedy cut: item j joins while (its length, the longest so far) * (batch size) fits
            limit = min(n, s + max(1, max_tokens // max(int(sorted_len[s]), 1)) + 1)
            j = np.arange(s + 1, limit)
            over = np.flatnonzero(sorted_len[j] * (j - s + 1) > max_tokens)
            e = int(j[over[0]]) if len(over) else limit
            idx = order[s:e]
            batches.append(self._collate(win, idx))
            padded += (e - s) * int(sorted_len[e - 1])
            s = e
        return batches, int(length.sum()), padded

    def _collate(self, win: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
        lens = win["length"][idx]
        width = int(lens.max())
        cols = np.arange(width)
        mask = cols[None, :] < lens[:, None]
        src = np.where(mask, win["first"][idx][:, None] + cols[None, :], 0)
        batch = {
            "input_ids": np.where(mask, win["input_ids"][src], self.pad_id),
            "attention_mask": mask.astype(np.int64),
            "casing": np.where(mask, win["casing"][src], CASE_PAD),
            "word_index": np.where(mask, win["word_index"][src], -1),
            "scored": mask & win["scored"][src],
            "sentence": win["sentence"][idx].astype(np.int64),
        }
        if "word" in win:  # the last row of word_chars is all zeros: special tokens and padding
            batch["chars"] = win["word_chars"][np.where(mask, win["word"][src], -1)]
        return batch

    # ------------------------------------------------------------------ all together
    def encode(self, texts: Sequence) -> Prepared:
        """Words, chunks, windows and padded batches (numpy) for ``texts`` (``None`` allowed)."""
        buf = split_texts(texts)
        nw = buf.num_words
        word_row = buf.word_row()
        prep = Prepared(buf.num_rows, buf.row_first_word, buf.word_start - buf.text_start[word_row],
                        buf.word_end - buf.text_start[word_row], np.zeros(0, dtype=np.int64))
        if nw == 0:
            return prep
        pieces = self._pieces_joined(buf) if self._joined is not None else None
        per_word = pieces is None
        if per_word:  # pieces per row first (the chunk sizes), then per chunk as the windower encodes them
            pieces = self._pieces_per_word(buf, buf.row_first_word)
        sizes = np.minimum(np.diff(pieces.first), self.chunk_pieces)
        chunk_first = self._chunks(buf, sizes)
        chunk_end = np.append(chunk_first[1:], nw)
        if per_word and len(chunk_first) != int((np.diff(buf.row_first_word) > 0).sum()):
            pieces = self._pieces_per_word(buf, np.append(chunk_first, nw))
        prep.chunk_first_word = chunk_first
        casing = casing_classes(buf).astype(np.int64)
        win = self._windows(pieces, casing, chunk_first, chunk_end, word_row[chunk_first], buf.row_first_word)
        if self.char_features:
            rows = char_rows(buf.codes, buf.word_start, buf.word_end)
            win["word_chars"] = np.concatenate([rows, np.zeros((1, rows.shape[1]), dtype=rows.dtype)])
        prep.batches, prep.num_pieces, prep.padded_pieces = self._batches(win)
        return prep
