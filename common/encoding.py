"""Word-level sentences to word pieces, and word-piece predictions back to words.

One :class:`PieceWindower` serves both taggers, training and inference.  It
calls the transformer's fast tokenizer once for a whole list of sentences
(``is_split_into_words=True``) and reads ``word_ids()`` to know which pieces
belong to which word.

Conventions (the same everywhere in the project):

* the first piece of a word carries the word's tag; continuation pieces carry
  ``I-X`` for a ``B-X``/``I-X`` word and ``O`` for an ``O`` word, or -100 when
  ``label_all_pieces`` is off; special tokens, padding and context get -100;
* a word is predicted from its first piece;
* a word that the tokenizer turns into no piece at all (zero-width or control
  characters) is encoded as ``[UNK]`` so that it still gets a prediction;
* a sentence longer than the model's window is split into overlapping windows;
  each word is *owned* by exactly one window (the one where it has the most
  context on both sides), only owned words are labelled and predicted;
* optional document context (FLERT): pieces of the neighbouring sentences of
  the same document are added left and right as unlabelled context;
* distillation: a sentence without tags may carry its teacher's word probabilities (``extra["soft"]``,
  [words, labels]); its first pieces get them, its continuation pieces the same with ``B-X`` moved to
  ``I-X`` (the tag rule above), as ``EncodedWindow.soft``;
* optional character features (``char_features``): every piece carries the characters of its word
  (:func:`common.word_features.char_rows`, case kept), so that a character encoder sees the whole word on each of its pieces;
* optional document packing: consecutive sentences of one document that fit
  together share one window, each of them labelled and predicted there (its
  neighbours are its context, at no extra compute per labelled piece).  A
  packed window's ``sentence`` is its first sentence and ``word_index``
  counts on through the next ones, so a word's flat position is still
  ``first word of sentence + word_index``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .data import OUTSIDE, Sentence, split_tag
from .word_features import CASE_PAD, MAX_WORD_CHARS, casing_class, word_char_rows

IGNORE_INDEX = -100

@dataclass
class EncodedWindow:
    """One model input: a window of one sentence, with optional context.

    Per piece: ``input_ids``; ``labels`` (-100 where not trained);
    ``casing`` (casing class of the word the piece comes from; 0 for specials);
    ``word_index`` (the word's position in the sentence on the first piece of
    each owned word, else -1); ``scored`` (1 on the pieces the tagger scores:
    owned words' first pieces, and their continuation pieces when
    ``label_all_pieces``).
    """

    sentence: int
    input_ids: list[int]
    labels: list[int]
    casing: list[int]
    word_index: list[int]
    scored: list[int]
    soft: np.ndarray | None = None
    """Distillation: float16 [pieces, labels], the teacher's probabilities where a piece is taught (rows of
    zeros elsewhere); None in windows of labelled sentences."""
    chars: np.ndarray | None = None
    """Character features: int16 [pieces, MAX_WORD_CHARS], each piece's word as :func:`char_rows` (rows of
    zeros for special tokens); None when the windower makes none."""

    def __len__(self) -> int:
        return len(self.input_ids)


def plan_windows(piece_counts: Sequence[int], budget: int, stride: float = 0.5) -> list[tuple[int, int]]:
    """Split words into overlapping windows of at most ``budget`` pieces.

    Returns ``[(first_word, end_word), ...]`` (end exclusive) covering all
    words; consecutive windows start about ``stride * budget`` pieces apart.
    A single word longer than the budget gets a window of its own (its pieces
    are cut there; it is still predicted from its first piece).
    """
    n = len(piece_counts)
    if n == 0:
        return []
    offsets = [0]
    for c in piece_counts:
        offsets.append(offsets[-1] + c)
    if offsets[-1] <= budget:
        return [(0, n)]
    windows = []
    start = 0
    step = max(1, int(budget * stride))
    while True:
        # furthest end such that pieces(start..end) <= budget, at least one word
        end = bisect.bisect_right(offsets, offsets[start] + budget) - 1
        end = max(end, start + 1)
        windows.append((start, end))
        if end >= n:
            return windows
        nxt = bisect.bisect_right(offsets, offsets[start] + step) - 1
        nxt = min(max(nxt, start + 1), end)  # advance, never past the end: no gap
        start = nxt


def plan_packs(docs: Sequence, piece_counts: Sequence[int], budget: int) -> list[list[int]]:
    """Runs of consecutive sentences of one document whose pieces fit ``budget`` together, greedily from each
    document's first sentence: ``[[0, 1, 2], [3, 4], ...]``.  Only runs of two or more are returned; sentences
    without a document (``None``), or alone over the budget, or with no pieces, are left to windows of their own.
    """
    packs: list[list[int]] = []
    current: list[int] = []
    used = 0

    def close():
        if len(current) > 1:
            packs.append(list(current))
        current.clear()

    for si, (doc, n) in enumerate(zip(docs, piece_counts)):
        fits = doc is not None and 0 < n <= budget
        if current and (not fits or docs[current[-1]] != doc or used + n > budget):
            close()
        if fits:
            if not current:
                used = 0
            current.append(si)
            used += n
    close()
    return packs


def _pad_rows(rows: np.ndarray, before: int, after: int) -> np.ndarray:
    """Rows of zeros before and after (the pieces of context and special tokens are not taught)."""
    return np.pad(rows, ((before, after), (0, 0)))


def assign_owners(windows: Sequence[tuple[int, int]], n_words: int) -> list[int]:
    """For each word, the window that predicts it: the one where it is most central."""
    owner = [-1] * n_words
    best = [-1] * n_words
    for wi, (a, b) in enumerate(windows):
        for w in range(a, b):
            margin = min(w - a, b - 1 - w)
            if margin > best[w]:
                best[w], owner[w] = margin, wi
    return owner


def continuation_tag(tag: str) -> str:
    """The tag of a word's continuation pieces: ``I-X`` for ``B-X``/``I-X``, ``O`` for ``O``."""
    etype = split_tag(tag)[1]
    return OUTSIDE if etype is None else f"I-{etype}"


