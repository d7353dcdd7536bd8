"""Raw texts in, entity spans with exact character offsets out (either tagger's export).

The work is split in two so that the CPU part runs beside the model (see :mod:`infer.runner`):

* :class:`HostEncoder` (CPU, no model, picklable: it also runs in worker processes) turns a buffer of
  texts into model batches with a few numpy passes over flat arrays, never a Python object per word,
  window or sentence:

  - words with exact offsets for all texts at once (:func:`infer.word_arrays.split_texts`: the rules of
    :mod:`infer.words`), their casing classes (:func:`infer.word_arrays.casing_classes`);
  - word pieces: for BERT-style tokenizers (BERT normaliser and pre-tokeniser, the project's default) a
    word's pieces do not depend on its neighbours, so each distinct word is encoded once per process (the
    words met so far keep their pieces: :class:`_Vocabulary`); new words are encoded joined by single
    spaces, in a few large calls to the Rust tokenizer, and every piece is assigned to its word by its
    character offset (a space cuts the pre-tokens exactly where per-word encoding, ``is_split_into_words``,
    cuts them, so the pieces are the same; a piece that does not sit inside one word sends the buffer to
    the per-word encoding).  Any other tokenizer gets the per-word encoding itself, sentence by sentence
    as the windower calls it;
  - long texts (more word pieces than the model's window): with ``chunking="sentences"`` (the default) cut
    at sentence-ish boundaries (:func:`infer.word_arrays.sentence_bounds`, :func:`infer.word_arrays.pack_chunks`) into
    chunks that each fill up to one window (``chunk_pieces``, default the whole window), so every piece is
    computed once and every word keeps up to a window of context; a single "sentence" longer than a
    window, and every long text with ``chunking="windows"``, is split into overlapping windows (each word
    predicted from the window where it has the most context; ``common.encoding.plan_windows`` and
    ``assign_owners``).  Nothing is truncated or dropped.  Texts that fit in one window are never cut;
  - windows (special tokens, FLERT context, ``word_index``/``scored``/``casing`` per piece) as one flat
    array, sorted by length and cut into token-budget batches, each padded by one fancy-indexing gather.

  The windows and batches are exactly those of ``PieceWindower.windows`` + ``token_budget_batches`` +
  ``collate_windows`` (the training code path, which stays as it is).
* :meth:`TextTagger.run` (model): the project's one prediction path
  (:func:`taggers.predict.predict_batches`), then IOB2/BIOES word tags are read as spans the conlleval way
  (seqeval's ``get_entities``, as a transition table over all words at once), mapped back to character
  offsets, and written as Arrow columns (entity texts gathered from the UTF-8 bytes of the buffer).  The
  score of a span is the mean probability of its words' predicted tags.

Texts come back in the order they went in.  ``None``, empty and whitespace-only texts get no entity.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from common.tagdir import ENTITIES_TYPE, ENTITY_STRUCT, WORDS_TYPE, word_probs_type

from .host_encoder import HostEncoder, Prepared
from .word_arrays import ranges_index

# torch (and the model code) is imported by TextTagger only: a host worker process, which only encodes, starts
# without it

log = logging.getLogger(__name__)

# batch keys the models read (labels are left out: no loss at inference)
_MODEL_KEYS = ("input_ids", "attention_mask", "casing", "word_index", "scored", "sentence")


@dataclass
class Tagged:
    """Entities of a buffer as flat columns: row ``r`` owns entities ``offsets[r]:offsets[r+1]``."""

    offsets: np.ndarray  # int32 [rows + 1]
    start: np.ndarray  # int32 [entities], character offsets in the entity's text
    end: np.ndarray  # int32 [entities]
    label: pa.Array  # string [entities]
    text: pa.Array  # string [entities]
    score: np.ndarray  # float32 [entities]
    num_words: int = 0
    words: pa.Array | None = None
    """With ``word_probs``: ``list<string>`` per row, the row's words (what a student trains on)."""
    word_probs: pa.Array | None = None
    """With ``word_probs``: ``list<fixed_size_list<float32, labels>>`` per row, each word's probabilities."""

    def to_arrow(self) -> pa.Array:
        """``list<struct<start, end, label, text, score>>``, one list per row."""
        values = pa.StructArray.from_arrays(
            [pa.array(self.start, pa.int32()), pa.array(self.end, pa.int32()), self.label, self.text,
             pa.array(self.score, pa.float32())], fields=list(ENTITY_STRUCT))
        return pa.ListArray.from_arrays(pa.array(self.offsets, pa.int32()), values, type=ENTITIES_TYPE)

    def to_pylist(self) -> list[list[dict]]:
        return self.to_arrow().to_pylist()

    def counts(self) -> dict[str, int]:
        if not len(self.label):
            return {}
        counts = self.label.value_counts()
        return {k.as_py(): n.as_py() for k, n in zip(counts.field("values"), counts.field("counts"))}


# ====================================================================== CPU side


