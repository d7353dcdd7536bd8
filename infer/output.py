"""The output folder: identity (_run.json), atomic part files, the manifest, the summary.

Layout (its names and column types are defined in :mod:`common.tagdir`)::

    OUT/
      _run.json                 who made this folder: model and input fingerprints, options, the part plan
      part-000000.parquet ...   one file per part (named by the part's global number)
      _manifest/part-000000.json  one entry per finished part: source file, row groups, rows, words,
                                  entities per type, seconds
      _summary.json             totals (and this run's speed), rewritten at the end of every run
      .lock                     taken while a process checks or initialises _run.json
      _claims/part-000000.lock  held (flock) by the process tagging that part

Names starting with ``_`` or ``.`` are skipped by ``pyarrow.dataset`` / ``pandas.read_parquet``, so the
folder reads directly as one table: ``pyarrow.dataset.dataset(OUT).to_table()``.

A part is written to ``.part-NNNNNN.parquet.tmp-<host>-<pid>`` and renamed
when complete; then its manifest entry is written (also tmp + rename).  A part
is done when both exist and agree, so a process killed at any point leaves
either a finished part or nothing that counts; re-running the same command
redoes only the unfinished parts.  Several processes (torchrun ranks, SLURM
array tasks) share the folder: a process tags a part only while it holds the
part's claim (:func:`claim_part`, an exclusive ``flock`` that the kernel drops
when the process dies, so a killed holder's part is claimed again next run).

``OUT`` may be an object-store URI (``s3://bucket/tagged/``): the same files go through :mod:`infer.fs`
(parts streamed to a temporary key and moved when complete), and the lock and claims live in a local
folder, so they hold among the processes of one machine only.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import time

from common.io import temp_name

from . import fs

from common.tagdir import CLAIMS_DIR, LOCK_FILE, MANIFEST_DIR, RUN_FILE, SUMMARY_FILE, part_name
# kept when clearing: a process may hold them (a new lock file would not exclude it); they hold no data
_LOCKS = (LOCK_FILE, CLAIMS_DIR)
RUN_FORMAT = 1


class OutputError(ValueError):
    """The output folder cannot be used (made by another model or input, or not ours)."""


def model_fingerprint(export_dir: str) -> str:
    """sha256 over the export's ner_config.json, config.json and weight files."""
    h = hashlib.sha256()
    names = ["ner_config.json", "config.json"] + sorted(
        os.path.basename(p) for p in glob.glob(os.path.join(export_dir, "*.safetensors"))
        + glob.glob(os.path.join(export_dir, "*.bin")))
    for name in names:
        path = os.path.join(export_dir, name)
        if not os.path.exists(path):
            continue
        h.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def input_fingerprint(files: list[dict], options: dict) -> str:
    return hashlib.sha256(json.dumps({"files": files, "options": options}, sort_keys=True).encode()).hexdigest()


def open_folder(out_dir: str, run_info: dict, overwrite: bool) -> dict:
    """:func:`init_folder` under :func:`folder_lock`; a folder that cannot be made or written is an
    OutputError naming the path (a file in the way, no permission) instead of a traceback."""
    try:
        with folder_lock(out_dir):
            info = init_folder(out_dir, run_info, overwrite)
        # a resumed folder gets nothing written above: find out now, not when the first part is done
        fs.check_writable(out_dir)
        return info
    except OSError as e:
        if fs.is_uri(out_dir):
            raise OutputError(f"--output {out_dir}: cannot create or write there: {e}") from None
        path = os.path.abspath(out_dir)
        while not os.path.exists(path):
            path = os.path.dirname(path)
        if not os.path.isdir(path):
            raise OutputError(f"--output {out_dir}: {path} is a file, not a folder") from None
        raise OutputError(f"--output {out_dir}: cannot create or write this folder: {e.strerror or e}") from None


