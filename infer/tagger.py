"""Raw texts in, entity spans with exact character offsets out (either tagger's export).

The work is split in two so that the CPU part runs beside the model (see :mod:`infer.runner`):

* :class:`HostEncoder` (CPU, no model, picklable: it also runs in worker processes) turns a buffer of
  texts into model batches with a few numpy passes over flat arrays, never a Python object per word, window
  or sentence; the same windows and batches as training's windower (:mod:`infer.host_encoder` says how);
* :meth:`TextTagger.run` (model): the project's one prediction path
  (:func:`taggers.predict.predict_on_device`), then IOB2/BIOES word tags are read as spans the conlleval way
  (seqeval's ``get_entities``, as a transition table over all words at once) where the predictions are, on
  the model's device (:func:`find_spans`: row, first word, end word, label and score of each span, copied to
  the host once a buffer; :meth:`TextTagger.run_spans`); the host maps them back to character offsets and
  Arrow columns (:meth:`TextTagger.entities`; entity texts gathered from the UTF-8 bytes of the buffer), in
  ner-tag in an output thread of its own (:mod:`infer.output_stage`).  The score of a span is the mean
  probability of its words' predicted tags.

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
_FEATURE_KEYS = ("chars",)
"""Batch keys of the features only some models read (present when the windower makes them)."""


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

    def on(self, device):
        """``ends`` and ``starts`` as bool tensors on ``device`` (made once per device)."""
        import torch

        cache = self.__dict__.setdefault("_on", {})
        key = str(device)
        if key not in cache:
            cache[key] = (torch.from_numpy(self.ends).to(device), torch.from_numpy(self.starts).to(device))
        return cache[key]


def span_words(preds, row_first_word, tables: SpanTables):
    """``(first word, end word (exclusive), label id of the last word)`` of every entity of every row, in order,
    as int64 tensors on ``preds``' device: ``common.spans.tags_to_spans`` (seqeval's ``get_entities``) over all
    rows' tags at once, read off the transition table."""
    import torch

    preds = torch.as_tensor(preds)
    dev = preds.device
    rf = torch.as_tensor(row_first_word, device=dev).long()
    nw = preds.numel()
    if nw == 0:
        return (torch.zeros(0, dtype=torch.long, device=dev),) * 3
    ends, starts = tables.on(dev)
    # word w starts a row when w is some row's first word, ends one when w + 1 is (empty rows add nothing new)
    first = torch.zeros(nw + 1, dtype=torch.bool, device=dev).index_fill_(0, rf[:-1], True)[:nw]
    last = torch.zeros(nw + 1, dtype=torch.bool, device=dev).index_fill_(0, rf[1:], True)[1:]
    prev = torch.where(first, len(tables.types), preds.roll(1))  # the state before a row
    nxt = torch.where(last, tables.outside, preds.roll(-1))  # get_entities appends an "O"
    end_here = ends[preds, nxt].nonzero().flatten()  # an entity ends at this word
    at = torch.arange(nw, device=dev)
    last_start = torch.where(starts[prev, preds], at, -1).cummax(0).values
    own_first = rf[torch.searchsorted(rf, end_here, right=True) - 1]
    begin = torch.maximum(last_start[end_here], own_first)
    return begin, end_here + 1, preds[end_here].long()


