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
  ``chunking="windows"``, is split by the encoder into overlapping windows
  (each word predicted from the window where it has the most context; about
  twice the compute).  Nothing is truncated or dropped either way.  Texts that
  fit in one window are never cut, so they are tagged exactly as one
  model input (as the Hugging Face pipeline does).
* :meth:`TextTagger.run` (model): forward + ``model.decode`` per batch; the
  per-word predictions are scattered into one flat tensor on the device (no
  per-piece Python loop, one device-to-host copy per buffer), then IOB2 word
  tags are read as spans the conlleval way (``common.spans.tags_to_spans``)
  and mapped back to character offsets of the original text.  The score of a
  span is the mean probability of its words' predicted tags.

Texts come back in the order they went in.  ``None``, empty and
whitespace-only texts get no entity.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from common.batching import collate_windows, token_budget_batches
from common.data import Sentence, split_tag
from common.spans import tags_to_spans

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

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHUNKING = ("sentences", "windows")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# batch keys the models read (labels are left out: no loss at inference)
_MODEL_KEYS = ("input_ids", "attention_mask", "casing", "word_index", "scored", "sentence")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix products run natively (about 1.5-2x fp32 speed)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # pragma: no cover - older torch
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on GPUs that support it, else fp16; on CPU bf16 where the CPU computes it natively
    (AVX512-BF16/AMX), else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


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
        out: dict[str, int] = {}
        for t in self.label:
            out[t] = out.get(t, 0) + 1
        return out


class TextTagger:
    """Tags raw texts with a loaded tagger (``train.export.load_tagger``)."""

    def __init__(self, model, encoder, device: str | torch.device = "cpu", precision: str = "auto",
                 batch_tokens: int = 0, chunking: str = "sentences", chunk_pieces: int = 0):
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        if self.precision == "fp16" and self.device.type == "cpu":
            log.warning("fp16 on CPU is slow and imprecise; bf16 or fp32 are better choices")
        self.model = model
        self.encoder = encoder
        self.labels = list(getattr(model, "labels", encoder.labels))
        self.batch_tokens = batch_tokens or (16384 if self.device.type == "cuda" else 4096)
        if self.batch_tokens < encoder.max_length:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) must be at least the model's window "
                             f"({encoder.max_length} pieces)")
        if chunking not in CHUNKING:
            raise ValueError(f"chunking must be one of {CHUNKING}, got {chunking!r}")
        self.chunking = chunking
        window = encoder.max_length - encoder.num_special
        self.chunk_pieces = min(chunk_pieces, window) if chunk_pieces > 0 else window
        self.pin = self.device.type == "cuda"
        self.outside_id = self.labels.index("O")
        self.types = [split_tag(t)[1] for t in self.labels]
        dtype = _DTYPES[self.precision]
        self.model.eval()
        if dtype != torch.float32:
            self.model.to(dtype)
            if getattr(self.model, "crf", None) is not None:
                self.model.crf.float()

    @classmethod
    def from_export(cls, path: str, device: str | torch.device = "cpu", **kw) -> "TextTagger":
        from train.export import load_tagger

        model, encoder = load_tagger(path, device)
        return cls(model, encoder, device, **kw)

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
            pieces = self.encoder.word_pieces([all_words[r] for r in long_rows])
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
        windows = self.encoder.encode(sentences, with_labels=False)
        lengths = [len(w) for w in windows]
        for idx in token_budget_batches(lengths, self.batch_tokens, shuffle=False):
            batch = collate_windows([windows[i] for i in idx], self.encoder.pad_id)
            batch = {k: batch[k] for k in _MODEL_KEYS}
            if self.pin:
                batch = {k: v.pin_memory() for k, v in batch.items()}
            prep.batches.append(batch)
            prep.num_pieces += sum(lengths[i] for i in idx)
            prep.padded_pieces += batch["input_ids"].numel()
        return prep

    # ------------------------------------------------------------------ model side
    def _autocast(self):
        # weights are already in the target dtype; autocast only covers ops that would mix dtypes
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])

    def _decode(self, batch, outputs):
        return self.model.decode(batch, outputs)

    @torch.inference_mode()
    def predict(self, prep: Prepared) -> tuple[np.ndarray, np.ndarray]:
        """Per-word (label id, probability) over the buffer's flat word list."""
        n = prep.num_words
        preds = torch.full((n,), -1, dtype=torch.long, device=self.device)
        probs = torch.zeros(n, dtype=torch.float32, device=self.device)
        if not prep.batches:
            return preds.cpu().numpy(), probs.cpu().numpy()
        chunk_first = prep.chunk_first_word.to(self.device, non_blocking=True)
        for cpu_batch in prep.batches:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in cpu_batch.items()}
            with self._autocast():
                outputs = self.model(batch)
            pred, prob = self._decode(batch, outputs)
            mask = batch["word_index"] >= 0
            sent = batch["sentence"][:, None].expand_as(mask)[mask]
            flat = chunk_first[sent] + batch["word_index"][mask]
            preds[flat] = pred[mask]
            probs[flat] = prob[mask].float()
        preds_np, probs_np = preds.cpu().numpy(), probs.cpu().numpy()
        if n and preds_np.min() < 0:
            missing = int((preds_np < 0).sum())
            raise AssertionError(f"{missing} words got no prediction (windows do not cover every word)")
        return preds_np, probs_np

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
