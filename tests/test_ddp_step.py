"""What one DDP training step costs in communication: the real trainer on the tiny BERT tagger, two gloo ranks
on the CPU against one process (tests/ddp_step_worker.py counts collectives, gradient buckets and host reads).

A step of two ranks does exactly what a step of one process does plus one all-reduce of one gradient bucket
holding every trainable parameter; the collectives that keep the ranks in agreement (log row, checkpoint clock,
stop signal) come once per log interval, not per step.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.tiny_models import run_in_own_session, tiny_train_args

WORKER = Path(__file__).with_name("ddp_step_worker.py")
REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
LOG_EVERY = 2
MEASURED = range(3, 7)
"""Optimizer steps compared: after DDP's bucket rebuild (step 2) and before the first epoch ends (evaluation)."""
PER_LOG_ROW = {"gloo:all_reduce": 3}
"""Collectives of a logged step besides the step: the log row's sums, the checkpoint clock, the stop signal."""


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def _run(out: Path, nproc: int, tiny_bert_dir: Path, tiny_data_json: Path, *extra: str) -> list[dict]:
    """Train on ``nproc`` processes under the worker; each rank's record."""
    out.mkdir()
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                 "--max_restarts=0"] if nproc > 1 else [sys.executable])
    args = tiny_train_args(tiny_data_json, tiny_bert_dir, out / "run", "train.epochs=20", "train.max_steps=8",
                           "train.max_tokens=96", f"train.log_every={LOG_EVERY}", 'train.precision="fp32"',
                           "--device", "cpu", *extra)
    code, output, _ = run_in_own_session([*launcher, str(WORKER), str(out), *args], _env(), TIMEOUT_S)
    assert code == 0, output[-4000:]
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    assert all(r["exit_code"] == 0 and r["world_size"] == nproc for r in records)
    return records


def _split(counts: dict) -> tuple[dict, dict]:
    """(collectives, host reads) of one part of a step."""
    return ({k: v for k, v in counts.items() if k.startswith("gloo:")},
            {k: v for k, v in counts.items() if not k.startswith("gloo:")})


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_bert_dir, tiny_data_json) -> dict:
    return _run(tmp_path_factory.mktemp("one") / "out", 1, tiny_bert_dir, tiny_data_json)[0]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(2 * TIMEOUT_S)
def test_a_ddp_step_adds_one_bucketed_all_reduce_and_nothing_that_grows_with_ranks(
        tmp_path, tiny_bert_dir, tiny_data_json, one_process):
    two = _run(tmp_path / "out", 2, tiny_bert_dir, tiny_data_json)
    for rank in two:
        assert rank["bucket_cap_mb"] == 25  # DDP's default: the tiny model's gradients fit in one bucket
        for step in MEASURED:
            mine, alone = rank["steps"][str(step)], one_process["steps"][str(step)]
            # the step: one all-reduce, of one bucket holding every trainable parameter's gradient
            assert mine["buckets"] == [rank["trainable"]], (step, mine)
            collectives, host = _split(mine["step"])
            assert collectives == {"gloo:all_reduce": 1}, (step, mine)
            # ...and no host read that one process does not do as well (no loss or flag read per step)
            assert host == alone["step"], (step, mine, alone)
            assert not _split(alone["step"])[0] and not alone["buckets"]
            # the loop around it: nothing at an unlogged step; at a logged one a fixed few small all-reduces,
            # each read back once (tolist), over the one process's own reads
            collectives, host = _split(mine["loop"])
            if step % LOG_EVERY:
                assert not mine["loop"] and not alone["loop"], (step, mine, alone)
            else:
                assert collectives == PER_LOG_ROW, (step, mine)
                reads = dict(alone["loop"], tolist=alone["loop"].get("tolist", 0) + PER_LOG_ROW["gloo:all_reduce"])
                assert host == reads, (step, mine, alone)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(TIMEOUT_S + 60)
def test_gradient_accumulation_all_reduces_once_per_optimizer_step(tmp_path, tiny_bert_dir, tiny_data_json):
    two = _run(tmp_path / "out", 2, tiny_bert_dir, tiny_data_json, "optim.grad_accum=2")
    for rank in two:
        for step, record in rank["steps"].items():
            assert record["buckets"] == [rank["trainable"]], (step, record)