def align_labels(tags: Sequence[str], pieces_per_word: Sequence[int], label_to_id: dict[str, int],
                 label_all_pieces: bool = True) -> list[int]:
    """Word tags to piece labels by the project's rule (see module docstring)."""
    out = []
    for tag, n in zip(tags, pieces_per_word):
        out.append(label_to_id[tag])
        if n > 1:
            if label_all_pieces:
                out.extend([label_to_id[continuation_tag(tag)]] * (n - 1))
            else:
                out.extend([IGNORE_INDEX] * (n - 1))
    return out


class PieceWindower:
    """Turns word-level sentences into word-piece windows for both taggers.

    ``labels`` is the ordered tag list (index = class id).  ``max_length``
    counts special tokens.  ``context_pieces`` > 0 adds up to that many pieces
    of document context on each side (FLERT-style).  ``pack_pieces`` > 0 packs
    consecutive sentences of a document into windows of up to that many
    pieces (special tokens included); sentences without a document, or
    longer than that, keep windows of their own.  ``char_features`` adds
    each piece's word's characters (``EncodedWindow.chars``).
    """

    def __init__(self, tokenizer, labels: Sequence[str], max_length: int = 512,
                 label_all_pieces: bool = True, context_pieces: int = 0, window_stride: float = 0.5,
                 pack_pieces: int = 0, char_features: bool = False):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("a fast (Rust) tokenizer is needed for word_ids(); got " + type(tokenizer).__name__)
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.label_to_id = {t: i for i, t in enumerate(self.labels)}
        # a teacher's word distribution -> its continuation pieces' distribution (B-X's mass goes to I-X)
        self.continuation = np.zeros((len(self.labels), len(self.labels)), dtype=np.float32)
        for i, tag in enumerate(self.labels):
            self.continuation[i, self.label_to_id.get(continuation_tag(tag), i)] = 1.0
        model_max = getattr(tokenizer, "model_max_length", max_length) or max_length
        self.max_length = min(max_length, model_max) if model_max < 1e6 else max_length
        self.label_all_pieces = label_all_pieces
        self.context_pieces = context_pieces
        self.window_stride = window_stride
        self.pack_pieces = min(pack_pieces, self.max_length)
        self.char_features = char_features
        self.cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        self.sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        self.unk_id = tokenizer.unk_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.num_special = int(self.cls_id is not None) + int(self.sep_id is not None)

    # --- pieces ---------------------------------------------------------------------------------
    def word_pieces(self, sentences: Sequence[Sequence[str]], batch_size: int = 2048) -> list[list[list[int]]]:
        """Piece ids of every word of every sentence (``[UNK]`` for words with no piece)."""
        out: list[list[list[int]]] = []
        for b in range(0, len(sentences), batch_size):
            batch = [list(s) for s in sentences[b:b + batch_size]]
            enc = self.tokenizer(batch, is_split_into_words=True, add_special_tokens=False,
                                 return_attention_mask=False, return_token_type_ids=False)
            for i, words in enumerate(batch):
                per_word: list[list[int]] = [[] for _ in words]
                for pid, wid in zip(enc["input_ids"][i], enc.word_ids(i)):
                    if wid is not None:
                        per_word[wid].append(pid)
                for w in per_word:
                    if not w:
                        w.append(self.unk_id)
                out.append(per_word)
        return out

    # --- windows --------------------------------------------------------------------------------
    def windows(self, sentences: Sequence[Sentence], with_labels: bool = True) -> list[EncodedWindow]:
        """Sentences (with their tags when ``with_labels``) as model windows.

        Context, when enabled, comes from the neighbouring sentences of the
        list that share ``doc`` (``None`` docs never share context).
        """
        pieces = self.word_pieces([s.tokens for s in sentences])
        casings = [[casing_class(w) for w in s.tokens] for s in sentences]
        chars = [word_char_rows(s.tokens) for s in sentences] if self.char_features else None
        budget = self.max_length - self.num_special
        if budget < 1:
            raise ValueError(f"max_length {self.max_length} leaves no room for word pieces")
        packs = plan_packs([s.doc for s in sentences], [sum(len(p) for p in ps) for ps in pieces],
                           self.pack_pieces - self.num_special) if self.pack_pieces else []
        packed = {si for pack in packs for si in pack}
        pack_at = {pack[0]: pack for pack in packs}
        out: list[EncodedWindow] = []
        for si, sent in enumerate(sentences):
            if si in pack_at:
                out.append(self._packed_window(sentences, pieces, casings, chars, pack_at[si], with_labels))
            if si in packed:
                continue
            counts = [min(len(p), budget) for p in pieces[si]]
            windows = plan_windows(counts, budget, self.window_stride)
            owners = assign_owners(windows, len(counts))
            tags, soft = self._targets(sent, with_labels)
            for wi, (a, b) in enumerate(windows):
                if not any(owners[w] == wi for w in range(a, b)):
                    continue  # predicts no word (its words are more central elsewhere): all -100, skip it
                ids, labels, casing, word_index, scored, taught, window_chars = self._window_body(
                    (pieces[si][w][:budget], casings[si][w], w if owners[w] == wi else -1,
                     None if tags is None else tags[w], None if soft is None else soft[w],
                     None if chars is None else chars[si][w]) for w in range(a, b))
                room = budget - len(ids)
                if self.context_pieces > 0 and room > 0:
                    left, left_case, left_chars = self._context(sentences, pieces, casings, chars, si, -1,
                                                                min(self.context_pieces, room // 2 + room % 2))
                    right, right_case, right_chars = self._context(sentences, pieces, casings, chars, si, +1,
                                                                   min(self.context_pieces, room - len(left)))
                    n_left, n_right = len(left), len(right)
                    ids = left + ids + right
                    casing = left_case + casing + right_case
                    labels = [IGNORE_INDEX] * n_left + labels + [IGNORE_INDEX] * n_right
                    word_index = [-1] * n_left + word_index + [-1] * n_right
                    scored = [0] * n_left + scored + [0] * n_right
                    taught = None if taught is None else _pad_rows(taught, n_left, n_right)
                    if window_chars is not None:
                        window_chars = np.concatenate([left_chars, window_chars, right_chars])
                out.append(self._wrap(si, ids, labels, casing, word_index, scored, taught, window_chars))
        return out

    def _window_body(self, words):
        """Pieces, labels, casing, word_index, scored flags, teacher probabilities (or None) and characters (or
        None) of a window's words, each given as (its pieces, its casing class, its word_index or -1 when another
        window owns it, its tag or None, its teacher probabilities or None, its character row or None)."""
        ids: list[int] = []
        labels: list[int] = []
        casing: list[int] = []
        word_index: list[int] = []
        scored: list[int] = []
        soft_rows: list[tuple[int, int, np.ndarray]] = []  # (first piece, pieces, word distribution)
        word_rows: list[np.ndarray] = []
        char_counts: list[int] = []
        for wp, case, index, tag, dist, word_chars in words:
            owned = index >= 0
            ids.extend(wp)
            casing.extend([case] * len(wp))
            word_index.append(index)
            word_index.extend([-1] * (len(wp) - 1))
            scored.append(int(owned))
            scored.extend([int(owned and self.label_all_pieces)] * (len(wp) - 1))
            if word_chars is not None:
                word_rows.append(word_chars)
                char_counts.append(len(wp))
            if dist is not None and owned:
                soft_rows.append((len(ids) - len(wp), len(wp), dist))
            if tag is not None and owned:
                labels.extend(align_labels([tag], [len(wp)], self.label_to_id, self.label_all_pieces))
            else:
                labels.extend([IGNORE_INDEX] * len(wp))
        taught = None
        if soft_rows:
            taught = np.zeros((len(ids), len(self.labels)), dtype=np.float16)
            for first, n, dist in soft_rows:
                taught[first] = dist
                if n > 1 and self.label_all_pieces:
                    taught[first + 1:first + n] = dist.astype(np.float32) @ self.continuation
        window_chars = np.repeat(np.stack(word_rows), char_counts, axis=0) if word_rows else None
        return ids, labels, casing, word_index, scored, taught, window_chars

    def _packed_window(self, sentences, pieces, casings, chars, pack, with_labels) -> EncodedWindow:
        """One window holding whole sentences ``pack`` (consecutive, one document), every word owned;
        ``word_index`` counts on through the pack's sentences."""
        first = [0]
        targets = []
        for si in pack:
            targets.append(self._targets(sentences[si], with_labels))
            first.append(first[-1] + len(pieces[si]))
        body = self._window_body(
            (wp, casings[si][w], first[k] + w, *(None if t is None else t[w] for t in targets[k]),
             None if chars is None else chars[si][w])
            for k, si in enumerate(pack) for w, wp in enumerate(pieces[si]))
        return self._wrap(pack[0], *body)

    @staticmethod
    def _targets(sentence: Sentence, with_labels: bool):
        """(tags, teacher word probabilities) of a sentence, each None when absent; one of them when labelled."""
        if not with_labels:
            return None, None
        tags, soft = sentence.tags, sentence.extra.get("soft")
        if tags is None and soft is None:
            raise ValueError(f"sentence {sentence.index} has no tags")
        return tags, soft

    def _context(self, sentences, pieces, casings, chars, si, direction, limit):
        """Up to ``limit`` pieces of the same document before (-1) or after (+1) sentence ``si``: their ids,
        casing classes and character rows (None without ``chars``)."""
        ids: list[int] = []
        case: list[int] = []
        parts: list[np.ndarray] = []
        doc = sentences[si].doc
        j = si + direction
        while limit > 0 and doc is not None and 0 <= j < len(sentences) and sentences[j].doc == doc:
            sent_ids = [p for wp in pieces[j] for p in wp]
            sent_case = [c for wp, c in zip(pieces[j], casings[j]) for _ in wp]
            if direction < 0:
                take = sent_ids[-limit:]
                ids = take + ids
                case = sent_case[len(sent_ids) - len(take):] + case
            else:
                take = sent_ids[:limit]
                ids = ids + take
                case = case + sent_case[:len(take)]
            if chars is not None:
                rows = np.repeat(chars[j], [len(wp) for wp in pieces[j]], axis=0)
                if direction < 0:
                    parts.insert(0, rows[len(rows) - len(take):])
                else:
                    parts.append(rows[:len(take)])
            limit -= len(take)
            j += direction
        if chars is None:
            return ids, case, None
        return ids, case, np.concatenate(parts) if parts else np.zeros((0, MAX_WORD_CHARS), dtype=np.int16)

    def _wrap(self, si, ids, labels, casing, word_index, scored, taught=None, chars=None) -> EncodedWindow:
        if self.cls_id is not None:
            ids = [self.cls_id] + ids
            labels = [IGNORE_INDEX] + labels
            casing = [CASE_PAD] + casing
            word_index = [-1] + word_index
            scored = [0] + scored
        if self.sep_id is not None:
            ids = ids + [self.sep_id]
            labels = labels + [IGNORE_INDEX]
            casing = casing + [CASE_PAD]
            word_index = word_index + [-1]
            scored = scored + [0]
        if taught is not None:
            taught = _pad_rows(taught, int(self.cls_id is not None), int(self.sep_id is not None))
        if chars is not None:
            chars = _pad_rows(chars, int(self.cls_id is not None), int(self.sep_id is not None))
        return EncodedWindow(si, ids, labels, casing, word_index, scored, taught, chars)