def span_means(probs, begin, end):
    """``probs[a:b].mean()`` of every span, bit for bit as numpy computes it for each float32 slice (its
    pairwise summation: sequential below 8 values, 8 interleaved sums up to 128, halves above), as tensor ops
    on ``probs``' device."""
    import torch

    length = end - begin
    out = torch.empty(len(begin), dtype=torch.float32, device=probs.device)
    if not len(begin):
        return out
    width = min(int(length.max()), 128)
    at = torch.arange(width, device=probs.device)
    x = probs[(begin[:, None] + at).clamp(max=len(probs) - 1)]
    x = torch.where(at < length[:, None], x, 0.0)  # adding 0.0 leaves every partial sum as it is
    seq = torch.zeros_like(out)
    for i in range(min(width, 7)):
        seq = seq + x[:, i]
    if width >= 8:
        blocks = length // 8
        r = x[:, :8]
        for b in range(1, width // 8):
            r = r + torch.where((b < blocks)[:, None], x[:, 8 * b:8 * b + 8], 0.0)
        pw = ((r[:, 0] + r[:, 1]) + (r[:, 2] + r[:, 3])) + ((r[:, 4] + r[:, 5]) + (r[:, 6] + r[:, 7]))
        for k in range(7):
            i = 8 * blocks + k
            pw = pw + torch.where(i < length, x.gather(1, i.clamp(max=width - 1)[:, None])[:, 0], 0.0)
        seq = torch.where(length < 8, seq, pw)
    out = seq / length.float()
    if width == 128 and bool((length > 128).any()):  # long entities: one gather per distinct length
        for n in torch.unique(length[length > 128]).tolist():
            sel = (length == n).nonzero().flatten()
            out[sel] = _pairwise_sum(probs[begin[sel, None] + torch.arange(n, device=probs.device)]) / n
    return out


def _pairwise_sum(x):
    """numpy's float32 pairwise sum of each row of ``x`` [spans, n]."""
    import torch

    n = x.size(1)
    if n < 8:
        res = torch.zeros(x.size(0), dtype=x.dtype, device=x.device)
        for i in range(n):
            res = res + x[:, i]
        return res
    if n <= 128:
        full = n - n % 8
        r = x[:, :8]
        for i in range(8, full, 8):
            r = r + x[:, i:i + 8]
        res = ((r[:, 0] + r[:, 1]) + (r[:, 2] + r[:, 3])) + ((r[:, 4] + r[:, 5]) + (r[:, 6] + r[:, 7]))
        for i in range(full, n):
            res = res + x[:, i]
        return res
    half = n // 2 - (n // 2) % 8
    return _pairwise_sum(x[:, :half]) + _pairwise_sum(x[:, half:])


@dataclass
class FoundSpans:
    """The entities of a buffer as flat host arrays, in order: row, first word, end word (exclusive, both over
    the buffer's flat word list), label id, score."""

    row: np.ndarray
    begin: np.ndarray
    end: np.ndarray
    label: np.ndarray
    score: np.ndarray  # float32
    missing_words: int = 0
    """Words that got no prediction (0 unless the windows do not cover every word)."""


def find_spans(label_ids, probs, row_first_word, tables: SpanTables) -> FoundSpans:
    """Per-word predictions (tensors on the model's device; -1: no prediction) to entity spans, computed where
    the predictions are and brought to the host in one copy."""
    import torch

    rf = torch.as_tensor(row_first_word).to(label_ids.device, non_blocking=True)
    begin, end, label = span_words(label_ids.clamp(min=0), rf, tables)
    score = span_means(probs, begin, end)
    row = torch.searchsorted(rf, begin, right=True) - 1
    missing = (label_ids < 0).sum().view(1).int()
    packed = torch.cat([torch.stack([row.int(), begin.int(), end.int(), label.int(), score.view(torch.int32)])
                        .flatten(), missing]).cpu().numpy()
    cols = packed[:-1].reshape(5, -1)
    return FoundSpans(cols[0].astype(np.int64), cols[1].astype(np.int64), cols[2].astype(np.int64),
                      cols[3].astype(np.int64), cols[4].view(np.float32), int(packed[-1]))


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
                b = {k: torch.from_numpy(b[k]) for k in _MODEL_KEYS + _FEATURE_KEYS if k in b}
            if self.pin:
                b = {k: v.pin_memory() for k, v in b.items()}
            batches.append(b)
        prep.batches = batches
        return prep

    # ------------------------------------------------------------------ model side
    def predict(self, prep: Prepared) -> tuple[np.ndarray, np.ndarray]:
        """Per-word (label id, probability) over the buffer's flat word list."""
        flat = self._predict(prep).to_host()
        self._check_covered(int((flat.label_ids < 0).sum()))
        return flat.label_ids, flat.probs

    def _predict(self, prep: Prepared, distributions: bool = False):
        import torch

        from taggers.predict import predict_on_device

        return predict_on_device(self.model, prep.batches, torch.from_numpy(prep.chunk_first_word), prep.num_words,
                                 self.device, self.precision, distributions)

    @staticmethod
    def _check_covered(missing: int) -> None:
        if missing:
            raise AssertionError(f"{missing} words got no prediction (windows do not cover every word)")

    def run(self, prep: Prepared, word_probs: bool = False) -> Tagged:
        """Entities of every text of the buffer, in order; with ``word_probs`` also every row's words and each
        word's probabilities over the labels (a teacher's output for distillation)."""
        return self.entities(prep, *self.run_spans(prep, word_probs))

    def run_spans(self, prep: Prepared, word_probs: bool = False):
        """The model side of :meth:`run`: the buffer's spans as flat arrays (and with ``word_probs`` every word's
        distribution), decoded on the model's device and copied to the host once."""
        flat = self._predict(prep, word_probs)
        found = find_spans(flat.label_ids, flat.probs, prep.row_first_word, self._tables)
        self._check_covered(found.missing_words)
        return found, (flat.distributions.cpu().numpy() if word_probs else None)

    def entities(self, prep: Prepared, found: FoundSpans, distributions: np.ndarray | None = None) -> Tagged:
        """The host side of :meth:`run`: spans to character offsets, texts and scores as Arrow columns (and the
        words and their distributions)."""
        tagged = self._tagged(prep, found)
        if distributions is not None:
            rf = pa.array(prep.row_first_word.astype(np.int32))
            word_row = np.repeat(np.arange(prep.num_rows), np.diff(prep.row_first_word))
            words = _substrings(prep.texts, word_row, prep.word_start, prep.word_end)
            tagged.words = pa.ListArray.from_arrays(rf, words, type=WORDS_TYPE)
            dists = pa.FixedSizeListArray.from_arrays(pa.array(distributions.ravel(), pa.float32()),
                                                      len(self.labels))
            tagged.word_probs = pa.ListArray.from_arrays(rf, dists, type=word_probs_type(len(self.labels)))
        return tagged

    def spans(self, prep: Prepared, preds, probs) -> Tagged:
        """Word predictions (arrays or tensors) to entities: spans, character offsets, texts and scores."""
        import torch

        return self._tagged(prep, find_spans(torch.as_tensor(preds), torch.as_tensor(probs), prep.row_first_word,
                                             self._tables))

    def _tagged(self, prep: Prepared, found: FoundSpans) -> Tagged:
        row = found.row
        offsets = np.zeros(prep.num_rows + 1, dtype=np.int32)
        np.cumsum(np.bincount(row, minlength=prep.num_rows), out=offsets[1:])
        start = prep.word_start[found.begin]
        stop = prep.word_end[found.end - 1]
        types = pa.DictionaryArray.from_arrays(pa.array(found.label.astype(np.int32)), self._types).cast(pa.string())
        return Tagged(offsets, start.astype(np.int32), stop.astype(np.int32), types,
                      _substrings(prep.texts, row, start, stop), found.score, prep.num_words)

    def tag(self, texts: Sequence) -> list[list[dict]]:
        """Convenience: ``[[{"start", "end", "label", "text", "score"}, ...] per text]``."""
        return self.run(self.prepare(texts)).to_pylist()


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
