"""common.distributed + common.metrics.gather_predictions: the distributed score equals the single-process one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common import distributed
from common.metrics import entity_scores, gather_predictions

WORKER = Path(__file__).with_name("dist_metrics_worker.py")


def _load_worker():
    """The helper script as a module (by path: works whatever pytest's import mode)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dist_metrics_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_worker = _load_worker()
N_SENTENCES, local_share, make_data = _worker.N_SENTENCES, _worker.local_share, _worker.make_data
REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 150


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


def test_single_process(no_torchrun_env):
    info = distributed.setup("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.backend) == (0, 1, 0, None)
    assert info.is_main and not info.distributed and info.device == torch.device("cpu")
    local = {3: ["B-PER"], 1: ["O"]}
    assert gather_predictions(local, info) == local
    assert distributed.all_reduce_sum([1, 2.5, 3], info) == [1.0, 2.5, 3.0]
    assert distributed.gather_objects("x", info) == ["x"]
    assert distributed.broadcast_object({"a": 1}, info) == {"a": 1}
    distributed.teardown()  # no process group: a no-op


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised on a machine without a GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        distributed.resolve_device("cuda")
    assert distributed.resolve_device("auto") == torch.device("cpu")


def test_local_share_layout():
    own = [local_share(r, 2)[0] for r in range(2)]
    assert sorted(own[0] + own[1]) == list(range(N_SENTENCES)) and not set(own[0]) & set(own[1])
    assert local_share(1, 2)[1] == [0, N_SENTENCES - 1]   # rank 1 also gets two of rank 0's sentences


@pytest.mark.distributed
@pytest.mark.timeout(TIMEOUT_S + 30)
def test_two_ranks_gloo_score_equals_single_process(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--max_restarts=0", str(WORKER), str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # torchrun and its workers: the session this test started
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S}s:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]

    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    gold, pred = make_data()
    expected = entity_scores(gold, pred)
    n_words = sum(map(len, gold))
    n_correct = sum(g == p for gs, ps in zip(gold, pred) for g, p in zip(gs, ps))
    for r, res in enumerate(results):
        assert res["rank"] == r and res["world_size"] == 2 and res["backend"] == "gloo"
        assert res["keys"] == list(range(N_SENTENCES)) and res["same_preds"]
        got = res["scores"]
        for key in ("precision", "recall", "f1"):
            assert got[key] == pytest.approx(expected[key])
            assert got["strict"][key] == pytest.approx(expected["strict"][key])
        assert got["support"] == expected["support"]
        assert set(got["per_type"]) == set(expected["per_type"]) == {"PER", "LOC", "ORG"}
        for t, exp in expected["per_type"].items():
            assert got["per_type"][t] == pytest.approx(exp)
        assert res["sums"] == [N_SENTENCES, n_words, n_correct]
        assert res["ranks"] == [0, 1] and res["broadcast"] == {"from": 0}
    # the shares really were partial and overlapping
    assert len(results[0]["local"]) < N_SENTENCES and len(results[1]["local"]) < N_SENTENCES
    assert set(results[0]["local"]) & set(results[1]["local"]) == {0, N_SENTENCES - 1}
    # scoring only one rank's share would give a different answer (the test can fail)
    own0 = results[0]["local"]
    partial = entity_scores([gold[i] for i in own0], [pred[i] for i in own0])
    assert partial["support"] < expected["support"]
