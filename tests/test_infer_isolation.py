"""ner-tag with bad and changing input files: ``--on-bad-file skip`` tags every other file and exits 6 with the
bad ones listed; a repaired file is tagged alone on the next run; a removed or rewritten file's parts are
dropped and the other files' parts kept (renumbered to their place in the input order)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infer.summary import EXIT_BAD_FILES
from tests.test_infer import read_output, run_tag

ROWS = 16  # per file; row groups of 4 rows and --rows-per-part 10: 2 parts of 8 rows per file


def _texts(first: int, n: int = ROWS) -> pa.Table:
    return pa.table({"id": list(range(first, first + n)),
                     "text": [f"Angela Merkel visited Japan {i} times with the European Commission ." for i in
                              range(first, first + n)]})


def _write(path: Path, first: int, n: int = ROWS) -> Path:
    pq.write_table(_texts(first, n), path, row_group_size=4)
    return path


def _corrupt_last_row_group(path: Path) -> None:
    """Junk over the last row group's column chunks; the footer (schema, row counts) still reads."""
    meta = pq.ParquetFile(path).metadata
    rg = meta.row_group(meta.num_row_groups - 1)
    cols = [rg.column(c) for c in range(rg.num_columns)]
    start = min(c.dictionary_page_offset or c.data_page_offset for c in cols)
    end = max((c.dictionary_page_offset or c.data_page_offset) + c.total_compressed_size for c in cols)
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(b"\xff" * (end - start))


def _summary(out: Path) -> dict:
    return json.loads((out / "_summary.json").read_text())


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    _write(folder / "a.parquet", 0)
    _corrupt_last_row_group(_write(folder / "b.parquet", 100))  # rows 108-115 (its part 2 of 2) unreadable
    pq.write_table(pa.table({"id": [200, 201], "body": ["x", "y"]}), folder / "c.parquet")  # no text column
    (folder / "d.parquet").write_bytes(b"not parquet at all" * 10)
    _write(folder / "e.parquet", 400)
    return folder


def test_bad_files_are_skipped_listed_and_repaired_alone(tiny_exports, corpus, tmp_path, capsys):
    export = tiny_exports["bert"] / "export"
    out = tmp_path / "out"
    assert run_tag(export, corpus, tmp_path / "strict") == 2  # the default: the first bad file stops the run
    capsys.readouterr()

    assert run_tag(export, corpus, out, "--on-bad-file", "skip") == EXIT_BAD_FILES
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("ner-tag: ")]
    assert len(lines) == 1 and lines[0].startswith("ner-tag: 3 input file(s) skipped (1 part(s) unreadable), "
                                                   f"listed with their errors in {out / '_summary.json'}"), err
    total = _summary(out)["total"]
    skipped = {Path(s["path"]).name: s for s in total["skipped_files"]}
    assert sorted(skipped) == ["b.parquet", "c.parquet", "d.parquet"]
    assert "no text column 'text'" in skipped["c.parquet"]["error"]
    assert "not a readable Parquet file" in skipped["d.parquet"]["error"]
    assert "cannot decode the rows of part 3" in skipped["b.parquet"]["error"] and skipped["b.parquet"]["parts"] == [3]
    listed = json.loads((out / "_manifest" / "skipped_files.json").read_text())
    assert [Path(f["path"]).name for f in listed] == ["c.parquet", "d.parquet"] and all(f["error"] for f in listed)
    bad = json.loads((out / "_manifest" / "bad-000003.json").read_text())
    assert bad["file"].endswith("b.parquet") and bad["rows"] == [8, 16] and "cannot decode" in bad["error"]
    assert not total["complete"] and total["parts_bad"] == 1 and total["parts_left"] == []
    ids = read_output(out).column("id").to_pylist()
    assert ids == list(range(16)) + list(range(100, 108)) + list(range(400, 416))  # every readable row, in order

    # again without repairing: the bad part is not retried, nothing is rewritten, still exit 6
    before = _mtimes(out)
    assert run_tag(export, corpus, out, "--on-bad-file", "skip") == EXIT_BAD_FILES
    assert _mtimes(out) == before and _summary(out)["this_run"]["rows"] == 0

    # repaired: only those files are tagged (b's readable part too: b is a new file now)
    _write(corpus / "b.parquet", 100)
    _write(corpus / "c.parquet", 200, 4)
    _write(corpus / "d.parquet", 300, 4)
    capsys.readouterr()
    assert run_tag(export, corpus, out, "--on-bad-file", "skip") == 0
    assert "skipped" not in capsys.readouterr().err
    summary = _summary(out)
    assert summary["this_run"]["rows"] == ROWS + 4 + 4 and summary["total"]["complete"]
    assert summary["total"]["skipped_files"] == [] and not list((out / "_manifest").glob("bad-*.json"))
    assert not (out / "_manifest" / "skipped_files.json").exists()
    reference = tmp_path / "reference"
    assert run_tag(export, corpus, reference) == 0
    assert read_output(out).equals(read_output(reference))
    # a and e were not tagged again: their parts are the same files (e's renamed from part 4/5 to 6/7)
    after = _mtimes(out)
    assert {n: after[n] for n in ("part-000000.parquet", "part-000001.parquet")} == {
        n: before[n] for n in ("part-000000.parquet", "part-000001.parquet")}
    assert [after["part-000006.parquet"], after["part-000007.parquet"]] == [
        before["part-000004.parquet"], before["part-000005.parquet"]]