# ====================================================================== model side
@dataclass
class SpanTables:
    """seqeval's ``end_of_chunk``/``start_of_chunk`` for every (previous tag, tag) pair (row ``len(labels)``: the
    state before a sequence), the chunk type of each tag as ``get_entities`` parses it, and the tag that follows a
    sequence (``O``)."""

    ends: np.ndarray  # bool [labels + 1, labels]
    starts: np.ndarray  # bool [labels + 1, labels]
    types: list[str]
    outside: int

    @classmethod
    def of(cls, labels: Sequence[str]) -> "SpanTables":
        from seqeval.metrics.sequence_labeling import end_of_chunk, start_of_chunk

        parsed = [(t[0], t[1:].split("-", maxsplit=1)[-1] or "_") for t in labels] + [("O", "")]
        n = len(labels)
        ends = np.zeros((n + 1, n), dtype=bool)
        starts = np.zeros((n + 1, n), dtype=bool)
        for p, (ptag, ptype) in enumerate(parsed):
            for c, (tag, ctype) in enumerate(parsed[:n]):
                ends[p, c] = end_of_chunk(ptag, tag, ptype, ctype)
                starts[p, c] = start_of_chunk(ptag, tag, ptype, ctype)
        return cls(ends, starts, [t for _, t in parsed[:n]], list(labels).index("O"))


def span_words(preds: np.ndarray, row_first_word: np.ndarray, tables: SpanTables):
    """``(first word, end word (exclusive), label id of the last word)`` of every entity of every row, in order:
    ``common.spans.tags_to_spans`` (seqeval's ``get_entities``) over all rows' tags at once."""
    nw = len(preds)
    if nw == 0:
        return (np.zeros(0, dtype=np.int64),) * 3
    rf = row_first_word
    nonempty = rf[:-1] < rf[1:]
    prev = np.empty(nw, dtype=np.int64)
    prev[1:] = preds[:-1]
    prev[rf[:-1][nonempty]] = len(tables.types)  # the state before a row
    nxt = np.empty(nw, dtype=np.int64)
    nxt[:-1] = preds[1:]
    nxt[rf[1:][nonempty] - 1] = tables.outside  # get_entities appends an "O"
    end_here = np.flatnonzero(tables.ends[preds, nxt])  # an entity ends at this word
    last_start = np.maximum.accumulate(np.where(tables.starts[prev, preds], np.arange(nw), -1))
    own_first = np.repeat(rf[:-1], np.diff(rf))
    begin = np.maximum(last_start[end_here], own_first[end_here])
    return begin, end_here + 1, preds[end_here]


