"""Work stealing between ``ner-tag`` tasks (``--num-shards 2`` on one output folder), run by tests/tag_trials.py:

* a task slowed 5x: the other takes its shard's parts from the end, and every part is done within 1.3x of the
  ideal time (N parts at the combined rate of both), against 3x with static shares;
* randomised kill trials: one of the two tasks is SIGKILLed at a random moment; the other finishes every part
  (it takes over the parts whose claims died with the victim), and the output holds every input row once.
  ``NER_KILL_TRIALS`` sets the number of trials (default 3; 20 for the figure in the docs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.tiny_models import REPO_ROOT

TRIALS = int(os.environ.get("NER_KILL_TRIALS", "3"))


@pytest.fixture(scope="module")
def trials(tiny_exports, tmp_path_factory) -> tuple[dict, str]:
    """Both kinds of trial, run by one process (one start-up)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(REPO_ROOT / "tests" / "tag_trials.py"), "both", "--model",
           str(tiny_exports["bert"] / "export"), "--work", str(tmp_path_factory.mktemp("trials")), "--trials",
           str(TRIALS), "--seed", os.environ.get("NER_KILL_SEED", "0")]
    r = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=150 + 15 * TRIALS)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-6000:]
    lines = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    return lines[-1]["result"], r.stdout + r.stderr


@pytest.mark.timeout(200 + 15 * TRIALS)
def test_a_task_slowed_5x_does_not_hold_up_the_job(trials):
    results, output = trials
    result = results["slow"]
    print(json.dumps(result))
    assert result["codes"] == [0, 0] and result["missing"] == 0 and result["duplicated"] == 0, output[-4000:]
    assert result["parts"] == 40 and result["parts_slow"] >= 1 and result["parts_fast"] > 20, result
    assert result["ratio"] <= 1.3, result  # static shares would take result["static_shares_s"]


def test_killed_task_parts_are_finished_by_the_other(trials):
    results, output = trials
    result = results["kill"]
    print(json.dumps(result))
    assert result["trials"] == TRIALS and result["killed_mid_run"] >= 1, output[-4000:]
    assert result["rows_missing"] == 0 and result["rows_duplicated"] == 0, output[-6000:]
    assert result["survivors_failed"] == 0, output[-6000:]


# ner-tag under torchrun, rank 1 holding back its figures for the summary for NER_LATE_RANK_S seconds
_LATE_RANK = """
import os, sys, time
from infer import shares
gather = shares.gather_on_rank0
def late_gather(this, info):
    if info.rank == 1:
        time.sleep(float(os.environ["NER_LATE_RANK_S"]))
    return gather(this, info)
shares.gather_on_rank0 = late_gather
from infer.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_a_rank_that_ends_late_does_not_meet_the_process_group_timeout(tiny_exports, tmp_path):
    """Rank 0 ends long before rank 1 (past --pg-timeout): the summary is polled from the store, not gathered
    in a collective, and no barrier waits at the end, so the job ends normally with both ranks' figures."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.tiny_models import run_in_own_session

    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(16)), "text": ["Peter met Angela in Berlin ."] * 16}), path,
                   row_group_size=4)
    script = tmp_path / "late_rank.py"
    script.write_text(_LATE_RANK)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", NER_LATE_RANK_S="14")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max_restarts=0",
           str(script), "--model", str(tiny_exports["bert"] / "export"), "--input", str(path), "--output",
           str(out), "--rows-per-part", "4", "--device", "cpu", "--threads", "1", "--no-progress",
           "--pg-timeout", "8"]
    code, output, wall = run_in_own_session(cmd, env, 200)
    assert code == 0, output[-6000:]
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["total"]["complete"] and len(summary["this_run"]["ranks"]) == 2, summary
    assert wall > 14, wall  # rank 1 really ended later than the timeout
