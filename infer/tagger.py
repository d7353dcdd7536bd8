"""Raw texts in, entity spans with exact character offsets out (either tagger's export).

:class:`TextTagger` splits the work in two so that a background thread can do
the CPU part while the model runs (see :mod:`infer.runner`):

* :meth:`TextTagger.prepare` (CPU, no model): texts -> words with offsets
  (:func:`infer.words.split_words`) -> word-piece windows
  (``WordPieceEncoder.encode``) -> windows sorted by length and cut into
  token-budget batches (``token_budget_batches``: little padding) -> padded
  tensors (pinned when the model is on a GPU).
* Long texts (more word pieces than the model's window, e.g. many Reuters
  articles): with ``chunking="sentences"`` (the default) the text is first
  cut at sentence-ish boundaries (:func:`infer.words.sentence_chunks`) into
  chunks that each fill up to one window (``chunk_pieces``, default the whole
  window), so every piece is computed once and every word keeps up to a
  window of context from its own and neighbouring sentences; a single
  "sentence" longer than a window, and every long text with
  ``chunking="windows"``, is split by the windower into overlapping windows
  (each word predicted from the window where it has the most context; about
  twice the compute).  Nothing is truncated or dropped either way.  Texts that
  fit in one window are never cut, so they are tagged exactly as one
  model input (as the Hugging Face pipeline does).
* :meth:`TextTagger.run` (model): the project's one prediction path
  (:func:`taggers.predict.predict_batches`: forward + ``model.decode`` per
  batch, per-word predictions scattered into one flat tensor on the device, one
  device-to-host copy per buffer), then IOB2 word
  tags are read as spans the conlleval way (``common.spans.tags_to_spans``)
  and mapped back to character offsets of the original text.  The score of a
  span is the mean probability of its words' predicted tags.

Texts come back in the order they went in.  ``None``, empty and
whitespace-only texts get no entity.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from common.batching import collate_windows, token_budget_batches
from common.data import Sentence, split_tag
from common.spans import tags_to_spans
from taggers.export import load_tagger
from taggers.precision import DTYPES, resolve_precision
from taggers.predict import predict_batches

from .words import sentence_chunks, split_words

log = logging.getLogger(__name__)

ENTITY_STRUCT = pa.struct([
    pa.field("start", pa.int32()),
    pa.field("end", pa.int32()),
    pa.field("label", pa.string()),
    pa.field("text", pa.string()),
    pa.field("score", pa.float32()),
])
ENTITIES_TYPE = pa.list_(pa.field("item", ENTITY_STRUCT))

CHUNKING = ("sentences", "windows")
# batch keys the models read (labels are left out: no loss at inference)
_MODEL_KEYS = ("input_ids", "attention_mask", "casing", "word_index", "scored", "sentence")


@dataclass
class Prepared:
    """One buffer of texts, ready for the model (see :meth:`TextTagger.prepare`)."""

    texts: list
    starts: list[list[int]]
    ends: list[list[int]]
    row_first_word: np.ndarray  # [rows + 1] offsets of each row's words in the flat word list
    chunk_first_word: torch.Tensor  # [chunks] flat offset of each chunk's first word
    batches: list[dict[str, torch.Tensor]] = field(default_factory=list)
    num_pieces: int = 0
    padded_pieces: int = 0

    @property
    def num_rows(self) -> int:
        return len(self.texts)

    @property
    def num_words(self) -> int:
        return int(self.row_first_word[-1])


@dataclass
class Tagged:
    """Entities of a buffer as flat columns: row ``r`` owns entities ``offsets[r]:offsets[r+1]``."""

    offsets: list[int]
    start: list[int]
    end: list[int]
    label: list[str]
    text: list[str]
    score: list[float]
    num_words: int = 0

    def to_arrow(self) -> pa.Array:
        """``list<struct<start, end, label, text, score>>``, one list per row."""
        values = pa.StructArray.from_arrays(
            [pa.array(self.start, pa.int32()), pa.array(self.end, pa.int32()), pa.array(self.label, pa.string()),
             pa.array(self.text, pa.string()), pa.array(self.score, pa.float32())],
            fields=list(ENTITY_STRUCT))
        return pa.ListArray.from_arrays(pa.array(self.offsets, pa.int32()), values, type=ENTITIES_TYPE)

    def to_pylist(self) -> list[list[dict]]:
        out = []
        for r in range(len(self.offsets) - 1):
            out.append([{"start": self.start[k], "end": self.end[k], "label": self.label[k], "text": self.text[k],
                         "score": self.score[k]} for k in range(self.offsets[r], self.offsets[r + 1])])
        return out

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.label))


class TextTagger:
    """Tags raw texts with a loaded tagger (``taggers.export.load_tagger``)."""

    def __init__(self, model, windower, device: str | torch.device = "cpu", precision: str = "auto",
                 batch_tokens: int = 0, chunking: str = "sentences", chunk_pieces: int = 0):
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
        if chunking not in CHUNKING:
            raise ValueError(f"chunking must be one of {CHUNKING}, got {chunking!r}")
        self.chunking = chunking
        window = windower.max_length - windower.num_special
        self.chunk_pieces = min(chunk_pieces, window) if chunk_pieces > 0 else window
        self.pin = self.device.type == "cuda"
        self.outside_id = self.labels.index("O")
        self.types = [split_tag(t)[1] for t in self.labels]
        dtype = DTYPES[self.precision]
        self.model.eval()
        if dtype != torch.float32:
            self.model.to(dtype)
            if getattr(self.model, "crf", None) is not None:
                self.model.crf.float()

    @classmethod
    def from_export(cls, path: str, device: str | torch.device = "cpu", **kw) -> "TextTagger":
        model, windower = load_tagger(path, device)
        return cls(model, windower, device, **kw)

    # ------------------------------------------------------------------ CPU side
    def prepare(self, texts: Sequence) -> Prepared:
        """Words, chunks, windows and padded batches for ``texts`` (``None`` allowed)."""
        texts = list(texts)
        all_words: list[list[str]] = []
        all_starts: list[list[int]] = []
        all_ends: list[list[int]] = []
        for text in texts:
            words, starts, ends = split_words(text) if text else ([], [], [])
            all_words.append(words)
            all_starts.append(starts)
            all_ends.append(ends)
        budget = self.chunk_pieces
        # a quick bound (no tokenizer call) for texts that surely fit: a word gives at most one piece per
        # UTF-8 byte plus one (byte-level BPE, SentencePiece's word marker)
        long_rows = [r for r, t in enumerate(texts) if self.chunking == "sentences" and t
                     and len(t.encode("utf-8")) + len(all_words[r]) > budget]
        sizes: dict[int, list[int]] = {}
        if long_rows:
            pieces = self.windower.word_pieces([all_words[r] for r in long_rows])
            sizes = {r: [min(len(p), budget) for p in wp] for r, wp in zip(long_rows, pieces)}
        row_first = np.zeros(len(texts) + 1, dtype=np.int64)
        sentences: list[Sentence] = []
        chunk_first: list[int] = []
        total = 0
        for r, text in enumerate(texts):
            words = all_words[r]
            if r in sizes:
                chunks = sentence_chunks(text, words, all_starts[r], all_ends[r], budget, sizes[r])
            else:
                chunks = [(0, len(words))] if words else []
            for a, b in chunks:
                sentences.append(Sentence(tokens=words[a:b], doc=r, index=len(sentences)))
                chunk_first.append(total + a)
            total += len(words)
            row_first[r + 1] = total
        prep = Prepared(texts, all_starts, all_ends, row_first, torch.tensor(chunk_first, dtype=torch.long))
        if not sentences:
            return prep
        windows = self.windower.windows(sentences, with_labels=False)
        lengths = [len(w) for w in windows]
        for idx in token_budget_batches(lengths, self.batch_tokens, shuffle=False):
            batch = collate_windows([windows[i] for i in idx], self.windower.pad_id)
            batch = {k: batch[k] for k in _MODEL_KEYS}
            if self.pin:
                batch = {k: v.pin_memory() for k, v in batch.items()}
            prep.batches.append(batch)
            prep.num_pieces += sum(lengths[i] for i in idx)
            prep.padded_pieces += batch["input_ids"].numel()
        return prep

    # ------------------------------------------------------------------ model side
    def predict(self, prep: Prepared) -> tuple[np.ndarray, np.ndarray]:
        """Per-word (label id, probability) over the buffer's flat word list."""
        flat = predict_batches(self.model, prep.batches, prep.chunk_first_word, prep.num_words, self.device,
                               self.precision)
        if prep.num_words and flat.label_ids.min() < 0:
            missing = int((flat.label_ids < 0).sum())
            raise AssertionError(f"{missing} words got no prediction (windows do not cover every word)")
        return flat.label_ids, flat.probs

    def run(self, prep: Prepared) -> Tagged:
        """Entities of every text of the buffer, in order."""
        preds, probs = self.predict(prep)
        out = Tagged([0], [], [], [], [], [], prep.num_words)
        row_first = prep.row_first_word
        rows_with_entities = set()
        nonzero = np.flatnonzero(preds != self.outside_id)
        if nonzero.size:
            rows_with_entities = set(np.searchsorted(row_first, nonzero, side="right").tolist())
        labels = self.labels
        for r in range(prep.num_rows):
            if r + 1 in rows_with_entities:  # searchsorted(side=right) gives r + 1 for words of row r
                lo, hi = int(row_first[r]), int(row_first[r + 1])
                ids = preds[lo:hi].tolist()
                p = probs[lo:hi]
                text, starts, ends = prep.texts[r], prep.starts[r], prep.ends[r]
                for a, b, etype in tags_to_spans([labels[i] for i in ids]):
                    s, e = starts[a], ends[b - 1]
                    out.start.append(s)
                    out.end.append(e)
                    out.label.append(etype)
                    out.text.append(text[s:e])
                    out.score.append(float(p[a:b].mean()))
            out.offsets.append(len(out.start))
        return out

    def tag(self, texts: Sequence) -> list[list[dict]]:
        """Convenience: ``[[{"start", "end", "label", "text", "score"}, ...] per text]``."""
        return self.run(self.prepare(texts)).to_pylist()
