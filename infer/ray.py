"""Tagging a Ray Data dataset with ner-tag's own code path: ``map_batches(NerTagger, ...)``.

    import ray
    from infer.ray import NerTagger

    ds = ray.data.read_parquet("s3://bucket/corpus/")
    ds = ds.map_batches(NerTagger, fn_constructor_kwargs={"model": "/models/bert/export"},
                        batch_size=16384, batch_format="pyarrow", num_gpus=1,
                        compute=ray.data.ActorPoolStrategy(size=4))
    ds.write_parquet("s3://bucket/tagged/")

or, the same with the model checked on the driver first (:func:`tag_dataset`)::

    tag_dataset(ray.data.read_parquet("s3://bucket/corpus/"), "/models/bert/export", actors=4,
                num_gpus=1).write_parquet("s3://bucket/tagged/")

Each actor loads the model once (an export written by ``ner-train`` or a Hugging Face token-classification
folder, as ``ner-tag --model`` takes it) and maps a batch to the same batch plus the ``entities`` column
ner-tag writes: the same struct, the same character offsets, the same spans for the same model and
precision, because the work is done by the same objects (:class:`infer.tagger.TextTagger` and its
:class:`infer.host_encoder.HostEncoder`: words, length-sorted token-budget batches, nothing truncated).
``None``, empty and whitespace-only texts get no entity; a text column that is not a string column, a
missing text column or an input that already has an ``entities`` column is an
:class:`infer.sources.InputError`, and a model that cannot be loaded an :class:`taggers.export.ExportError`
naming it, as in ner-tag.

This module does not import Ray (Ray imports it in each actor); ``pip install .[ray]`` installs Ray Data.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common.teacher import TEACHER_LABELS_KEY

from .memory import bound_malloc, trim_malloc
from .sources import InputError, _is_string, column_texts
from .tagger import ENTITIES_TYPE, WORDS_TYPE, word_probs_type

log = logging.getLogger(__name__)


def buffer_bounds(text_bytes: np.ndarray, max_rows: int, max_chars: int) -> list[tuple[int, int]]:
    """``[start, end)`` row ranges of consecutive buffers, as ner-tag cuts a part (``--buffer-rows``,
    ``--buffer-chars``): a buffer ends when it holds ``max_rows`` rows or at least ``max_chars`` bytes of text."""
    bounds = []
    start, n = 0, len(text_bytes)
    ends = np.cumsum(text_bytes, dtype=np.int64)
    while start < n:
        before = ends[start - 1] if start else 0
        # the first row at which the buffer reaches max_chars, else max_rows rows
        by_chars = int(np.searchsorted(ends, before + max_chars, side="left")) + 1
        end = min(n, start + max_rows, max(by_chars, start + 1))
        bounds.append((start, end))
        start = end
    return bounds


class NerTagger:
    """A Ray Data callable class: ``batch`` (a ``pyarrow.Table``, or a pandas DataFrame) -> the same batch
    plus ``entities: list<struct<start, end, label, text, score>>`` (and ``words``/``word_probs`` with
    ``word_probs=True``).

    The options are ner-tag's of the same name.  ``device="auto"`` takes the GPU Ray gave the actor
    (``num_gpus=1``), else the CPU; ``threads`` sets torch's threads (0: as Ray set them, the actor's
    ``num_cpus``).  Rows are tagged in buffers of at most ``buffer_rows`` rows / ``buffer_chars`` bytes of
    text, each sorted by length into token-budget batches, as ner-tag does; a thread prepares the next buffer of
    a batch while the model runs on this one, so a ``batch_size`` of a few ``buffer_rows`` (:func:`tag_dataset`:
    4) keeps the model busy.
    """

    def __init__(self, model: str, text_column: str = "text", device: str = "auto", precision: str = "auto",
                 batch_tokens: int = 0, chunking: str = "sentences", chunk_pieces: int = 0, threads: int = 0,
                 buffer_rows: int = 4096, buffer_chars: int = 2_000_000, word_probs: bool = False):
        import torch

        from common.distributed import resolve_device
        from taggers.loading import quiet_transformers
        from taggers.precision import resolve_precision

        from .options import TagOptions
        from .runner import _load_tagger

        if buffer_rows < 1 or buffer_chars < 1:
            raise ValueError(f"buffer_rows and buffer_chars must be at least 1, got {buffer_rows}, {buffer_chars}")
        quiet_transformers()
        bound_malloc()
        if threads:
            torch.set_num_threads(threads)
        opts = TagOptions(model=model, inputs=[], output="", text_column=text_column, batch_tokens=batch_tokens,
                          device=device, precision=precision, chunking=chunking, chunk_pieces=chunk_pieces,
                          threads=threads, buffer_rows=buffer_rows, buffer_chars=buffer_chars,
                          word_probs=word_probs)
        dev = resolve_device(device)
        self.opts = opts
        self.tagger = _load_tagger(opts, dev, resolve_precision(precision, dev))  # ner-tag's loader and errors
        self.labels = list(self.tagger.labels)
        log.info("loaded %s on %s (%s, %d threads)", model, dev, self.tagger.precision, torch.get_num_threads())

    def __call__(self, batch: Any) -> Any:
        if isinstance(batch, pa.Table):
            return self.tag_table(batch)
        if isinstance(batch, pa.RecordBatch):
            return self.tag_table(pa.Table.from_batches([batch]))
        if type(batch).__name__ == "DataFrame":  # pandas: batch_format="pandas"
            try:
                table = pa.Table.from_pandas(batch, preserve_index=False)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise InputError(f"the batch cannot be read as Arrow columns (is text column "
                                 f"{self.opts.text_column!r} all strings?): {e}") from None
            return self.tag_table(table).to_pandas()
        raise TypeError(f"NerTagger takes pyarrow or pandas batches, got {type(batch).__name__}: "
                        "pass batch_format=\"pyarrow\" to map_batches")

    def tag_table(self, table: pa.Table) -> pa.Table:
        """``table`` plus the ``entities`` column (and ``words``/``word_probs``), rows in the same order."""
        column = self.opts.text_column
        if column not in table.column_names:
            raise InputError(f"no text column {column!r} (columns: {table.column_names}); "
                             "choose it with text_column=")
        if not _is_string(table.schema.field(column).type):
            raise InputError(f"text column {column!r} has type {table.schema.field(column).type}, expected a "
                             "string column; choose another with text_column=")
        added = ["entities"] + (["words", "word_probs"] if self.opts.word_probs else [])
        if set(added) & set(table.column_names):
            raise InputError(f"the input has a column named {sorted(set(added) & set(table.column_names))}, "
                             "which the output adds; drop or rename it first")
        text = table.column(column)
        sizes = pc.fill_null(pc.binary_length(text.cast(pa.string()) if not pa.types.is_string(text.type)
                                              else text), 0)
        sizes = sizes.to_numpy() if table.num_rows else np.zeros(0, np.int64)
        outputs: dict[str, list] = {name: [] for name in added}
        bounds = buffer_bounds(sizes, self.opts.buffer_rows, self.opts.buffer_chars)

        def prepare(i):
            a, b = bounds[i]
            return self.tagger.prepare(column_texts(text.slice(a, b - a)))

        # as in ner-tag, a thread prepares the next buffer while the model runs on this one
        with ThreadPoolExecutor(1, thread_name_prefix="ner-tag-prepare") as pool:
            ahead = pool.submit(prepare, 0) if bounds else None
            for i in range(len(bounds)):
                prep = ahead.result()
                ahead = pool.submit(prepare, i + 1) if i + 1 < len(bounds) else None
                tagged = self.tagger.run(prep, self.opts.word_probs)
                outputs["entities"].append(tagged.to_arrow())
                if self.opts.word_probs:
                    outputs["words"].append(tagged.words)
                    outputs["word_probs"].append(tagged.word_probs)
                del prep, tagged
                trim_malloc()
        types = {"entities": ENTITIES_TYPE, "words": WORDS_TYPE, "word_probs": word_probs_type(len(self.labels))}
        for name in added:
            table = table.append_column(pa.field(name, types[name]), pa.chunked_array(outputs[name], types[name]))
        if self.opts.word_probs:
            import json

            table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                   TEACHER_LABELS_KEY: json.dumps(self.labels)})
        return table


def check_model(model: str) -> None:
    """What can be checked of ``model`` without loading it (its config and labels; an export's weights against
    their checksum): an :class:`~taggers.export.ExportError` naming it, on the driver, instead of every actor
    dying with it."""
    from taggers.export import _check_weights, read_export_config
    from taggers.hf import HF_MODEL_TYPE

    meta = read_export_config(model)
    if meta["model_type"] != HF_MODEL_TYPE:
        _check_weights(model, meta)


def tag_dataset(ds, model: str, *, actors: int = 1, num_gpus: float = 0, num_cpus: float = 1,
                batch_size: int = 16384, **options):
    """``ds.map_batches(NerTagger, ...)`` with ``actors`` actors of ``num_gpus`` GPUs / ``num_cpus`` CPUs each,
    after :func:`check_model`; ``options`` go to :class:`NerTagger` (``text_column``, ``precision``, ...)."""
    import ray.data

    check_model(model)
    return ds.map_batches(NerTagger, fn_constructor_kwargs={"model": model, **options}, batch_size=batch_size,
                          batch_format="pyarrow", num_gpus=num_gpus, num_cpus=num_cpus,
                          compute=ray.data.ActorPoolStrategy(size=actors))
