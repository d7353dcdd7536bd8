"""Training runs that survive: checkpoints resume at another world size, rank 0 picks the checkpoint, a
checkpoint that does not fit is refused before start-up, a hung rank ends the job within the process-group
timeout (named), and checkpoints are written every few minutes."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from common.batching import TokenBudgetBatchSampler
from common.distributed import DistInfo
from common.heartbeat import HUNG_EXIT_CODE
from common.rundir import RunFolder
from tests.tiny_models import REPO_ROOT, run_in_own_session, tiny_train_args
from train import trainer
from train.__main__ import main
from train.checkpoint import TRAINER_STATE, latest_checkpoint, load_checkpoint, save_checkpoint
from train.config import ConfigError
from train.trainer import PREEMPTED_EXIT_CODE

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--max_restarts=0"]
# bilstm (with dropout), fp32, small batches: several steps per epoch
RESHARD_ARGS = ("model.type=\"bilstm\"", "model.lstm_hidden=16", "model.lstm_layers=1", 'train.precision="fp32"',
                "train.max_tokens=128", "--device", "cpu")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- the data position across world sizes
@pytest.mark.parametrize("seed", [0, 1])
def test_a_step_takes_the_same_global_batches_at_any_world_size(seed):
    """Processes x grad_accum = 4 micro-batches per step: the batches of every step are the same set."""
    lengths = [(7 * i + seed) % 23 + 1 for i in range(97)]
    steps = {}
    for world_size in (1, 2, 4):
        accum = 4 // world_size
        ranks = [list(TokenBudgetBatchSampler(lengths, 40, seed=seed, num_replicas=world_size, rank=r, pad_to=4))
                 for r in range(world_size)]
        assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) % accum == 0
        steps[world_size] = [sorted(sorted(b) for r in ranks for b in r[k * accum:(k + 1) * accum])
                             for k in range(len(ranks[0]) // accum)]
    assert steps[1] == steps[2] == steps[4]


class _EngineStub:
    name = "ddp"

    def save(self, ckpt_dir):
        torch.save({}, os.path.join(ckpt_dir, "engine.pt"))

    def load(self, ckpt_dir):
        self.loaded = ckpt_dir


def test_position_in_the_epoch_maps_onto_another_world_size(tmp_path):
    state = {"step": 3, "epoch": 1, "batch_in_epoch": 3, "world_size": 2, "grad_accum": 1}
    path = save_checkpoint(_EngineStub(), state, str(tmp_path), DistInfo())
    one = load_checkpoint(_EngineStub(), path, DistInfo(world_size=1), grad_accum=2)
    assert (one["batch_in_epoch"], one["world_size"], one["grad_accum"], one["step"]) == (6, 1, 2, 3)
    with pytest.raises(ConfigError, match=r"set optim.grad_accum=2 to resume with 1 process"):
        load_checkpoint(_EngineStub(), path, DistInfo(world_size=1), grad_accum=1)
    with pytest.raises(ConfigError, match="do not split evenly over 4 processes"):
        load_checkpoint(_EngineStub(), path, DistInfo(world_size=4), grad_accum=1)


# a wrapper around the real entry point: stops at STOP_AT_STEP like a SIGUSR1 would (checkpoint, exit 3), and
# fails on any rank but 0 that lists the checkpoints folder itself
_WRAPPER = """
import os, signal, sys
from train import trainer

STOP_AT = int(os.environ.get("STOP_AT_STEP", "0"))
stop_if_signalled = trainer.Trainer.stop_if_signalled
def stop_at(self):
    if self.state.step == STOP_AT:
        self.stop.signum = signal.SIGUSR1
    return stop_if_signalled(self)
trainer.Trainer.stop_if_signalled = stop_at
if int(os.environ.get("RANK", "0")) != 0:
    def not_here(run_dir):
        raise AssertionError("only rank 0 lists the checkpoints")
    trainer.latest_checkpoint = not_here

