"""The DeepSpeed engine: config filling (fast), and real ZeRO-2 runs with torchrun on CPU (slow).

The CPU runs need ``DS_ACCELERATOR=cpu`` (set here when there is no GPU) and compile DeepSpeed's
shared-memory communication op once (g++/ninja, 0.5-3 min on a busy machine); the build is cached
under ``TORCH_EXTENSIONS_DIR`` (kept if set, else ``~/.cache/ner-taggers/torch_extensions``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from common.distributed import DistInfo
from tests.tiny_models import REPO_ROOT, tiny_train_args
from taggers.precision import resolve_precision
from train.config import ConfigError, load_config
from train.ds_engine import build_ds_config, load_ds_config

CONFIGS = REPO_ROOT / "train" / "configs"
BILSTM = ("model.type=\"bilstm\"", "model.lstm_hidden=16", "model.lstm_layers=1")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ds_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               WANDB_MODE="disabled")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "ner-taggers" / "torch_extensions"))
    return env


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (the torchrun workers), from /proc."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


# ---------------------------------------------------------------- config filling (no DeepSpeed run)
def _cfg(*overrides):
    return load_config(None, ["train.engine=\"deepspeed\"", *overrides])


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_shipped_configs_build(stage):
    ds = build_ds_config(load_ds_config(str(CONFIGS / f"ds_zero{stage}.json")),
                         _cfg("optim.grad_accum=4", "optim.max_grad_norm=0.5"), DistInfo(world_size=2))
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_micro_batch_size_per_gpu"] == 1 and ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 8 and ds["gradient_clipping"] == 0.5
    assert "optimizer" not in ds and "scheduler" not in ds and "fp16" not in ds
    # precision auto on a CPU: bf16 autocast where the CPU has native bf16, else fp32
    native = resolve_precision("auto", torch.device("cpu"), training=True) == "bf16"
    assert bool(ds.get("torch_autocast", {}).get("enabled")) is native


def test_precision_from_run_config():
    ds = build_ds_config({}, _cfg("train.precision=\"bf16\""), DistInfo())
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and "bf16" not in ds
    ds = build_ds_config({"bf16": {"enabled": True}}, _cfg("train.precision=\"fp32\""), DistInfo())
    assert ds["bf16"] == {"enabled": True} and "torch_autocast" not in ds  # explicit bf16 weights are kept


@pytest.mark.parametrize("ds, words", [
    ({"gradient_accumulation_steps": 8}, ["gradient_accumulation_steps", "optim.grad_accum"]),
    ({"gradient_clipping": 5.0}, ["gradient_clipping", "optim.max_grad_norm"]),
    ({"optimizer": {"type": "Adam"}}, ["optimizer", "optim."]),
    ({"scheduler": {"type": "WarmupLR"}}, ["scheduler"]),
    ({"fp16": {"enabled": True}}, ["fp16", "bf16"]),
    ({"zero_optimization": {"stage": 3}}, ["stage 3"]),
])
def test_conflicting_settings_are_clear_errors(ds, words):
    with pytest.raises(ConfigError) as e:
        build_ds_config(ds, _cfg(), DistInfo(), "my.json")
    assert "my.json" in str(e.value) and all(w in str(e.value) for w in words)


def test_missing_or_bad_json_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="--deepspeed-config"):
        load_ds_config("")
    with pytest.raises(ConfigError, match="nope.json"):
        load_ds_config(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{stage: 2")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_ds_config(str(tmp_path / "bad.json"))


# ---------------------------------------------------------------- real runs
def _train_cmd(nproc: int, data, encoder, out, *extra) -> list[str]:
    # --standalone: a free rendezvous port (with torch 2.13, --master_port=0 leaves the workers waiting on port 0)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    return [*launcher, "-m", "train", *tiny_train_args(data, encoder, out, *extra)]


def run_group(cmd, timeout: float, **kw) -> subprocess.CompletedProcess:
    """``subprocess.run`` that also kills torchrun's workers when it times out."""
    proc = subprocess.Popen(cmd, env=ds_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(map(str, cmd))}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_single_process_deepspeed_matches_ddp_engine(tmp_path, tiny_bert_dir, tiny_data_json):
    """ZeRO-0, one process, gradient accumulation: same losses as the DDP engine."""
    extra = (*BILSTM, "train.epochs=1", "train.max_tokens=256", "optim.grad_accum=3", "optim.max_grad_norm=0.5")
    runs = {}
    for engine, flags in (("ddp", ()), ("deepspeed", ("--engine", "deepspeed", "--deepspeed-config",
                                                      str(CONFIGS / "ds_zero0.json")))):
        out = tmp_path / engine
        res = run_group(_train_cmd(1, tiny_data_json, tiny_bert_dir, out, *extra) + list(flags), timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[engine] = [r for r in read_jsonl(out / "train_log.jsonl") if r["event"] == "step"]
    assert json.loads((tmp_path / "deepspeed" / "metrics.json").read_text())["engine"] == "deepspeed"
    assert len(runs["ddp"]) == len(runs["deepspeed"]) >= 2
    for a, b in zip(runs["ddp"], runs["deepspeed"]):
        assert a["step"] == b["step"] and a["lr"] == pytest.approx(b["lr"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["bert", "bilstm"])
def test_zero2_two_processes_stop_resume_and_tag(tmp_path, tiny_bert_dir, tiny_data_json, kind):
    out = tmp_path / kind
    extra = [*(BILSTM if kind == "bilstm" else ()), "train.epochs=2", "train.max_tokens=96",
             "--engine", "deepspeed", "--deepspeed-config", str(CONFIGS / "ds_zero2.json")]
    cmd = _train_cmd(2, tiny_data_json, tiny_bert_dir, out, *extra)

    # 1. train until the first logged step, then SIGUSR1 both workers: checkpoint and exit code 3
    proc = subprocess.Popen(cmd, env=ds_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    log_path = out / "train_log.jsonl"
    deadline = time.time() + 540  # the first run may compile the shm op
    sent = False
    try:
        while time.time() < deadline and proc.poll() is None:
            if log_path.exists() and '"step"' in log_path.read_text():
                for pid in child_pids(proc.pid):
                    os.kill(pid, signal.SIGUSR1)
                sent = True
                break
            time.sleep(0.05)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert sent, f"no training step was logged (exit code {proc.returncode}): {err[-3000:]}"
    assert proc.returncode != 0 and "stop signal received" in err, err[-3000:]
    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    stopped_at = int(ckpt.name[5:].split("-")[0])  # step_N, or step_N-k for a step saved again
    # ZeRO-2: the optimizer state is partitioned, one file per rank
    assert sorted(p.name for p in (ckpt / "deepspeed").glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]

    # 2. resume: continues after the checkpoint and finishes
    res = run_group(cmd + ["--resume"], timeout=540)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {ckpt}" in res.stderr or f"at step {stopped_at}" in res.stderr, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["engine"] == "deepspeed" and metrics["world_size"] == 2
    assert 0 < stopped_at < metrics["steps"]
    steps = [r["step"] for r in read_jsonl(log_path) if r["event"] == "step"]
    assert steps == list(range(1, metrics["steps"] + 1))  # every step once, across the stop
    assert res.stderr.count("best model (step") == 2  # rank 0 logs only

    # 3. the best export tags text
    from common.data import Sentence
    from taggers.export import load_tagger
    from taggers.predict import predict_windows

    model, windower = load_tagger(str(out / "export"))
    texts = [["Peter", "Blackburn", "visited", "Brussels", "."], ["EU", "rejects", "German", "call"]]
    windows = windower.windows([Sentence(t, None, None, i) for i, t in enumerate(texts)], with_labels=False)
    predicted = predict_windows(model, windows, [len(t) for t in texts], DistInfo().device, max_tokens=4096,
                                pad_id=windower.pad_id)
    preds, probs = predicted.label_ids, predicted.probs
    assert [len(p) for p in preds] == [5, 4]
    assert all(0 <= i < len(windower.labels) for row in preds for i in row)
    assert all(0.0 < q <= 1.0 for row in probs for q in row)
