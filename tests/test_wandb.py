"""W&B tracking: mode resolution, what an (offline) run logs, and rank 0 only.

No test touches the network: runs are offline (``online`` without an API key falls back to
offline), ``HOME``/``NETRC`` point to an empty folder, ``WANDB_BASE_URL`` to a closed local port.
wandb 0.31 writes offline runs only as ``run-*.wandb`` (a LevelDB-style log of protobuf records,
no ``wandb-summary.json``/``config.yaml``), so :func:`read_offline_run` decodes that file.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_models import REPO_ROOT, tiny_train_args

wandb = pytest.importorskip("wandb")

BILSTM = ("model.type=\"bilstm\"", "model.lstm_hidden=16", "model.lstm_layers=1")


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """No API key anywhere, wandb folders in tmp, nothing reachable."""
    home = tmp_path / "home"
    home.mkdir()
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(key, raising=False)
    env = {"HOME": str(home), "NETRC": str(home / ".netrc"), "WANDB_DIR": str(tmp_path / "wandb_dir"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
           "WANDB_DATA_DIR": str(tmp_path / "wandb_data"), "WANDB_SILENT": "true",
           "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_DISABLE_CODE": "true"}
    for key, value in env.items():
        if key.endswith("_DIR"):
            os.makedirs(value, exist_ok=True)
        monkeypatch.setenv(key, value)
    return env


# ---------------------------------------------------------------- reading an offline run
def _records(path: Path):
    """Raw records of a ``.wandb`` file (7-byte header, 32 KiB blocks, 7-byte record headers)."""
    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B", f"{path} is not a W&B log"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            yield pending + chunk
            pending = b""


def read_offline_run(run_dir: Path) -> dict:
    """``{"run": {id, name, project, entity, tags}, "config": {...}, "history": [{...}], "summary": {...}}``."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log_file,) = run_dir.glob("run-*.wandb")
    out = {"run": {}, "config": {}, "history": [], "summary": {}}

    def key(item):
        return item.key or "/".join(item.nested_key)

    for raw in _records(log_file):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"id": r.run_id, "name": r.display_name, "project": r.project, "entity": r.entity,
                          "tags": list(r.tags)}
            out["config"].update({key(u): json.loads(u.value_json) for u in r.config.update})
        elif kind == "config":
            out["config"].update({key(u): json.loads(u.value_json) for u in rec.config.update})
        elif kind == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update({key(u): json.loads(u.value_json) for u in rec.summary.update})
    return out


# ---------------------------------------------------------------- mode resolution
def test_mode_resolution(offline_env, monkeypatch, caplog):
    from train.config import ConfigError
    from train.tracking import has_api_key, resolve_mode

    assert resolve_mode("") == "disabled"
    assert resolve_mode("offline") == "offline" and resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode("") == "offline"  # the environment when the config says nothing
    assert resolve_mode("disabled") == "disabled"  # the config wins
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_mode("") == "offline"
    with pytest.raises(ConfigError, match="wandb.mode"):
        resolve_mode("sometimes")

    assert not has_api_key()
    with caplog.at_level(logging.WARNING, logger="train.tracking"):
        assert resolve_mode("online") == "offline"
    assert "no API key" in caplog.text and "offline" in caplog.text

    Path(offline_env["NETRC"]).write_text("machine 127.0.0.1\n  login user\n  password " + "x" * 40 + "\n")
    assert has_api_key()  # a `wandb login` entry for WANDB_BASE_URL's host
    assert resolve_mode("online") == "online"
    Path(offline_env["NETRC"]).unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("online") == "online"


