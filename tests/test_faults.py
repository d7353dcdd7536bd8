"""Faults injected into the commands: a file size limit (``RLIMIT_FSIZE``: a write fails with EFBIG as on a
full disk), output places that cannot be written (under a file, read-only), truncated checkpoints and
unreadable weights.  Each ends in one ``error:`` line naming the path with its documented exit code (2: found
by the checks before work starts; 4: the system refused a write during the work), no temporary folder is
left, and the re-run after the cause is fixed continues."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.cli import OS_ERROR_EXIT
from tests.test_infer_failures import _read_only
from tests.tiny_models import REPO_ROOT, TINY_RUNS, tiny_train_args

BILSTM = TINY_RUNS["bilstm"]


def _file_size_limit(max_bytes: int):
    """preexec_fn: files may not grow beyond ``max_bytes``; the write fails with EFBIG (no SIGXFSZ kill)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return limit


def _run(module: str, args: list[str], max_bytes: int | None = None) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=240, preexec_fn=_file_size_limit(max_bytes) if max_bytes else None)
    return proc.returncode, proc.stderr


def _one_error(err: str, command: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(f"{command}: error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith(".tmp")
                  or ".tmp-" in p.name)


# ---------------------------------------------------------------- file too large / disk full

def test_train_file_too_large_then_resume(tiny_bert_dir, tiny_data_json, tmp_path):
    """The export (4 MB of weights) cannot be written under a 2 MB limit: exit 4 naming the file, no
    export.tmp left; once the limit is gone, --resume finishes the run."""
    from train.__main__ import main

    run = tmp_path / "run"
    args = tiny_train_args(tiny_data_json, tiny_bert_dir, run, *BILSTM, "train.epochs=1")
    rc, err = _run("train", args, max_bytes=2 << 20)
    line = _one_error(err, "ner-train")
    assert rc == OS_ERROR_EXIT and "model.safetensors: File too large" in line and "--resume" in line, line
    assert not _leftovers(run) and not (run / "export").exists()
    assert main([*args, "--resume"]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] >= 1 and not _leftovers(run)


@pytest.fixture
def file_size_limit():
    """Lower this process's file size limit for the block (the soft limit only: it is raised back after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    class Limit:
        def __call__(self, max_bytes):
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
            return self

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    yield Limit()
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)


def test_checkpoint_too_large_leaves_no_half_checkpoint(tmp_path, file_size_limit):
    """torch.save's own error on a refused write becomes an OSError naming the checkpoint; its .tmp folder
    goes, the complete checkpoint before it stays the one to resume from."""
    import torch

    from common.distributed import DistInfo
    from train.checkpoint import latest_checkpoint, save_checkpoint
    from train.config import load_config
    from train.engine import TorchEngine

    model = torch.nn.Module()
    model.add_module("big", torch.nn.Linear(200, 200))
    model.parameter_groups = lambda: {"encoder": [], "head": list(model.parameters())}
    engine = TorchEngine(model, load_config(None, []), DistInfo(), total_steps=10)
    first = save_checkpoint(engine, {"step": 1, "world_size": 1}, str(tmp_path), DistInfo())
    with pytest.raises(OSError) as info, file_size_limit(64 << 10):
        save_checkpoint(engine, {"step": 2, "world_size": 1}, str(tmp_path), DistInfo())
    assert "step_00000002" in str(info.value.filename)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000001"]
    assert latest_checkpoint(str(tmp_path)) == first


def test_tag_file_too_large_then_rerun(tiny_exports, tmp_path):
    source = tmp_path / "in.parquet"
    texts = [f"Angela Merkel visited Japan {i} times with the European Commission in Brussels ." for i in range(400)]
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), source)
    out = tmp_path / "out"
    args = ["--model", str(tiny_exports["bilstm"] / "export"), "--input", str(source), "--output", str(out),
            "--threads", "1", "--no-progress"]
    rc, err = _run("infer", args, max_bytes=4096)
    line = _one_error(err, "ner-tag")
    assert rc == OS_ERROR_EXIT and str(out) in line and "File too large" in line, line
    from infer.__main__ import main

    assert main(args) == 0  # the re-run once the cause is gone
    assert pq.read_table(out).num_rows == len(texts)


# ---------------------------------------------------------------- output places

@pytest.fixture
def no_data_loading(monkeypatch):
    """The output folder is checked before any data or model is loaded."""
    import train.trainer

    def refuse(cfg):
        raise AssertionError("data loaded before the output folder was checked")
    monkeypatch.setattr(train.trainer, "load_data", refuse)


@pytest.mark.parametrize("place", ["file", "under_file", "read_only"])
def test_train_output_dir_that_cannot_be_written(place, tiny_bert_dir, tiny_data_json, tmp_path, capsys,
                                                 no_data_loading):
    from train.__main__ import main

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    parent = tmp_path / "ro"
    parent.mkdir()
    out = {"file": blocker, "under_file": blocker / "run", "read_only": parent / "run"}[place]
    args = tiny_train_args(tiny_data_json, tiny_bert_dir, out, *BILSTM)
    if place == "read_only":
        with _read_only(parent):
            assert main(args) == 2
    else:
        assert main(args) == 2
    line = _one_error(capsys.readouterr().err, "ner-train")
    assert "train.output_dir" in line and str(blocker if place != "read_only" else parent) in line, line
    assert blocker.read_text() == "x" and not list(parent.iterdir())


def _predictions_run(root: Path, data: Path) -> Path:
    """A run folder with saved test predictions (= gold) and no export."""
    run = root / "run"
    (run / "predictions").mkdir(parents=True)
    (run / "config.toml").write_text(f'[data]\npath = "{data}"\n')
    (run / "metrics.json").write_text(json.dumps({"model_type": "bilstm", "num_parameters": 1}))
    test = json.loads(data.read_text())["test"]
    with open(run / "predictions" / "test.jsonl", "w") as f:
        for i, s in enumerate(test):
            f.write(json.dumps({"index": i, "tokens": s["tokens"], "gold": s["tags"], "pred": s["tags"]}) + "\n")
    return run


def test_report_out_problems_and_no_half_written_report(tiny_conll_json, tmp_path, capsys, monkeypatch):
    import report.__main__ as report_main

    run = _predictions_run(tmp_path, tiny_conll_json)
    args = [str(run), "--data", str(tiny_conll_json), "--no-speed", "--bootstrap", "20"]
    assert report_main.main([*args, "--out", str(tiny_conll_json / "report")]) == 2
    assert "--out" in _one_error(capsys.readouterr().err, "ner-report")
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("the previous report")
    before = (out / "report.md").read_text()

    def disk_full(path, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    monkeypatch.setattr(report_main, "write_json", disk_full)  # the last file of the report
    assert report_main.main([*args, "--out", str(out), "--bootstrap", "10"]) == OS_ERROR_EXIT
    line = _one_error(capsys.readouterr().err, "ner-report")
    assert "No space left on device" in line and "report.json" in line
    assert (out / "report.md").read_text() == before  # the previous report is whole
    assert not (tmp_path / "report.tmp").exists()
    fresh = tmp_path / "fresh"
    assert report_main.main([*args, "--out", str(fresh)]) == OS_ERROR_EXIT
    capsys.readouterr()
    assert not fresh.exists() and not (tmp_path / "fresh.tmp").exists()  # nothing half-written


def test_main_job_out_under_a_file(tiny_conll_json, tmp_path, capsys):
    from pipeline.__main__ import main

    assert main(["--data", str(tiny_conll_json), "--out", str(tiny_conll_json / "runs")]) == 2
    assert "--out" in _one_error(capsys.readouterr().err, "ner-main")


# ---------------------------------------------------------------- unreadable weights, truncated checkpoints

def test_unreadable_weights_are_one_line(tiny_exports, tiny_data_json, tmp_path, capsys):
    from infer.__main__ import main as tag_main
    from train.evaluate import main as evaluate_main

    export = tmp_path / "export"
    shutil.copytree(tiny_exports["bilstm"] / "export", export)
    (export / "model.safetensors").unlink()
    (export / "model.safetensors").mkdir()  # cannot be read as a file (root reads files whatever their mode)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["Peter lives in Paris."]}), source)
    assert tag_main(["--model", str(export), "--input", str(source), "--output", str(tmp_path / "out"),
                     "--no-progress"]) == OS_ERROR_EXIT
    assert f"{export / 'model.safetensors'}: Is a directory" in _one_error(capsys.readouterr().err, "ner-tag")
    assert not (tmp_path / "out").exists()
    assert evaluate_main(["--model", str(export), "--data", str(tiny_data_json)]) == OS_ERROR_EXIT
    assert f"{export / 'model.safetensors'}: Is a directory" in _one_error(capsys.readouterr().err, "ner-evaluate")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_resume_falls_back_from_a_truncated_checkpoint(tiny_bert_dir, tiny_data_json, tmp_path, capsys, caplog):
    from train.__main__ import main

    run = tmp_path / "run"
    args = tiny_train_args(tiny_data_json, tiny_bert_dir, run, *BILSTM, "train.max_steps=4",
                           "train.checkpoint_every=2", "train.eval_every=4")
    assert main(args) == 0
    checkpoints = sorted((run / "checkpoints").glob("step_*"))
    assert len(checkpoints) == 2 and checkpoints[-1].name == "step_00000004"
    _truncate(checkpoints[-1] / "engine.pt")
    assert main([*args, "--resume"]) == 0
    warned = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(warned) == 1 and str(checkpoints[-1]) in warned[0] and "\n" not in warned[0]
    assert any(f"resumed from {checkpoints[0]}" in r.getMessage() for r in caplog.records)
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["event"] == "step"] == [1, 2, 3, 4]  # steps 3-4 trained again, once
    # none readable: said so, and stopped
    for c in sorted((run / "checkpoints").glob("step_*")):
        _truncate(c / "trainer_state.pt")
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    assert "no complete checkpoint" in _one_error(capsys.readouterr().err, "ner-train")


def test_resume_compares_resolved_data_paths(tiny_conll_json, tmp_path, monkeypatch):
    from common.rundir import RunFolder
    from train.checkpoint import check_resume_config
    from train.config import ConfigError, load_config, to_dict

    monkeypatch.chdir(tiny_conll_json.parent)
    run = tmp_path / "run"
    run.mkdir()
    RunFolder(str(run)).write_config(to_dict(load_config(None, [f'data.path="{tiny_conll_json.name}"'])))
    check_resume_config(load_config(None, [f'data.path="{tiny_conll_json}"']), str(run))  # the same file
    other = tmp_path / "other.json"
    other.write_text(tiny_conll_json.read_text())
    with pytest.raises(ConfigError, match="data.path"):
        check_resume_config(load_config(None, [f'data.path="{other}"']), str(run))
