"""The output folder: its layout, its identity (_run.json) and lock, clearing it, fitting it to a new plan.

Layout (its names and column types are defined in :mod:`common.tagdir`)::

    OUT/
      _run.json                 who made this folder: model and input fingerprints, options, the part plan
      part-000000.parquet ...   one file per part (named by the part's global number)
      _manifest/part-000000.json  one entry per finished part: source file (and its fingerprint), row
                                  groups, rows, words, entities per type, seconds
      _manifest/bad-000000.json   a part that could not be read (--on-bad-file skip): its file and the error
      _manifest/skipped_files.json  the input files left out (--on-bad-file skip), each with its error
      _summary.json             totals (and this run's speed), rewritten at the end of every run
      .lock                     taken while a process checks or initialises _run.json
      _claims/part-000000.lock  held (flock) by the process tagging that part

Names starting with ``_`` or ``.`` are skipped by ``pyarrow.dataset`` / ``pandas.read_parquet``, so the
folder reads directly as one table: ``pyarrow.dataset.dataset(OUT).to_table()``.

Each part's files, manifest entry, bad-part record and claim are :mod:`infer.parts`; ``_summary.json`` is
:mod:`infer.summary`.

``OUT`` may be an object-store URI (``s3://bucket/tagged/``): the same files go through :mod:`infer.fs`
(parts streamed to a temporary key and moved when complete), and the lock and claims live in a local
folder, so they hold among the processes of one machine only.

The input may change between runs: parts of files that are unchanged (same fingerprint) stay done; when the
plan differs from the folder's, :func:`replan` deletes the parts of files that changed or left the input and
renumbers the kept ones to their place in the new plan, so the folder still reads in input order.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os

from common.tagdir import CLAIMS_DIR, LOCK_FILE, MANIFEST_DIR, RUN_FILE, SUMMARY_FILE, part_name

from . import fs
from .parts import claim_holder, manifest_path, read_manifest

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
    """The whole input: files (path, size, rows) and options; equal for outputs of the same input."""
    files = [{k: f[k] for k in ("path", "size", "rows")} for f in files]
    return hashlib.sha256(json.dumps({"files": files, "options": options}, sort_keys=True).encode()).hexdigest()


def options_fingerprint(options: dict) -> str:
    """What every part of a folder must share (text column, carried columns and their schema, rows per part,
    chunking): parts of other files can be added to a folder, parts of other options cannot."""
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()


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
            or name.startswith((".part-", ".replan-", RUN_FILE + ".tmp", SUMMARY_FILE + ".tmp")))


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
        if "options_fingerprint" in old.get("input", {}):  # files may differ: only the changed ones are re-tagged
            if old["input"]["options_fingerprint"] != run_info["input"]["options_fingerprint"]:
                diffs.append("other input options (text column, carried columns or their types, rows per "
                             "part, chunking)")
        elif old.get("input", {}).get("fingerprint") != run_info["input"]["fingerprint"]:
            diffs.append("another input or other input options (files, text column, carried columns, "
                         "rows per part, chunking)")
        if not diffs:
            if old.get("parts") == run_info["parts"] and old["input"].get("bad_files") == \
                    run_info["input"].get("bad_files") and "options_fingerprint" in old["input"]:
                return old
            if fs.is_uri(out_dir):  # re-planning renames parts, which an object store cannot do atomically
                raise OutputError(f"{out_dir}: the input files changed since this output was planned; an "
                                  "object-store output is not re-planned: pass --overwrite, or choose another "
                                  "--output")
            replan(out_dir, run_info)
            fs.write_json(run_path, run_info)
            return run_info
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


def _hold_every_claim(out_dir: str) -> list:
    """Every part's claim file, locked (close them to release); an OutputError naming the part when a live
    process holds one (it may be tagging with the old plan)."""
    held = []
    claims_dir = os.path.join(fs.lock_dir(out_dir), CLAIMS_DIR)
    try:
        for name in sorted(os.listdir(claims_dir)) if os.path.isdir(claims_dir) else []:
            f = open(os.path.join(claims_dir, name), "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                raise OutputError(f"{out_dir}: the input changed since this folder was planned, and part "
                                  f"{int(name[5:11])} is being tagged by a live process "
                                  f"({claim_holder(out_dir, int(name[5:11])) or 'unknown'}) with the old plan; "
                                  "wait for it to end (or stop it), then run again") from None
            held.append(f)
    except BaseException:
        for f in held:
            f.close()
        raise
    return held


def replan(out_dir: str, run_info: dict) -> dict:
    """Fit the folder to a new part plan (call under :func:`folder_lock`): finished parts of unchanged files
    (same file, rows and fingerprint) are kept and renamed to their index in the new plan; parts of files
    that changed or left the input, stray part files and every bad-part record are deleted.  Refused while a
    live process holds any part's claim (it may be tagging with the old plan).  Returns the counts.

    Renames go through hidden temporary names (``.replan-NNNNNN``) and the manifest entry is moved after its
    part, so a kill at any point loses at most the parts being moved (they are tagged again), never mixes
    two parts up."""
    plan = run_info["parts"]
    held = _hold_every_claim(out_dir)
    try:
        new_index = {(p["file"], tuple(p["rows"]), p.get("file_fp")): p["index"] for p in plan}
        by_file_rows = {(p["file"], tuple(p["rows"])): p["index"] for p in plan}
        manifest = read_manifest(out_dir)
        moves, kept, removed = [], 0, 0
        targets, kept_sources = set(), set()
        for i, entry in sorted(manifest.items()):
            path = os.path.join(out_dir, part_name(i))
            if entry.get("file_fp") is not None:
                j = new_index.get((entry.get("file"), tuple(entry.get("rows", ())), entry.get("file_fp")))
            else:  # an entry from before file fingerprints: matched by file and rows
                j = by_file_rows.get((entry.get("file"), tuple(entry.get("rows", ()))))
            if j is None or j in targets or not os.path.exists(path):
                removed += os.path.exists(path)
                with contextlib.suppress(OSError):
                    os.remove(path)
                with contextlib.suppress(OSError):
                    os.remove(manifest_path(out_dir, i))
                continue
            targets.add(j)
            kept_sources.add(i)
            kept += 1
            if j != i:
                moves.append((i, j, entry))
        kept_names = {part_name(i) for i in manifest if i in kept_sources}
        for stray in glob.glob(os.path.join(out_dir, "part-*.parquet")) + glob.glob(
                os.path.join(out_dir, ".replan-*")) + glob.glob(os.path.join(out_dir, MANIFEST_DIR, "bad-*.json")):
            name = os.path.basename(stray)
            if name in kept_names:
                continue
            removed += name.startswith("part-") and int(name[5:11]) not in manifest  # counted above otherwise
            with contextlib.suppress(OSError):
                os.remove(stray)
        for i, j, entry in moves:  # first out of the way: a target may still hold a part that moves too
            os.remove(manifest_path(out_dir, i))
            os.replace(os.path.join(out_dir, part_name(i)), os.path.join(out_dir, f".replan-{j:06d}"))
        for i, j, entry in moves:
            os.replace(os.path.join(out_dir, f".replan-{j:06d}"), os.path.join(out_dir, part_name(j)))
            fs.write_json(manifest_path(out_dir, j), {**entry, "part": j, "output": part_name(j)})
        return {"kept": kept, "moved": len(moves), "removed": removed}
    finally:
        for f in held:
            f.close()