@contextlib.contextmanager
def folder_lock(out_dir: str):
    fs.makedirs(out_dir, exist_ok=True)
    os.makedirs(fs.lock_dir(out_dir), exist_ok=True)
    with open(os.path.join(fs.lock_dir(out_dir), LOCK_FILE), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _ours(name: str) -> bool:
    return (name in (RUN_FILE, MANIFEST_DIR, SUMMARY_FILE, LOCK_FILE, CLAIMS_DIR) or name.startswith("part-")
            or name.startswith(".part-") or name.startswith(RUN_FILE + ".tmp") or name.startswith(SUMMARY_FILE + ".tmp"))


def clear_folder(out_dir: str) -> None:
    """Remove what ner-tag wrote (parts, manifest, _run.json, _summary.json); other files stay."""
    for name in fs.listdir(out_dir):
        if _ours(name) and name not in _LOCKS:
            path = fs.join(out_dir, name)
            if fs.isdir(path):
                fs.rmtree(path)
            else:
                fs.remove(path)


def init_folder(out_dir: str, run_info: dict, overwrite: bool) -> dict:
    """Create or check ``_run.json`` (call under :func:`folder_lock`); returns the folder's run info.

    The same model, precision and input (fingerprints) continue the folder
    (resume); a different one is refused unless ``overwrite``, which clears it
    first (parts of two precisions would differ in their scores and spans).
    A non-empty folder that ner-tag did not make is refused unless ``overwrite``.
    """
    fs.makedirs(out_dir, exist_ok=True)
    run_path = fs.join(out_dir, RUN_FILE)
    if fs.exists(run_path):
        old = fs.read_json(run_path)
        diffs = []
        if old.get("model", {}).get("fingerprint") != run_info["model"]["fingerprint"]:
            diffs.append(f"another model ({old.get('model', {}).get('path')!r}, this run: "
                         f"{run_info['model']['path']!r})")
        # folders written before the precision was recorded have none: they resume
        old_precision = old.get("model", {}).get("precision", run_info["model"]["precision"])
        if old_precision != run_info["model"]["precision"]:
            diffs.append(f"another precision ({old_precision}, this run: {run_info['model']['precision']})")
        if old.get("input", {}).get("fingerprint") != run_info["input"]["fingerprint"]:
            diffs.append("another input or other input options (files, text column, carried columns, "
                         "rows per part, chunking)")
        if not diffs:
            return old
        if not overwrite:
            raise OutputError(f"{out_dir} was written by {' and '.join(diffs)}; pass --overwrite to replace "
                              "its contents, or choose another --output")
        clear_folder(out_dir)
    else:
        foreign = [n for n in fs.listdir(out_dir) if not _ours(n)]
        ours = [n for n in fs.listdir(out_dir) if _ours(n) and n not in _LOCKS]
        if ours and not overwrite:
            raise OutputError(f"{out_dir} holds ner-tag output without {RUN_FILE}; pass --overwrite to "
                              "replace it")
        if foreign and not overwrite:
            raise OutputError(f"{out_dir} is not empty and was not made by ner-tag ({sorted(foreign)[:5]}); "
                              "choose an empty or new --output, or pass --overwrite to write into it anyway")
        if ours:
            clear_folder(out_dir)
    fs.makedirs(fs.join(out_dir, MANIFEST_DIR), exist_ok=True)
    fs.write_json(run_path, run_info)
    return run_info


def manifest_path(out_dir: str, index: int) -> str:
    return fs.join(out_dir, MANIFEST_DIR, part_name(index).replace(".parquet", ".json"))


def read_manifest(out_dir: str) -> dict[int, dict]:
    out = {}
    for path in fs.glob(fs.join(out_dir, MANIFEST_DIR, "part-*.json")):
        try:
            entry = fs.read_json(path)
        except (OSError, ValueError):
            continue  # a torn write cannot happen (atomic rename), but be lenient
        out[int(entry["part"])] = entry
    return out


def _is_done(out_dir: str, part: dict, entry: dict | None) -> bool:
    return bool(entry and entry.get("rows") == part["rows"] and entry.get("file") == part["file"]
                and fs.exists(fs.join(out_dir, part_name(part["index"]))))


def done_parts(out_dir: str, plan: list[dict]) -> set[int]:
    """Parts whose file and manifest entry both exist and agree with the plan."""
    manifest = read_manifest(out_dir)
    return {p["index"] for p in plan if _is_done(out_dir, p, manifest.get(p["index"]))}


def part_done(out_dir: str, part: dict) -> bool:
    """:func:`done_parts` for one part (checked again after claiming it: another process may have just
    finished it)."""
    try:
        entry = fs.read_json(manifest_path(out_dir, part["index"]))
    except (OSError, ValueError):
        return False
    return _is_done(out_dir, part, entry)


def claim_part(out_dir: str, index: int):
    """An open lock file held exclusively for part ``index`` (close it to release), or ``None`` when a
    live process holds it.  ``flock`` locks die with their process, so a killed holder blocks nothing."""
    claims = os.path.join(fs.lock_dir(out_dir), CLAIMS_DIR)
    os.makedirs(claims, exist_ok=True)
    f = open(os.path.join(claims, part_name(index).replace(".parquet", ".lock")), "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


class PartWriter:
    """Streams one part into a temporary Parquet file; :meth:`commit` renames it and records it.

    Create it only while holding the part's claim: it removes the part's temporary files left by others
    (dead processes, as the claim is ours)."""

    def __init__(self, out_dir: str, part: dict, schema):
        self.out_dir = out_dir
        self.part = part
        self.final = fs.join(out_dir, part_name(part["index"]))
        self.tmp = temp_name(fs.join(out_dir, f".{part_name(part['index'])}"))
        # in an object store an upload cut short leaves no object: nothing to clear (and no listing per part)
        stale_names = os.path.join(out_dir, f".{part_name(part['index'])}.tmp-*")
        for stale in [] if fs.is_uri(out_dir) else glob.glob(stale_names):
            with contextlib.suppress(OSError):
                os.remove(stale)
        self.writer = fs.parquet_writer(self.tmp, schema)
        self.rows = 0
        self.started = time.time()

    def write(self, table) -> None:
        self.writer.write_table(table)
        self.rows += table.num_rows

    def commit(self, stats: dict) -> dict:
        self.writer.close()
        if self.rows != self.part["num_rows"]:
            raise AssertionError(f"part {self.part['index']}: wrote {self.rows} rows, "
                                 f"expected {self.part['num_rows']}")
        fs.publish(self.tmp, self.final)
        stats = {k: v for k, v in stats.items() if k not in ("rows", "parts")}
        entry = {"part": self.part["index"], "output": part_name(self.part["index"]), "file": self.part["file"],
                 "row_groups": self.part["row_groups"], "rows": self.part["rows"], "num_rows": self.rows,
                 **stats, "seconds": round(time.time() - self.started, 3), "finished_at": time.time(),
                 "host": os.uname().nodename, "pid": os.getpid()}
        fs.write_json(manifest_path(self.out_dir, self.part["index"]), entry)
        return entry

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(OSError):
            fs.remove(self.tmp)
