"""ner-train fails safe: nothing in a run folder is destroyed by a typo, checkpoints survive re-saves and bad
pointers, a checkpoint from another world size is refused, and each error is printed once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from common.distributed import DistInfo
from tests.tiny_models import REPO_ROOT, tiny_train_args
from train.__main__ import main, parse_args
from train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from train.config import ConfigError, load_config
from train.engine import TorchEngine

BILSTM = ("model.type=\"bilstm\"", "model.lstm_hidden=16", "model.lstm_layers=1", "model.use_crf=true")


def _snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def finished_run(tiny_exports, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_exports["bilstm"], run)
    return run


def test_typo_in_data_leaves_the_run_folder_untouched(finished_run, tiny_bert_dir, tiny_data_json, capsys):
    before = _snapshot(finished_run)
    args = tiny_train_args(tiny_data_json.parent / "tyop.json", tiny_bert_dir, finished_run, *BILSTM)
    assert main(args) == 2
    assert "tyop.json" in capsys.readouterr().err
    assert _snapshot(finished_run) == before


def test_rerun_without_resume_or_overwrite_is_refused(finished_run, tiny_bert_dir, tiny_data_json, capsys):
    before = _snapshot(finished_run)
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, finished_run, *BILSTM)) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert err.count("error:") == 1  # printed once
    assert _snapshot(finished_run) == before


def test_overwrite_starts_over_and_results_always_match_the_export(finished_run, tiny_bert_dir, tiny_data_json):
    """A restarted run killed mid-way never leaves the old metrics.json beside its new export."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "train", *tiny_train_args(tiny_data_json, tiny_bert_dir, finished_run, *BILSTM),
           "train.epochs=50", "train.eval_every=2", "--overwrite"]
    old_export = (finished_run / "export" / "ner_config.json").read_text()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    new_export = finished_run / "export" / "ner_config.json"
    while time.time() < deadline and proc.poll() is None:
        if new_export.exists() and new_export.read_text() != old_export:
            break
        time.sleep(0.05)
    proc.kill()
    _, err = proc.communicate()
    assert new_export.read_text() != old_export, err[-2000:]
    assert not (finished_run / "metrics.json").exists()
    assert not (finished_run / "predictions").exists()
    steps = [json.loads(line)["step"] for line in open(finished_run / "train_log.jsonl")]
    assert steps[0] == 1  # the old log is gone, not appended to


def test_overrides_anywhere_on_the_command_line():
    args = parse_args(["optim.lr=1e-3", "--data", "d.json", "train.epochs=2", "--resume", "model.type=\"bilstm\""])
    assert args.data == "d.json" and args.resume
    assert args.overrides == ["optim.lr=1e-3", "train.epochs=2", "model.type=\"bilstm\""]


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)

    def parameter_groups(self):
        return {"encoder": [], "head": list(self.parameters())}


def test_max_grad_norm_zero_means_no_clipping():
    cfg = load_config(None, ["optim.max_grad_norm=0", "optim.weight_decay=0", "optim.warmup_ratio=0"])
    model = _Linear()
    engine = TorchEngine(model, cfg, DistInfo(), total_steps=10)
    before = model.layer.weight.detach().clone()
    model.layer(torch.ones(1, 3)).sum().backward()
    engine.step()
    assert not torch.equal(before, model.layer.weight)  # clipping to norm 0 would have zeroed the gradient


class _EngineStub:
    """Writes a file like an engine does; loads nothing."""

    def save(self, ckpt_dir):
        with open(os.path.join(ckpt_dir, "engine.pt"), "w") as f:
            f.write("state")

    def load(self, ckpt_dir):
        self.loaded = ckpt_dir


def test_saving_a_step_again_never_deletes_what_latest_names(tmp_path):
    info = DistInfo()
    first = save_checkpoint(_EngineStub(), {"step": 5, "world_size": 1}, str(tmp_path), info)
    second = save_checkpoint(_EngineStub(), {"step": 5, "epoch": 1, "world_size": 1}, str(tmp_path), info)
    assert os.path.basename(first) == "step_00000005" and os.path.basename(second) == "step_00000005-1"
    assert os.path.isdir(first) and latest_checkpoint(str(tmp_path)) == second
    third = save_checkpoint(_EngineStub(), {"step": 6, "world_size": 1}, str(tmp_path), info)
    assert not os.path.exists(first) and os.path.isdir(second)  # keeps two
    assert latest_checkpoint(str(tmp_path)) == third


def test_dangling_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    info = DistInfo()
    older = save_checkpoint(_EngineStub(), {"step": 3, "world_size": 1}, str(tmp_path), info)
    newer = save_checkpoint(_EngineStub(), {"step": 4, "world_size": 1}, str(tmp_path), info)
    (tmp_path / "checkpoints" / "latest").write_text("step_00000099")
    assert latest_checkpoint(str(tmp_path)) == newer
    os.remove(os.path.join(newer, "trainer_state.pt"))  # incomplete
    assert latest_checkpoint(str(tmp_path)) == older
    (tmp_path / "checkpoints" / "latest").unlink()
    assert latest_checkpoint(str(tmp_path)) == older


def test_resume_with_another_world_size_is_refused(tmp_path):
    path = save_checkpoint(_EngineStub(), {"step": 3, "world_size": 2}, str(tmp_path), DistInfo())
    engine = _EngineStub()
    with pytest.raises(ConfigError, match="written by 2 process"):
        load_checkpoint(engine, path, DistInfo())
    assert not hasattr(engine, "loaded")  # refused before touching the engine