def test_removed_and_rewritten_files_drop_their_parts_only(tiny_exports, tmp_path):
    export = tiny_exports["bert"] / "export"
    folder = tmp_path / "in"
    folder.mkdir()
    for k, name in enumerate("abc"):
        _write(folder / f"{name}.parquet", 100 * k)
    out = tmp_path / "out"
    assert run_tag(export, folder, out) == 0
    kept = pq.read_table(out / "part-000004.parquet")  # c's first part
    (folder / "a.parquet").unlink()
    _write(folder / "b.parquet", 100, 12)  # rewritten: 12 rows
    assert run_tag(export, folder, out) == 0
    summary = _summary(out)
    assert summary["this_run"]["rows"] == 12 and summary["total"]["complete"]  # b only; c kept
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [f"part-{i:06d}.parquet" for i in range(4)]
    assert pq.read_table(out / "part-000002.parquet").equals(kept)  # c's parts moved up, not re-tagged
    reference = tmp_path / "reference"
    assert run_tag(export, folder, reference) == 0
    assert read_output(out).equals(read_output(reference))
    run_info = json.loads((out / "_run.json").read_text())
    assert [Path(f["path"]).name for f in run_info["input"]["files"]] == ["b.parquet", "c.parquet"]


def test_other_input_options_are_still_refused(tiny_exports, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    _write(folder / "a.parquet", 0)
    out = tmp_path / "out"
    assert run_tag(tiny_exports["bert"] / "export", folder, out) == 0
    capsys.readouterr()
    assert run_tag(tiny_exports["bert"] / "export", folder, out, "--rows-per-part", "4") == 2
    assert "other input options" in capsys.readouterr().err


def test_input_changed_under_a_live_process_is_refused(tiny_exports, tmp_path, capsys):
    """A re-plan (changed input) while a live process holds a part's claim could mix two plans: refused."""
    import fcntl

    folder = tmp_path / "in"
    folder.mkdir()
    _write(folder / "a.parquet", 0)
    _write(folder / "b.parquet", 100)
    out = tmp_path / "out"
    assert run_tag(tiny_exports["bert"] / "export", folder, out) == 0
    before = _mtimes(out)
    (folder / "a.parquet").unlink()
    with open(out / "_claims" / "part-000002.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate(0)
        held.write("node3 777 0\n")
        held.flush()
        capsys.readouterr()
        assert run_tag(tiny_exports["bert"] / "export", folder, out) == 2
    err = capsys.readouterr().err
    assert (f"ner-tag: error: {out}: the input changed since this folder was planned, and part 2 is being "
            "tagged by a live process (node3 777) with the old plan") in err, err
    assert _mtimes(out) == before
    assert run_tag(tiny_exports["bert"] / "export", folder, out) == 0  # the holder is gone: re-planned
    assert _summary(out)["this_run"]["rows"] == 0 and read_output(out).column("id").to_pylist() == list(
        range(100, 116))


def test_inputs_given_in_another_order_are_renumbered_not_retagged(tiny_exports, tmp_path):
    export = tiny_exports["bert"] / "export"
    a, b = _write(tmp_path / "a.parquet", 0), _write(tmp_path / "b.parquet", 100)
    out = tmp_path / "out"
    assert run_tag(export, [a, b], out) == 0
    assert run_tag(export, [b, a], out) == 0  # a's parts 0-1 and b's 2-3 swap places
    assert _summary(out)["this_run"]["rows"] == 0 and _summary(out)["total"]["complete"]
    reference = tmp_path / "reference"
    assert run_tag(export, [b, a], reference) == 0
    assert read_output(out).equals(read_output(reference))
    assert not list(out.glob(".replan-*"))
