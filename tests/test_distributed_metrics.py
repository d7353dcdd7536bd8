"""common.distributed + taggers.predict.predict_windows under DDP: two gloo ranks get exactly the
single-process predictions and counts, each having run only its share of the batches."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from common import distributed
from tests.tiny_models import run_in_own_session

WORKER = Path(__file__).with_name("dist_metrics_worker.py")


def _load_worker():
    """The helper script as a module (by path: works whatever pytest's import mode)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dist_metrics_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_worker = _load_worker()
REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 150
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)


def test_single_process(no_torchrun_env):
    info = distributed.setup("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.backend) == (0, 1, 0, None)
    assert info.is_main and not info.distributed and info.device == torch.device("cpu")
    assert distributed.all_reduce_sum([1, 2.5, 3], info) == [1.0, 2.5, 3.0]
    assert distributed.gather_objects("x", info) == ["x"]
    distributed.barrier()  # no process group: a no-op
    distributed.teardown()  # likewise
    distributed.teardown(completed=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised on a machine without a GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        distributed.resolve_device("cuda")
    assert distributed.resolve_device("auto") == torch.device("cpu")


def _single_process_reference(tokenizer_dir: Path, data_json: Path):
    """``predict_windows`` in this process, on the worker's model and windows; also the batches it ran."""
    labels, windows, lengths, pad_id, vocab = _worker.make_windows(str(tokenizer_dir), str(data_json))
    model = _worker.build_model(labels, vocab, pad_id)
    seen = _worker.count_batches(model)
    from taggers.predict import predict_windows

    preds = predict_windows(model, windows, lengths, torch.device("cpu"), max_tokens=_worker.MAX_TOKENS,
                            pad_id=pad_id)
    return preds, seen, windows, lengths


@pytest.mark.distributed
@pytest.mark.timeout(TIMEOUT_S + 60)
def test_two_ranks_gloo_predictions_equal_single_process(tmp_path, tiny_bert_dir, tiny_data_json):
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--max_restarts=0", str(WORKER), str(tmp_path), str(tiny_bert_dir), str(tiny_data_json)]
    code, out, _ = run_in_own_session(cmd, env, TIMEOUT_S)
    assert code == 0, out[-4000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    ref, ref_batches, windows, lengths = _single_process_reference(tiny_bert_dir, tiny_data_json)
    assert len(lengths) == _worker.N_SENTENCES and len(windows) > len(lengths)  # some sentences span windows
    assert [len(row) for row in ref.label_ids] == lengths
    assert len({i for row in ref.label_ids for i in row}) > 1  # a random model, but not a constant one
    assert 0 < ref.correct_pieces < ref.labelled_pieces
    for r, res in enumerate(results):
        assert res["rank"] == r and res["world_size"] == 2 and res["backend"] == "gloo"
        assert res["ranks"] == [0, 1] and res["num_windows"] == len(windows)
        # every rank holds every word's prediction, exactly as one process computes them
        assert res["label_ids"] == ref.label_ids
        assert res["probs"] == ref.probs
        # the counts are summed over the ranks, not one rank's share
        assert (res["correct_pieces"], res["labelled_pieces"]) == (ref.correct_pieces, ref.labelled_pieces)
        # each rank ran only its own share of the batches: the ones shard_for_eval gave it, no more
        assert res["batches_run"] == res["batches_planned"]
        assert 0 < res["batches_run"] < len(ref_batches)
        assert 0 < res["windows_run"] < len(windows)
        assert len(res["sentences_run"]) < _worker.N_SENTENCES
    # ...and the shares add up to the whole: every window predicted on exactly one rank
    assert sum(res["batches_run"] for res in results) == len(ref_batches)
    assert sum(res["windows_run"] for res in results) == len(windows)
    assert set(results[0]["sentences_run"]) | set(results[1]["sentences_run"]) == set(range(len(lengths)))
