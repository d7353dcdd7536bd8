"""One part of the output folder: its claim, its file and manifest entry, its bad-part record, its state.

A part is written to ``.part-NNNNNN.parquet.tmp-<host>-<pid>`` and renamed when complete (:class:`PartWriter`);
then its manifest entry is written (also tmp + rename).  A part is done when both exist and agree
(:func:`done_parts`, :func:`part_state`), so a process killed at any point leaves either a finished part or
nothing that counts; re-running the same command redoes only the unfinished parts.  Several processes
(torchrun ranks, SLURM array tasks) share the folder: a process tags a part only while it holds the part's
claim (:func:`claim_part`, an exclusive ``flock`` that the kernel drops when the process dies, so a killed
holder's part is claimed again next run).  A part that cannot be read (``--on-bad-file skip``) is recorded
as bad (:func:`record_bad_part`) until its file changes.

The folder itself (its identity, lock, clearing and re-planning) is :mod:`infer.output`.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import time

from common.io import temp_name
from common.tagdir import CLAIMS_DIR, MANIFEST_DIR, part_name

from . import fs


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


def _same_part(part: dict, entry: dict | None) -> bool:
    """``entry`` (manifest or bad-part record) is of ``part``: the same rows of the same file, unchanged since
    (entries written before file fingerprints were recorded match any)."""
    return bool(entry and entry.get("rows") == part["rows"] and entry.get("file") == part["file"]
                and entry.get("file_fp", part.get("file_fp")) == part.get("file_fp"))


def _is_done(out_dir: str, part: dict, entry: dict | None) -> bool:
    return _same_part(part, entry) and fs.exists(fs.join(out_dir, part_name(part["index"])))


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


def bad_path(out_dir: str, index: int) -> str:
    return fs.join(out_dir, MANIFEST_DIR, f"bad-{index:06d}.json")


def record_bad_part(out_dir: str, part: dict, error: str) -> dict:
    """Record that ``part`` cannot be read (``--on-bad-file skip``; call while holding its claim): the part
    counts as finished-but-bad until its file changes, so no other process tries it again."""
    entry = {"part": part["index"], "file": part["file"], "file_fp": part.get("file_fp"), "rows": part["rows"],
             "num_rows": part["num_rows"], "error": error, "finished_at": time.time(),
             "host": os.uname().nodename, "pid": os.getpid()}
    fs.write_json(bad_path(out_dir, part["index"]), entry)
    return entry


def read_bad_parts(out_dir: str, plan: list[dict]) -> dict[int, dict]:
    """The bad-part records that belong to ``plan`` (a record of a file since changed is not)."""
    out = {}
    for p in plan:
        try:
            entry = fs.read_json(bad_path(out_dir, p["index"]))
        except (OSError, ValueError):
            continue
        if _same_part(p, entry):
            out[p["index"]] = entry
    return out


def record_skipped_files(out_dir: str, files: list[dict]) -> None:
    """The input files left out of the plan (``--on-bad-file skip``), each with its error; none: no file."""
    path = fs.join(out_dir, MANIFEST_DIR, "skipped_files.json")
    if files:
        fs.write_json(path, files)
    else:
        with contextlib.suppress(OSError):
            fs.remove(path)


def part_state(out_dir: str, part: dict) -> str | None:
    """``"done"``, ``"bad"`` (recorded as unreadable, for its file as it is now) or None (still to do)."""
    if part_done(out_dir, part):
        return "done"
    try:
        if _same_part(part, fs.read_json(bad_path(out_dir, part["index"]))):
            return "bad"
    except (OSError, ValueError):
        pass
    return None


def claim_path(out_dir: str, index: int) -> str:
    return os.path.join(fs.lock_dir(out_dir), CLAIMS_DIR, part_name(index).replace(".parquet", ".lock"))


def claim_part(out_dir: str, index: int):
    """An open lock file held exclusively for part ``index`` (close it to release), or ``None`` when a
    live process holds it.  ``flock`` locks die with their process, so a killed holder blocks nothing.
    The holder writes its host and pid into the file, for messages about parts left to others."""
    claims = os.path.join(fs.lock_dir(out_dir), CLAIMS_DIR)
    os.makedirs(claims, exist_ok=True)
    f = open(claim_path(out_dir, index), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    with contextlib.suppress(OSError):
        f.truncate(0)
        f.write(f"{os.uname().nodename} {os.getpid()} {time.time():.0f}\n")
        f.flush()
    return f


def claim_holder(out_dir: str, index: int) -> str:
    """``host pid`` of the process that last claimed part ``index`` ('' when unknown)."""
    try:
        with open(claim_path(out_dir, index)) as f:
            return " ".join(f.read().split()[:2])
    except OSError:
        return ""


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
                 "file_fp": self.part.get("file_fp"), "row_groups": self.part["row_groups"], "rows": self.part["rows"],
                 "num_rows": self.rows,
                 **stats, "seconds": round(time.time() - self.started, 3), "finished_at": time.time(),
                 "host": os.uname().nodename, "pid": os.getpid()}
        fs.write_json(manifest_path(self.out_dir, self.part["index"]), entry)
        with contextlib.suppress(OSError):  # a bad-part record of an earlier try (the file read this time)
            fs.remove(bad_path(self.out_dir, self.part["index"]))
        return entry

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(OSError):
            fs.remove(self.tmp)