from train.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_resume_two_to_one_to_two_processes_matches_an_uninterrupted_run(tmp_path, tiny_bert_dir, tiny_data_json):
    script = tmp_path / "stop_at.py"
    script.write_text(_WRAPPER)

    def run(out, nproc, accum, stop_at=0, resume=False):
        launcher = [*TORCHRUN, f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable]
        cmd = [*launcher, str(script), *tiny_train_args(tiny_data_json, tiny_bert_dir, out, *RESHARD_ARGS),
               f"optim.grad_accum={accum}", *(["--resume"] if resume else [])]
        code, output, _ = run_in_own_session(cmd, dict(_env(), STOP_AT_STEP=str(stop_at)), 300)
        # a stopped worker exits 3, which torchrun reports as its own status 1
        assert code == (0 if not stop_at else PREEMPTED_EXIT_CODE if nproc == 1 else 1), output[-4000:]
        assert not stop_at or "stop signal received: checkpoint written at step" in output, output[-4000:]
        return output

    full = tmp_path / "full"  # the same 2 micro-batches a step, in one process (a 2-process one reads the same)
    run(full, 1, 2)
    log = _read_jsonl(full / "train_log.jsonl")
    per_epoch = [r["step"] for r in log if r["event"] == "eval"][0]
    assert per_epoch >= 4

    out = tmp_path / "resharded"
    run(out, 2, 1, stop_at=2)  # epoch 0, mid-way
    output = run(out, 1, 2, stop_at=per_epoch + 2, resume=True)  # 1 process, 2 micro-batches a step
    assert "resumed from" in output and "at step 2 (epoch 0, batch 4)" in output
    output = run(out, 2, 1, resume=True)
    assert f"at step {per_epoch + 2} (epoch 1, batch 2)" in output

    a = [r for r in log if r["event"] == "step"]
    b = [r for r in _read_jsonl(out / "train_log.jsonl") if r["event"] == "step"]
    assert [r["step"] for r in a] == [r["step"] for r in b]
    diffs = [abs(x["loss"] - y["loss"]) / x["loss"] for x, y in zip(a, b)]
    print(f"max relative loss difference over {len(diffs)} steps: {max(diffs):.2e}")
    assert max(diffs) < 1e-5, list(zip([r["loss"] for r in a], [r["loss"] for r in b]))
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full, out))
    assert (ma["valid"]["f1"], ma["test"]["f1"], ma["best_step"]) == (mb["valid"]["f1"], mb["test"]["f1"],
                                                                      mb["best_step"])


# ---------------------------------------------------------------- refused before start-up
@pytest.fixture
def no_startup(monkeypatch):
    """Fails the test if the trainer gets as far as loading the data (before the model and engine)."""
    def load_data(cfg):
        raise AssertionError("the checkpoint was not refused before start-up")
    monkeypatch.setattr(trainer, "load_data", load_data)


def _as_deepspeed_checkpoint(run: Path, world_size: int) -> None:
    """Make the run folder's latest checkpoint look like one DeepSpeed wrote with ``world_size`` processes."""
    ckpt = Path(latest_checkpoint(str(run)))
    (ckpt / "engine.pt").unlink()
    (ckpt / "deepspeed").mkdir()
    state = torch.load(ckpt / TRAINER_STATE, weights_only=False)
    torch.save({**state, "world_size": world_size, "grad_accum": 1}, ckpt / TRAINER_STATE)


DS_ARGS = ("--engine", "deepspeed", "--deepspeed-config", str(REPO_ROOT / "train" / "configs" / "ds_zero2.json"))
BILSTM = ("model.type=\"bilstm\"", "model.lstm_hidden=16", "model.lstm_layers=1", "model.use_crf=true")


@pytest.mark.parametrize("case", ["ddp_to_deepspeed", "deepspeed_to_ddp", "deepspeed_other_size"])
def test_checkpoint_that_does_not_fit_is_refused_before_startup(case, tmp_path, tiny_exports, tiny_bert_dir,
                                                                tiny_data_json, no_startup, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_exports["bilstm"], run)
    folder = RunFolder(str(run))
    args = tiny_train_args(tiny_data_json, tiny_bert_dir, run, *BILSTM) + ["--resume"]
    if case == "ddp_to_deepspeed":
        args += DS_ARGS
        expected = "train.engine: saved 'ddp', now 'deepspeed'"
    elif case == "deepspeed_to_ddp":
        _as_deepspeed_checkpoint(run, 1)
        expected = "was written by the deepspeed engine and this run uses ddp"
    else:
        _as_deepspeed_checkpoint(run, 2)
        config = folder.read_config()
        config["train"]["engine"] = "deepspeed"
        folder.write_config(config)
        args += DS_ARGS
        expected = "was written by 2 process(es) and this run has 1: its optimizer partitions are per process"
    t0 = time.monotonic()
    assert main(args) == 2
    assert time.monotonic() - t0 < 5
    err = capsys.readouterr().err
    assert expected in err and err.count("error:") == 1, err


