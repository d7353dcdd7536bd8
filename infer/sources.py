"""Input Parquet: finding the files, checking columns, planning parts, streaming buffers.

``--input`` takes files, globs and folders (read with ``pyarrow.dataset``;
hive partitions such as ``year=2020/`` become columns; files starting with
``.`` or ``_`` are ignored, as pyarrow does).  Every file's own (physical)
schema is checked before anything is written: a text column that is missing
or not a string column is an :class:`InputError` naming the file and column.
All files are read with one schema unified over them (a column a file lacks
is null there); a column whose types cannot be unified is an InputError
naming two files that disagree.

The work is cut into *parts*: consecutive row groups of one file, merged while
they hold at most ``rows_per_part`` rows; a row group larger than that is cut
into equal row ranges.  Parts are numbered in input order and are the unit of
output files, resume and sharding.  An input without rows gets one empty part,
so the output still has a file with the columns.

Each file has a fingerprint (:func:`file_fingerprint`: path, size, modification time, row groups and its own
schema), which every part of it carries: a part is done only for the file it was tagged from, so a re-run
re-tags the parts of a file that changed and nothing else (:func:`infer.output.replan`).  With a ``bad``
list (``--on-bad-file skip``) a file that cannot be opened, lacks the text column or has columns that do
not fit the others is listed there with its error instead of stopping the run.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.dataset as ds

from . import fs


class InputError(ValueError):
    """Input that cannot be tagged; the message names the file and column."""


@dataclass
class Source:
    """One input file with the dataset schema it is read with (partition columns included)."""

    path: str
    fragment: object  # pyarrow.dataset.ParquetFileFragment
    schema: pa.Schema
    row_group_rows: list[int]
    fingerprint: str = ""

    @property
    def num_rows(self) -> int:
        return sum(self.row_group_rows)


@dataclass
class Part:
    index: int
    file: str
    row_groups: tuple[int, int]  # [first, last) row groups of the file
    rows: tuple[int, int]  # [start, end) row numbers within the file
    source: int = 0  # position in the source list
    file_fp: str = ""  # the file's fingerprint when planned

    @property
    def num_rows(self) -> int:
        return self.rows[1] - self.rows[0]

    def to_json(self) -> dict:
        d = asdict(self)
        d["row_groups"], d["rows"] = list(self.row_groups), list(self.rows)
        d["num_rows"] = self.num_rows
        d.pop("source")
        return d


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)
            or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t)))


def file_fingerprint(path: str, physical: pa.Schema, row_group_rows: Sequence[int]) -> str:
    """What identifies one input file's content without reading its data: a rewritten file gets a new one."""
    size, mtime_ns = fs.stat_key(path)
    key = {"path": fs.abspath(path), "size": size, "mtime_ns": mtime_ns,
           "row_groups": list(row_group_rows), "schema": physical.to_string(show_schema_metadata=False)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _datasets(inputs: Sequence[str]) -> list[ds.Dataset]:
    out = []
    for spec in inputs:
        if fs.is_uri(spec):  # s3://bucket/prefix/, a key or a glob, through pyarrow's file systems
            dataset = fs.parquet_dataset(spec)
            if dataset is None:
                raise InputError(f"{spec}: no such object, prefix or matching glob")
            out.append(dataset)
        elif os.path.isdir(spec):
            out.append(ds.dataset(spec, format="parquet", partitioning="hive"))
        elif os.path.isfile(spec):
            out.append(ds.dataset([spec], format="parquet"))
        else:
            matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not matches:
                raise InputError(f"{spec}: no such file, folder or matching glob")
            out.append(ds.dataset(matches, format="parquet"))
    return out


def _file_schema(physical: pa.Schema, dataset: ds.Dataset) -> pa.Schema:
    """The file's own columns plus the hive partition columns of its folder (``year=2020/``)."""
    partitioning = getattr(dataset, "partitioning", None)
    extra = [f for f in (partitioning.schema if partitioning is not None else []) if f.name not in physical.names]
    return pa.schema(list(physical) + extra)


def _unify(schemas: list[tuple[str, pa.Schema]], bad: list | None = None) -> pa.Schema:
    """One schema for all files: a column missing from a file is null there, null-typed columns take the
    other files' type, numbers widen (int32 + int64 -> int64); an InputError names two files that disagree
    (with a ``bad`` list, the later file is listed there and left out instead)."""
    unified = schemas[0][1]
    origin = {name: schemas[0][0] for name in unified.names}  # the file that gave each column its type
    for path, schema in schemas[1:]:
        try:
            merged = pa.unify_schemas([unified, schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            message = f"{path}: its columns do not fit those of {schemas[0][0]}: {e}"
            for f in schema:
                if f.name in origin and not _compatible(unified.field(f.name), f):
                    message = (f"column {f.name!r} is {unified.field(f.name).type} in {origin[f.name]} "
                               f"but {f.type} in {path}; the input files cannot be read as one table "
                               "(convert the column, or tag the files separately)")
                    break
            if bad is None:
                raise InputError(message) from None
            bad.append({"path": os.path.abspath(path), "error": message})
            continue
        for f in schema:
            if f.name not in origin or merged.field(f.name).type != unified.field(f.name).type:
                origin[f.name] = path
        unified = merged
    return unified


def _compatible(a: pa.Field, b: pa.Field) -> bool:
    try:
        pa.unify_schemas([pa.schema([a]), pa.schema([b])], promote_options="permissive")
        return True
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False


def discover(inputs: Sequence[str], text_column: str, columns: Sequence[str] | None,
             bad: list | None = None) -> tuple[list[Source], list[str]]:
    """All input files and the output's carried columns (``columns=None``: every non-text column).

    Every file is read with one schema unified over all of them (a dataset's own schema comes from its
    first file only, which would drop the columns that file lacks).  A bad file (unreadable, no text
    column, a text column that is not a string, columns that do not fit) is an InputError; with a ``bad``
    list it is appended there as ``{"path", "error"}`` and left out instead."""
    try:
        datasets = _datasets(inputs)
    except (pa.ArrowInvalid, OSError) as e:
        if bad is None or not isinstance(e, pa.ArrowInvalid):
            raise InputError(f"cannot read the input {list(inputs)} as Parquet: {e}") from None
        datasets = _datasets_one_by_one(inputs, bad)
    sources, schemas = _checked_sources(datasets, text_column, bad)
    if not sources:
        if bad:
            raise InputError(f"every input file is bad ({len(bad)}; the first: {bad[0]['error']})")
        raise InputError(f"no Parquet files found in {list(inputs)}")
    n_bad = len(bad) if bad is not None else 0
    unified = _unify(schemas, bad)
    if bad is not None and len(bad) > n_bad:  # files left out by _unify
        dropped = {b["path"] for b in bad[n_bad:]}
        sources = [s for s in sources if os.path.abspath(s.path) not in dropped]
    columns = _carried_columns(unified, text_column, columns)
    for s in sources:
        s.schema = unified
    return sources, columns


def _checked_sources(datasets: list[ds.Dataset], text_column: str,
                     bad: list | None) -> tuple[list[Source], list[tuple[str, pa.Schema]]]:
    """Every file of the datasets once, checked on its own -> the good ones and their schemas (a bad one
    raises, or with a ``bad`` list is listed there)."""
    sources: list[Source] = []
    schemas = []
    seen = set()
    for d in datasets:
        fragments = sorted(d.get_fragments(), key=lambda f: f.path)
        for frag in fragments:
            name = fs.uri_of(frag.path, getattr(d, "filesystem", None))  # local paths as they are
            path = fs.abspath(name)
            if path in seen:
                continue
            seen.add(path)
            source = _checked_source(frag, name, text_column)
            if isinstance(source, str):
                if bad is None:
                    raise InputError(source)
                bad.append({"path": os.path.abspath(frag.path), "error": source})
                continue
            sources.append(source)
            schemas.append((name, _file_schema(source.schema, d)))
    return sources, schemas


def _checked_source(frag, name: str, text_column: str) -> Source | str:
    """One file's metadata read and its text column checked -> its :class:`Source` (with its own schema), or
    what is wrong with it."""
    try:
        physical = frag.physical_schema
        frag.ensure_complete_metadata()
        rg_rows = [rg.num_rows for rg in frag.row_groups]
        fingerprint = file_fingerprint(name, physical, rg_rows)
    except (pa.ArrowInvalid, OSError) as e:
        return f"{frag.path}: not a readable Parquet file: {e}"
    field = physical.field(text_column) if text_column in physical.names else None
    if field is None:
        return (f"{frag.path}: no text column {text_column!r} (columns: {physical.names}); "
                "choose it with --text-column")
    if not _is_string(field.type):
        return (f"{frag.path}: text column {text_column!r} has type {field.type}, "
                "expected a string column; choose another with --text-column")
    return Source(name, frag, physical, rg_rows, fingerprint)


def _carried_columns(unified: pa.Schema, text_column: str, columns: Sequence[str] | None) -> list[str]:
    """The output's carried columns (``None``: every column but the text), each checked to be in the input."""
    if columns is None:
        columns = [n for n in unified.names if n != text_column]
    else:
        for c in columns:
            if c not in unified.names:
                raise InputError(f"column {c!r} (--id-column/--keep-columns) is in none of the input files "
                                 f"(columns: {unified.names})")
    if "entities" in columns:
        raise InputError("the input has a column named 'entities', which the output adds; "
                         "leave it out with --keep-columns")
    return list(columns)


def _datasets_one_by_one(inputs: Sequence[str], bad: list) -> list[ds.Dataset]:
    """:func:`_datasets` when opening them together failed (a file whose footer cannot be read): one
    dataset per file, the unreadable ones listed in ``bad``."""
    out = []
    for spec in inputs:
        if os.path.isdir(spec):
            paths = sorted(os.path.join(root, n) for root, dirs, names in os.walk(spec) for n in names
                           if n.endswith(".parquet") and not n.startswith((".", "_"))
                           and not any(part.startswith((".", "_")) for part in
                                       os.path.relpath(root, spec).split(os.sep) if part != "."))
        elif os.path.isfile(spec):
            paths = [spec]
        else:
            paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        for path in paths:
            try:
                if os.path.isdir(spec):
                    out.append(ds.dataset([path], format="parquet",
                                          partitioning=ds.partitioning(flavor="hive"), partition_base_dir=spec))
                else:
                    out.append(ds.dataset([path], format="parquet"))
            except (pa.ArrowInvalid, OSError) as e:
                bad.append({"path": os.path.abspath(path), "error": f"{path}: not a readable Parquet file: {e}"})
    return out


def plan_parts(sources: Sequence[Source], rows_per_part: int) -> list[Part]:
    if rows_per_part < 1:
        raise ValueError("rows_per_part must be at least 1")
    parts: list[Part] = []
    for si, src in enumerate(sources):
        offsets = [0]
        for n in src.row_group_rows:
            offsets.append(offsets[-1] + n)
        g = 0
        ngroups = len(src.row_group_rows)
        while g < ngroups:
            n = src.row_group_rows[g]
            if n == 0:
                g += 1
                continue
            if n > rows_per_part:  # cut one big row group into equal ranges
                k = -(-n // rows_per_part)
                for j in range(k):
                    a = offsets[g] + n * j // k
                    b = offsets[g] + n * (j + 1) // k
                    parts.append(Part(len(parts), src.path, (g, g + 1), (a, b), si, src.fingerprint))
                g += 1
                continue
            h = g + 1
            while h < ngroups and offsets[h + 1] - offsets[g] <= rows_per_part:
                h += 1
            parts.append(Part(len(parts), src.path, (g, h), (offsets[g], offsets[h]), si, src.fingerprint))
            g = h
    if not parts and sources:  # no rows at all: one empty part still shows readers the columns
        parts.append(Part(0, sources[0].path, (0, 0), (0, 0), 0, sources[0].fingerprint))
    return parts


def column_texts(text) -> list:
    """A text column's values as Python strings (``None`` for nulls), whatever string type it has."""
    if pa.types.is_dictionary(text.type) or pa.types.is_null(text.type):
        text = text.cast(pa.string())
    return text.to_pylist()


def read_buffers(src: Source, part: Part, columns: Sequence[str], text_column: str,
                 max_rows: int, max_chars: int) -> Iterator[tuple[pa.Table, list]]:
    """Stream the part's rows as ``(carried columns, texts)`` buffers of bounded size, in order."""
    g0, g1 = part.row_groups
    skip = part.rows[0] - sum(src.row_group_rows[:g0])
    todo = part.num_rows
    wanted = list(dict.fromkeys([*columns, text_column]))
    sub = src.fragment.subset(row_group_ids=list(range(g0, g1)))
    pending: list[pa.RecordBatch] = []
    rows = chars = 0

    def flush():
        table = pa.Table.from_batches(pending, schema=pending[0].schema)
        return table.select(list(columns)), column_texts(table.column(text_column))

    batch_rows = max(1, min(max_rows, 4096))
    try:
        for batch in sub.to_batches(schema=src.schema, columns=wanted, batch_size=batch_rows):
            if skip:
                if batch.num_rows <= skip:
                    skip -= batch.num_rows
                    continue
                batch, skip = batch.slice(skip), 0
            if batch.num_rows > todo:
                batch = batch.slice(0, todo)
            todo -= batch.num_rows
            while batch.num_rows:
                take = min(batch.num_rows, max_rows - rows)
                piece = batch.slice(0, take)
                batch = batch.slice(take)
                pending.append(piece)
                rows += piece.num_rows
                text = piece.column(text_column)
                chars += (text.cast(pa.string()) if not pa.types.is_string(text.type) else text).nbytes
                if rows >= max_rows or chars >= max_chars:
                    yield flush()
                    pending, rows, chars = [], 0, 0
            if todo <= 0:
                break
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise InputError(f"{src.path}: cannot read column {text_column!r} or {list(columns)}: {e}") from None
    except OSError as e:  # corrupt data pages, a truncated file: pyarrow raises OSError without the path
        raise InputError(f"{src.path}: cannot decode the rows of part {part.index}: {e}") from None
    if pending:
        yield flush()
    if todo > 0:
        raise InputError(f"{src.path}: expected {part.num_rows} rows in part {part.index}, "
                         f"the file has {todo} fewer (did it change while tagging?)")