# ---------------------------------------------------------------- a real (offline) run
def test_run_logs_config_steps_evals_scores_and_errors(tmp_path, offline_env, tiny_bert_dir, tiny_data_json,
                                                        caplog):
    """``wandb.mode=online`` without an API key: a warning, then everything is logged offline."""
    from train.__main__ import main

    out = tmp_path / "run"
    args = tiny_train_args(tiny_data_json, tiny_bert_dir, out, *BILSTM, "train.epochs=1", "train.max_tokens=256",
                           "wandb.mode=\"online\"", "wandb.project=\"ner-test\"", "wandb.entity=\"ner-team\"",
                           "wandb.name=\"tiny-bilstm\"",
                           "wandb.tags=[\"ci\", \"bilstm\"]", "wandb.num_error_samples=3")
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert "no API key" in caplog.text and "logging offline instead" in caplog.text

    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    assert not list(Path(offline_env["WANDB_DIR"]).rglob("*.wandb"))  # the run folder, not WANDB_DIR
    got = read_offline_run(runs[0])
    assert got["run"]["name"] == "tiny-bilstm" and got["run"]["project"] == "ner-test"
    assert got["run"]["entity"] == "ner-team"
    assert got["run"]["tags"] == ["ci", "bilstm"]
    assert (out / "wandb_run_id").read_text() == got["run"]["id"]

    # the resolved config: every section with its defaults filled in
    config = got["config"]
    assert config["model"]["type"] == "bilstm" and config["model"]["lstm_hidden"] == 16
    assert config["optim"]["weight_decay"] == 0.01 and config["train"]["epochs"] == 1
    assert config["world_size"] == 1 and config["num_parameters"] > 0

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    steps = [h for h in got["history"] if "train/loss" in h]
    assert [h["_step"] for h in steps] == [r["step"] for r in log if r["event"] == "step"]
    assert all(h["train/lr"] >= 0 and h["train/tokens_per_s"] > 0 for h in steps)
    evals = [h for h in got["history"] if "valid/f1" in h]
    assert [h["_step"] for h in evals] == [r["step"] for r in log if r["event"] == "eval"]
    types = sorted({label[2:] for label in metrics["labels"] if label != "O"})
    for h in evals:
        for t in types:
            assert {f"valid/{t}/precision", f"valid/{t}/recall", f"valid/{t}/f1"} <= h.keys()

    summary = got["summary"]
    for fold in ("valid", "test"):
        assert summary[f"{fold}/f1"] == pytest.approx(metrics[fold]["f1"])
        assert summary[f"{fold}/precision"] == pytest.approx(metrics[fold]["precision"])
        for t in types:
            assert summary[f"{fold}/{t}/f1"] == pytest.approx(metrics[fold]["per_type"][t]["f1"])
    assert summary["best_step"] == metrics["best_step"] and summary["train_wall_s"] > 0

    # the table of sample errors: metadata in the log, rows in the run's files
    assert summary["test/errors/_type"] == "table-file"  # nested keys are joined with "/"
    (table_file,) = (runs[0] / "files").rglob("errors_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["index", "sentence", "gold", "pred", "errors"]
    preds = [json.loads(line) for line in (out / "predictions" / "test.jsonl").read_text().splitlines()]
    n_wrong = sum(p["gold"] != p["pred"] for p in preds)
    assert len(table["data"]) == min(3, n_wrong)
    for row in table["data"]:
        assert row[2] != row[3] and "->" in row[4]


def test_disabled_writes_nothing(tmp_path, offline_env, tiny_bert_dir, tiny_data_json):
    from train.__main__ import main

    out = tmp_path / "run"
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, out, *BILSTM, "train.epochs=1",
                                "train.max_tokens=1024", "wandb.mode=\"disabled\"")) == 0
    assert not (out / "wandb").exists() and not (out / "wandb_run_id").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_make_one_wandb_run(tmp_path, offline_env, tiny_bert_dir, tiny_data_json):
    out = tmp_path / "run"
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train",
           *tiny_train_args(tiny_data_json, tiny_bert_dir, out, *BILSTM, "train.epochs=1", "train.max_tokens=256")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    assert not list(Path(offline_env["WANDB_DIR"]).rglob("*.wandb"))
    got = read_offline_run(runs[0])
    assert got["config"]["world_size"] == 2
    assert any("train/loss" in h for h in got["history"]) and "test/f1" in got["summary"]