# ---------------------------------------------------------------- time-based checkpoints
def test_checkpoints_every_few_minutes_at_logged_steps(tmp_path, tiny_bert_dir, tiny_data_json, monkeypatch):
    saved = []
    save = trainer.save_checkpoint

    def recording(engine, state, run_dir, info, *a, **k):
        saved.append((state["step"], state["batch_in_epoch"]))
        return save(engine, state, run_dir, info, *a, **k)

    monkeypatch.setattr(trainer, "save_checkpoint", recording)
    out = tmp_path / "run"
    # a tiny interval: due at every logged step (every 2nd); epoch ends save anyway
    assert main(tiny_train_args(tiny_data_json, tiny_bert_dir, out, *BILSTM, "train.epochs=1", "train.log_every=2",
                                "train.max_tokens=256", "train.checkpoint_minutes=1e-9")) == 0
    steps = json.loads((out / "metrics.json").read_text())["steps"]
    assert steps >= 5
    assert [step for step, _ in saved if step < steps] == list(range(2, steps, 2)), saved


# ---------------------------------------------------------------- a hung rank
_HANGING = """
import os, sys, time
from train import trainer

train_step = trainer.Trainer.train_step
def hanging_train_step(self, idx, last_micro_step):
    if self.info.rank == 1 and self.state.step == 2:
        with open(os.environ["HANG_MARK"], "w") as f:
            f.write(str(time.time()))
        time.sleep(600)
    return train_step(self, idx, last_micro_step)
trainer.Trainer.train_step = hanging_train_step

from train.__main__ import main
sys.exit(main(sys.argv[1:]))
"""
HANG_TIMEOUT_S = 3


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_hung_rank_ends_the_job_within_the_timeout_and_is_named(tmp_path, tiny_bert_dir, tiny_data_json):
    script = tmp_path / "hanging.py"
    script.write_text(_HANGING)
    mark = tmp_path / "hang_started"
    cmd = [*TORCHRUN, "--nproc_per_node=2", str(script),
           *tiny_train_args(tiny_data_json, tiny_bert_dir, tmp_path / "run", *RESHARD_ARGS,
                            f"train.pg_timeout_s={HANG_TIMEOUT_S}")]
    code, output, _ = run_in_own_session(cmd, dict(_env(), HANG_MARK=str(mark)), 240)
    ended = time.time()
    assert code != 0, output[-4000:]
    assert "rank 1 is behind" in output, output[-4000:]
    assert f"exitcode  : {HUNG_EXIT_CODE}" in output, output[-4000:]  # both ranks ended themselves
    bound = ended - float(mark.read_text())
    print(f"the job ended {bound:.1f} s after rank 1 hung (train.pg_timeout_s={HANG_TIMEOUT_S})")
    assert bound < HANG_TIMEOUT_S + 25, output[-4000:]


# ---------------------------------------------------------------- the heartbeat, on a store in memory
class _Store:
    """The three calls of torch's TCPStore the heartbeat uses."""

    def __init__(self):
        self.data = {}

    def set(self, key, value):
        self.data[key] = value.encode() if isinstance(value, str) else value

    def get(self, key):
        return self.data[key]

    def check(self, keys):
        return all(k in self.data for k in keys)


def test_heartbeat_names_the_rank_behind_and_the_silent_one():
    from common.heartbeat import Heartbeat

    store = _Store()
    beats = [Heartbeat(r, 3, timeout_s=60, store=store) for r in range(3)]
    for beat, count in zip(beats, (5, 4, 5)):
        for _ in range(count):
            beat.beat(step=2)
        beat._publish()
    store.set("rank/2", "5 2 1000.0")  # last report long ago: the process froze
    assert beats[1].diagnose(60, only_if_behind=True) is None  # nobody is behind rank 1: it waits for nobody
    line = beats[0].diagnose(60)
    assert "rank 1 is behind: it has started 4 micro-batch(es) (after optimizer step 2), this rank 5" in line
    assert "rank 2 stopped reporting" in line and "rank 0 waited for 60 s" in line
    assert store.get("abort").decode() == line  # the stuck ranks read it and exit


def test_heartbeat_thread_ends_a_rank_that_waits_for_one_behind(monkeypatch):
    import common.heartbeat as heartbeat

    exits = []
    monkeypatch.setattr(heartbeat, "_exit", exits.append)
    store = _Store()
    waiting, stuck = (heartbeat.Heartbeat(r, 2, timeout_s=0.2, store=store) for r in range(2))
    waiting.interval_s = stuck.interval_s = 0.05
    waiting.beat(step=0)
    waiting.start()
    stuck.start()
    deadline = time.monotonic() + 30
    while len(exits) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    waiting.stop()
    stuck.stop()
    assert exits == [heartbeat.HUNG_EXIT_CODE] * 2  # the waiting rank, then the stuck one reading its line
    assert "rank 1 is behind" in store.get("abort").decode()
