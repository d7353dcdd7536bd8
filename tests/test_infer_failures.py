"""ner-tag on bad input: one ``ner-tag: error: ...`` line and exit 2, nothing written is lost, and what was
interrupted resumes.  Numeric options, inputs whose files have different columns, an input without rows,
the precision of a resumed folder, a broken export, an unwritable output, and parts claimed with locks
(shards independent of the torchrun world size)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from infer.__main__ import main
from taggers.precision import resolve_precision
from tests.test_infer import _KILLED_TAGGER, _cli, read_output, run_tag, write_input

TEXTS = [f"Angela Merkel visited Japan {i} times with the European Commission ." for i in range(24)]
# write_input: row groups of 8 rows and run_tag's --rows-per-part 10 -> 3 parts of 8 rows


def _error(capsys) -> str:
    """The one error line of a failed run (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("ner-tag: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}


def _summary(out: Path) -> dict:
    return json.loads((out / "_summary.json").read_text())


@pytest.fixture(scope="module")
def small_input(tmp_path_factory) -> Path:
    return write_input(tmp_path_factory.mktemp("failures_in") / "small.parquet", TEXTS)


@pytest.fixture(scope="module")
def small_reference(tiny_exports, small_input, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("failures_ref") / "out"
    assert run_tag(tiny_exports["bert"] / "export", small_input, out) == 0
    return out


# ------------------------------------------------------------------ 1. numeric options
@pytest.mark.timeout(120)  # --buffer-rows 0 used to loop for ever
@pytest.mark.parametrize("option, value, message", [
    ("--buffer-rows", "0", "must be at least 1, got 0"),
    ("--buffer-chars", "0", "must be at least 1, got 0"),
    ("--rows-per-part", "0", "must be at least 1, got 0"),
    ("--batch-tokens", "-1", "must be at least 0 (0: the default), got -1"),
    ("--chunk-pieces", "-5", "must be at least 0 (0: the model's window), got -5"),
    ("--threads", "-1", "must be at least 0 (0: cores / local ranks), got -1"),
    ("--num-shards", "0", "must be at least 1, got 0"),
    ("--shard-index", "-1", "must be at least 0, got -1"),
    ("--buffer-rows", "many", "expected a whole number, got 'many'"),
])
def test_numeric_options_are_checked_when_parsed(tiny_exports, small_input, tmp_path, capsys, option, value,
                                                 message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tiny_exports["bert"] / "export"), "--input", str(small_input), "--output", str(out),
              "--threads", "1", "--no-progress", option, value])
    assert exit_info.value.code == 2
    assert _error(capsys) == f"ner-tag: error: argument {option}: {message}"
    assert not out.exists()


def test_batch_tokens_below_the_window_is_a_clear_error(tiny_exports, small_input, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_tag(tiny_exports["bert"] / "export", small_input, out, "--batch-tokens", "16") == 2
    assert _error(capsys) == ("ner-tag: error: --batch-tokens 16 is less than the model's window of 128 word "
                              "pieces: use at least 128, or 0 for the default")
    assert not out.exists()  # checked before the output folder is made


# ------------------------------------------------------------------ 2. files with different columns
def test_files_with_different_columns_are_unified(tiny_exports, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    # a.parquet has no 'source' and its text column is all null (null-typed); b.parquet has both
    pq.write_table(pa.table({"id": [0, 1], "text": pa.array([None, None], pa.null())}), folder / "a.parquet")
    pq.write_table(pa.table({"id": [2, 3], "text": ["Angela Merkel visited Japan .", "Peter met EU ."],
                             "source": ["web", "news"]}), folder / "b.parquet")
    out = tmp_path / "out"
    assert run_tag(tiny_exports["bert"] / "export", folder, out) == 0
    table = read_output(out)
    assert table.column_names == ["id", "source", "entities"]
    assert table.column("source").to_pylist() == [None, None, "web", "news"]
    assert table.column("entities").to_pylist()[:2] == [[], []]
    # a glob, and --keep-columns naming the column the first file lacks
    out2 = tmp_path / "out2"
    assert run_tag(tiny_exports["bert"] / "export", str(folder / "*.parquet"), out2, "--id-column", "id",
                   "--keep-columns", "source") == 0
    assert read_output(out2).equals(table)


def test_files_with_incompatible_columns_are_refused(tiny_exports, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write_input(folder / "a.parquet", TEXTS[:4])
    pq.write_table(pa.table({"id": ["x", "y"], "text": TEXTS[:2]}), folder / "b.parquet")
    out = tmp_path / "out"
    assert run_tag(tiny_exports["bert"] / "export", folder, out) == 2
    assert _error(capsys) == (f"ner-tag: error: column 'id' is int64 in {folder / 'a.parquet'} but string in "
                              f"{folder / 'b.parquet'}; the input files cannot be read as one table (convert "
                              "the column, or tag the files separately)")
    assert not out.exists()


# ------------------------------------------------------------------ 3. an input without rows
def test_input_without_rows_writes_an_empty_part(tiny_exports, tmp_path):
    empty = write_input(tmp_path / "empty.parquet", [], extra=pa.array([], pa.float64()))
    out = tmp_path / "out"
    assert run_tag(tiny_exports["bert"] / "export", empty, out) == 0
    part = pq.read_table(out / "part-000000.parquet")
    assert part.num_rows == 0 and part.column_names == ["id", "extra", "entities"]
    assert read_output(out).schema == part.schema
    total = _summary(out)["total"]
    assert total["rows"] == 0 and total["parts_done"] == total["parts_total"] == 1 and total["complete"]
    assert json.loads((out / "_manifest" / "part-000000.json").read_text())["num_rows"] == 0
    assert run_tag(tiny_exports["bert"] / "export", empty, out) == 0  # resumes: nothing to do
    assert _summary(out)["this_run"]["parts"] == 0


# ------------------------------------------------------------------ 4. precision and resume
def test_another_precision_is_refused(tiny_exports, small_input, tmp_path, capsys):
    export = tiny_exports["bert"] / "export"
    auto = resolve_precision("auto", torch.device("cpu"))
    other = "fp32" if auto != "fp32" else "bf16"
    out = tmp_path / "out"
    assert run_tag(export, small_input, out, "--precision", auto) == 0
    before = _parts(out)
    assert run_tag(export, small_input, out, "--precision", "auto") == 0  # the same precision: resumes
    assert _summary(out)["this_run"]["rows"] == 0
    capsys.readouterr()
    assert run_tag(export, small_input, out, "--precision", other) == 2
    assert _error(capsys) == (f"ner-tag: error: {out} was written by another precision ({auto}, this run: "
                              f"{other}); pass --overwrite to replace its contents, or choose another --output")
    assert _parts(out) == before
    assert run_tag(export, small_input, out, "--precision", other, "--overwrite") == 0
    assert _summary(out)["this_run"]["rows"] == len(TEXTS)


# ------------------------------------------------------------------ 5. a broken export
@pytest.mark.parametrize("name, damage", [("bert", "missing"), ("bilstm", "missing"), ("bilstm", "truncated")])
def test_broken_export_leaves_no_folder_behind(tiny_exports, small_input, tmp_path, capsys, name, damage):
    export = tmp_path / "export"
    shutil.copytree(tiny_exports[name] / "export", export)
    weights = export / "model.safetensors"
    good = weights.read_bytes()
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(good[:len(good) // 2])
    out = tmp_path / "out"
    assert run_tag(export, small_input, out) == 2
    assert str(export) in _error(capsys)  # e.g. "EXPORT: model.safetensors is missing"
    assert not out.exists()
    weights.write_bytes(good)  # fixed: the same output folder is used without --overwrite
    assert run_tag(export, small_input, out) == 0
    assert _summary(out)["total"]["complete"]


# ------------------------------------------------------------------ 6. an output that cannot be written
def test_output_under_a_file_is_a_clear_error(tiny_exports, small_input, tmp_path, capsys):
    a_file = tmp_path / "some_file.txt"
    a_file.write_text("mine")
    for out, message in ((a_file / "out", f"--output {a_file / 'out'}: {a_file} is a file, not a folder"),
                         (a_file, f"--output {a_file}: {a_file} is a file, not a folder")):
        assert run_tag(tiny_exports["bert"] / "export", small_input, out) == 2
        assert _error(capsys) == f"ner-tag: error: {message}"
    assert a_file.read_text() == "mine"


@contextlib.contextmanager
def _read_only(folder: Path):
    """``folder`` made unwritable, for root too (root ignores permission bits but not the immutable flag)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: cannot make a read-only folder")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_read_only_output_is_a_clear_error(tiny_exports, small_input, small_reference, tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    done = tmp_path / "done"
    shutil.copytree(small_reference, done)
    before = _parts(done)
    with _read_only(parent), _read_only(done):
        assert run_tag(tiny_exports["bert"] / "export", small_input, parent / "out") == 2
        assert _error(capsys).startswith(f"ner-tag: error: --output {parent / 'out'}: cannot create or write "
                                         "this folder: ")
        assert run_tag(tiny_exports["bert"] / "export", small_input, done) == 2  # a finished folder, read-only
        assert _error(capsys).startswith(f"ner-tag: error: --output {done}: cannot create or write this folder: ")
    assert _parts(done) == before


# ------------------------------------------------------------------ 7. parts claimed with locks
def test_part_claimed_by_a_live_process_is_left_to_it(tiny_exports, small_input, small_reference, tmp_path,
                                                      capsys):
    """A part held by a live process (which never finishes it) is waited for, then the run exits 5 naming it."""
    out = tmp_path / "out"
    claims = out / "_claims"
    claims.mkdir(parents=True)
    with open(claims / "part-000001.lock", "a") as held:  # another process is tagging part 1
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("node7 4242 0\n")
        held.flush()
        capsys.readouterr()
        assert run_tag(tiny_exports["bert"] / "export", small_input, out, "--wait-for-others", "1") == 5
    err = capsys.readouterr().err
    assert ("ner-tag: incomplete: 1 part(s) not finished: part 1 (node7 4242); live processes hold them and may "
            "still finish them; run the same command again to take over what is left") in err, err
    assert sorted(_parts(out)) == ["part-000000.parquet", "part-000002.parquet"]
    total = _summary(out)["total"]
    assert not total["complete"] and total["parts_done"] == 2 and total["parts_left"] == [1]
    # its holder is gone (the lock died with it): the next run takes the part
    assert run_tag(tiny_exports["bert"] / "export", small_input, out) == 0
    assert _summary(out)["this_run"]["parts"] == 1 and _summary(out)["total"]["complete"]
    assert read_output(out).equals(read_output(small_reference))


def test_killed_holder_part_is_claimed_again(tiny_exports, small_input, small_reference, tmp_path):
    out = tmp_path / "out"
    args = ["--model", str(tiny_exports["bert"] / "export"), "--input", str(small_input), "--output", str(out),
            "--rows-per-part", "10", "--buffer-rows", "6"]
    r = _cli(*args, env_extra={"KILL_AFTER": "12"}, entry=("-c", _KILLED_TAGGER))  # in the middle of part 1
    assert r.returncode == -signal.SIGKILL, r.stderr
    # the torn part is a temporary file named by host and pid (unique across nodes); its lock file stays
    assert [p.name for p in out.glob(".part-000001.parquet.tmp-*")] and all(
        p.name.startswith(f".part-000001.parquet.tmp-{socket.gethostname()}-") for p in out.glob(".part-*"))
    assert (out / "_claims" / "part-000001.lock").exists()
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    assert _summary(out)["this_run"]["parts"] == 2 and not list(out.glob(".part-*"))
    assert read_output(out).equals(read_output(small_reference))


@pytest.mark.distributed
def test_array_task_rerun_with_another_world_size_leaves_no_gap(tiny_exports, tmp_path):
    """Shard 0 of 2 under torchrun with 2 ranks, shard 1 in one process: together every part, once."""
    path = write_input(tmp_path / "in.parquet", TEXTS * 3 + TEXTS[:8])  # 10 parts of 8 rows
    reference = tmp_path / "reference"
    assert run_tag(tiny_exports["bert"] / "export", path, reference) == 0
    out = tmp_path / "out"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    r = _cli("--model", str(tiny_exports["bert"] / "export"), "--input", str(path), "--output", str(out),
             "--rows-per-part", "10", "--buffer-rows", "6", "--device", "cpu", "--num-shards", "2",
             "--shard-index", "0", launcher=launcher, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    ranks = _summary(out)["this_run"]["ranks"]
    # shard 0's 5 parts, then shard 1's (stolen: no task of shard 1 ran)
    assert sum(r["parts"] for r in ranks) == 10 and sum(r["parts_stolen"] for r in ranks) == 5
    assert all(r["shard"] == 0 for r in ranks)
    assert run_tag(tiny_exports["bert"] / "export", path, out, "--num-shards", "2", "--shard-index", "1") == 0
    assert _summary(out)["this_run"]["parts"] == 0 and _summary(out)["total"]["complete"]
    assert sorted(_parts(out)) == [f"part-{i:06d}.parquet" for i in range(10)]
    assert read_output(out).equals(read_output(reference))


# ------------------------------------------------------------------ 8. the output stage
def test_a_failing_writer_is_one_clear_error_and_the_rerun_resumes(tiny_exports, small_input, small_reference,
                                                                   tmp_path, capsys, monkeypatch):
    """The Parquet writer (in the output thread) fails on the second part, as on a full disk: one error line
    naming the part, exit 4, the first part kept, no temporary file left; the re-run writes the rest."""
    import errno

    from infer import parts

    write = parts.PartWriter.write

    def failing_write(self, table):
        if self.part["index"] == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(self, table)

    out = tmp_path / "out"
    monkeypatch.setattr(parts.PartWriter, "write", failing_write)
    assert run_tag(tiny_exports["bert"] / "export", small_input, out) == 4
    assert _error(capsys) == (f"ner-tag: error: --output {out}: cannot write part 1: No space left on device; "
                              "finished parts are kept and a re-run resumes")
    assert [p.name for p in out.glob("part-*.parquet")] == ["part-000000.parquet"]
    assert not list(out.glob(".part-*"))
    monkeypatch.setattr(parts.PartWriter, "write", write)
    assert run_tag(tiny_exports["bert"] / "export", small_input, out) == 0
    assert _summary(out)["this_run"]["parts"] == 2 and _summary(out)["total"]["complete"]
    assert read_output(out).equals(read_output(small_reference))