class TextTagger:
    """Tags raw texts with a loaded tagger (``taggers.export.load_tagger``)."""

    def __init__(self, model, windower, device: str | torch.device = "cpu", precision: str = "auto",
                 batch_tokens: int = 0, chunking: str = "sentences", chunk_pieces: int = 0):
        import torch

        from taggers.precision import cast_for_inference, resolve_precision

        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        if self.precision == "fp16" and self.device.type == "cpu":
            log.warning("fp16 on CPU is slow and imprecise; bf16 or fp32 are better choices")
        self.model = model
        self.windower = windower
        self.labels = list(model.labels)
        self.batch_tokens = batch_tokens or (16384 if self.device.type == "cuda" else 4096)
        if self.batch_tokens < windower.max_length:
            raise ValueError(f"--batch-tokens {self.batch_tokens} is less than the model's window of "
                             f"{windower.max_length} word pieces: use at least {windower.max_length}, "
                             "or 0 for the default")
        self.encoder = HostEncoder(windower, self.batch_tokens, chunking, chunk_pieces)
        self.chunking = chunking
        self.chunk_pieces = self.encoder.chunk_pieces
        self.pin = self.device.type == "cuda"
        self.outside_id = self.labels.index("O")
        self._tables = SpanTables.of(self.labels)
        self._types = pa.array(self._tables.types, pa.string())
        cast_for_inference(self.model, self.precision, self.device)

    @classmethod
    def from_export(cls, path: str, device: str | torch.device = "cpu", **kw) -> "TextTagger":
        from taggers.export import load_tagger

        model, windower = load_tagger(path, device)
        return cls(model, windower, device, **kw)

    # ------------------------------------------------------------------ CPU side
    def prepare(self, texts: Sequence) -> Prepared:
        """Words, chunks, windows and padded batches for ``texts`` (``None`` allowed), as torch tensors."""
        texts = list(texts)
        return self.attach(self.encoder.encode(texts), texts)

    def attach(self, prep: Prepared, texts: list) -> Prepared:
        """The encoder's numpy batches as torch tensors (pinned for a GPU), and the texts for the spans."""
        import torch

        prep.texts = texts
        batches = []
        for b in prep.batches:
            if isinstance(b["input_ids"], np.ndarray):
                b = {k: torch.from_numpy(b[k]) for k in _MODEL_KEYS}
            if self.pin:
                b = {k: v.pin_memory() for k, v in b.items()}
            batches.append(b)
        prep.batches = batches
        return prep

    # ------------------------------------------------------------------ model side
    def predict(self, prep: Prepared) -> tuple[np.ndarray, np.ndarray]:
        """Per-word (label id, probability) over the buffer's flat word list."""
        flat = self._predict(prep)
        return flat.label_ids, flat.probs

    def _predict(self, prep: Prepared, distributions: bool = False):
        import torch

        from taggers.predict import predict_batches

        flat = predict_batches(self.model, prep.batches, torch.from_numpy(prep.chunk_first_word), prep.num_words,
                               self.device, self.precision, distributions)
        if prep.num_words and flat.label_ids.min() < 0:
            missing = int((flat.label_ids < 0).sum())
            raise AssertionError(f"{missing} words got no prediction (windows do not cover every word)")
        return flat

    def run(self, prep: Prepared, word_probs: bool = False) -> Tagged:
        """Entities of every text of the buffer, in order; with ``word_probs`` also every row's words and each
        word's probabilities over the labels (a teacher's output for distillation)."""
        flat = self._predict(prep, word_probs)
        tagged = self.spans(prep, flat.label_ids, flat.probs)
        if word_probs:
            rf = pa.array(prep.row_first_word.astype(np.int32))
            word_row = np.repeat(np.arange(prep.num_rows), np.diff(prep.row_first_word))
            words = _substrings(prep.texts, word_row, prep.word_start, prep.word_end)
            tagged.words = pa.ListArray.from_arrays(rf, words, type=WORDS_TYPE)
            dists = pa.FixedSizeListArray.from_arrays(pa.array(flat.distributions.ravel(), pa.float32()),
                                                      len(self.labels))
            tagged.word_probs = pa.ListArray.from_arrays(rf, dists, type=word_probs_type(len(self.labels)))
        return tagged

    def spans(self, prep: Prepared, preds: np.ndarray, probs: np.ndarray) -> Tagged:
        """Word predictions to entities: spans, character offsets, texts and scores as Arrow columns."""
        rf = prep.row_first_word
        begin, end, label = span_words(preds, rf, self._tables)
        row = np.searchsorted(rf, begin, side="right") - 1
        offsets = np.zeros(prep.num_rows + 1, dtype=np.int32)
        np.cumsum(np.bincount(row, minlength=prep.num_rows), out=offsets[1:])
        start = prep.word_start[begin]
        stop = prep.word_end[end - 1]
        score = _span_means(probs, begin, end)
        types = pa.DictionaryArray.from_arrays(pa.array(label.astype(np.int32)), self._types).cast(pa.string())
        return Tagged(offsets, start.astype(np.int32), stop.astype(np.int32), types,
                      _substrings(prep.texts, row, start, stop), score, prep.num_words)

    def tag(self, texts: Sequence) -> list[list[dict]]:
        """Convenience: ``[[{"start", "end", "label", "text", "score"}, ...] per text]``."""
        return self.run(self.prepare(texts)).to_pylist()


def _span_means(probs: np.ndarray, begin: np.ndarray, end: np.ndarray) -> np.ndarray:
    """``probs[a:b].mean()`` of every span, bit for bit as numpy computes it for each slice (float32)."""
    out = np.empty(len(begin), dtype=np.float32)
    n = end - begin
    for length in np.unique(n).tolist():
        sel = np.flatnonzero(n == length)
        if length <= 64:  # a [spans, length] mean reduces each row as the 1-d mean does
            out[sel] = probs[begin[sel, None] + np.arange(length)[None, :]].mean(axis=1)
        else:
            out[sel] = [probs[a:b].mean() for a, b in zip(begin[sel].tolist(), end[sel].tolist())]
    return out


def _substrings(texts: list, row: np.ndarray, start: np.ndarray, stop: np.ndarray) -> pa.Array:
    """``texts[row[i]][start[i]:stop[i]]`` for every i, as an Arrow string array (one gather over UTF-8 bytes)."""
    if not len(row):
        return pa.array([], pa.string())
    texts = [t or "" for t in texts]
    joined = "\n".join(texts)
    text_start = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1, out=text_start[1:])
    a, b = text_start[row] + start, text_start[row] + stop
    data = np.frombuffer(joined.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    if len(data) != len(joined):  # not ASCII: character offsets to byte offsets
        codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        width = 1 + (codes >= 0x80).astype(np.int64) + (codes >= 0x800) + (codes >= 0x10000)
        byte_at = np.zeros(len(codes) + 1, dtype=np.int64)
        np.cumsum(width, out=byte_at[1:])
        a, b = byte_at[a], byte_at[b]
    value_offsets = np.zeros(len(a) + 1, dtype=np.int32)
    np.cumsum(b - a, out=value_offsets[1:])
    values = data[ranges_index(a, b)]
    return pa.StringArray.from_buffers(len(a), pa.py_buffer(value_offsets), pa.py_buffer(values))
