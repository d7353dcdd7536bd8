"""A failing rank brings a torchrun job down fast, for training and for batch tagging.

The failure is injected from test code only: a wrapper script patches ``Trainer.train_step`` (training),
or the input holds a Parquet file whose data pages are corrupt (tagging).  Each job must exit non-zero well
before any process-group timeout (30 min), with the failing rank's error in the output.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.tiny_models import REPO_ROOT, run_in_own_session, tiny_train_args

pytestmark = pytest.mark.distributed

DEADLINE_S = 60
"""The whole job must have stopped within this many seconds of its start."""
HARD_TIMEOUT_S = 120
"""Past this the job is killed (its whole session) and the test fails."""
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max_restarts=0"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run_job(cmd: list[str]) -> tuple[int, str, float]:
    """(exit code, stdout + stderr, wall seconds) of ``cmd``, run in its own session (killed whole on timeout)."""
    return run_in_own_session(cmd, _env(), HARD_TIMEOUT_S)


# ------------------------------------------------------------------ training
# ner-train, with rank 1 raising at its 3rd optimizer step (before its forward pass: rank 0 is then
# left waiting for it in DDP's gradient all-reduce)
_FAILING_TRAINER = """
import sys
from train import trainer

train_step = trainer.Trainer.train_step
def failing_train_step(self, idx, last_micro_step):
    if self.info.rank == 1 and last_micro_step and self.state.step == 2:
        raise RuntimeError("injected failure at step 3")
    return train_step(self, idx, last_micro_step)
trainer.Trainer.train_step = failing_train_step

from train.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.timeout(HARD_TIMEOUT_S + 60)
def test_failing_training_rank_stops_the_job(tmp_path, tiny_bert_dir, tiny_data_json):
    script = tmp_path / "failing_train.py"
    script.write_text(_FAILING_TRAINER)
    out = tmp_path / "run"
    # bilstm, small batches: several optimizer steps per epoch on each rank
    args = tiny_train_args(tiny_data_json, tiny_bert_dir, out, "model.type=\"bilstm\"", "model.lstm_hidden=16",
                           "model.lstm_layers=1", "train.max_tokens=256", "--device", "cpu")
    code, output, wall = _run_job([*TORCHRUN, str(script), *args])
    assert code != 0, output[-6000:]
    assert "RuntimeError: injected failure at step 3" in output, output[-6000:]
    assert wall < DEADLINE_S, f"the job took {wall:.1f}s to stop:\n{output[-6000:]}"
    # the failure came at step 3, not before: both ranks had been training together
    assert (out / "train_log.jsonl").read_text().count('"event": "step"') >= 2


# ------------------------------------------------------------------ tagging
ROWS = 48
ROW_GROUP = 8  # rows per row group = rows per part (--rows-per-part 8): 6 parts per file
CORRUPT_GROUP = 3  # of the second file: part 6 + 3 = 9


def _write_texts(path: Path, first_id: int) -> Path:
    texts = [f"Angela Merkel visited Japan {i} times with the European Commission in Brussels ." for i in range(ROWS)]
    pq.write_table(pa.table({"id": list(range(first_id, first_id + ROWS)), "text": texts}), path,
                   row_group_size=ROW_GROUP)
    return path


def _corrupt_row_group(path: Path, group: int) -> None:
    """Overwrite one row group's column chunks with junk: the footer (schema, row counts) still reads."""
    meta = pq.ParquetFile(path).metadata
    rg = meta.row_group(group)
    start = min(rg.column(c).dictionary_page_offset or rg.column(c).data_page_offset for c in range(rg.num_columns))
    end = max((rg.column(c).dictionary_page_offset or rg.column(c).data_page_offset) + rg.column(c).total_compressed_size
              for c in range(rg.num_columns))
    assert 4 < start < end < path.stat().st_size - meta.serialized_size - 8  # past the header, before the footer
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(b"\xff" * (end - start))
    assert pq.ParquetFile(path).metadata.num_rows == ROWS  # the footer is intact


@pytest.mark.timeout(HARD_TIMEOUT_S + 60)
def test_failing_tagging_rank_stops_the_job(tmp_path, tiny_exports):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write_texts(inputs / "a_good.parquet", 0)
    bad = _write_texts(inputs / "b_corrupt.parquet", ROWS)
    _corrupt_row_group(bad, CORRUPT_GROUP)
    out = tmp_path / "out"
    cmd = [*TORCHRUN, "-m", "infer", "--model", str(tiny_exports["bilstm"] / "export"), "--input", str(inputs),
           "--output", str(out), "--rows-per-part", str(ROW_GROUP), "--buffer-rows", "4", "--device", "cpu",
           "--threads", "1", "--no-progress"]
    code, output, wall = _run_job(cmd)
    assert code != 0, output[-6000:]
    assert "b_corrupt.parquet" in output, output[-6000:]
    assert wall < DEADLINE_S, f"the job took {wall:.1f}s to stop:\n{output[-6000:]}"
    # finished parts stay, complete and correct: the ranks claim parts in order, each holds at most two
    # unfinished ones, so when part 9 failed at least five of parts 0-8 were done
    done = sorted(int(p.name[5:11]) for p in out.glob("part-*.parquet"))
    assert len(done) >= 5 and 9 not in done, done
    assert set(done) <= set(range(12)) - {9}
    for index in done:
        table = pq.read_table(out / f"part-{index:06d}.parquet")
        assert table.column("id").to_pylist() == list(range(index * ROW_GROUP, (index + 1) * ROW_GROUP))
    assert ds.dataset(str(out), format="parquet").count_rows() == len(done) * ROW_GROUP
