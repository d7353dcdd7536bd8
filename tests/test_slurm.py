"""The SLURM scripts against a real one-node SLURM cluster on localhost (see tests/slurm_cluster.py).

The session fixture installs ``slurm-wlm`` and ``munge`` with apt when needed and starts
``munged``, ``slurmctld`` and ``slurmd`` by hand (re-using a cluster that is already running);
it skips only where apt-get is missing or the tests do not run as root.  The node declares two
fake GPUs (character devices), so ``--gpus-per-node=2`` exercises the GPU-count path while the
workers still compute on CPU.

* ``slurm/train.sbatch`` with 2 torchrun workers (one per CPU) on tiny data and a tiny BiLSTM, and
  with the DeepSpeed engine and a tiny BERT;
* a training job preempted with ``scancel --signal=USR1 --batch`` (what ``--signal=B:USR1@120``
  sends before the time limit) after its first checkpoint: it checkpoints, requeues itself,
  resumes from the checkpoint and completes;
* ``slurm/tag.sbatch`` as a 2-task array over 3 Parquet files: every input row comes out exactly
  once, and submitting again does no work.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.slurm_cluster import Cluster, ClusterUnavailable
from tests.tiny_models import REPO_ROOT

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TRAIN_SBATCH = REPO_ROOT / "slurm" / "train.sbatch"
TAG_SBATCH = REPO_ROOT / "slurm" / "tag.sbatch"
JOB_TIMEOUT = 240
BILSTM = ('model.type="bilstm"', "model.lstm_hidden=16", "model.lstm_layers=1")


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def slurm_cluster():
    cluster = Cluster()
    if not cluster.running():
        if not Cluster.installed() and not shutil.which("apt-get"):
            pytest.skip("SLURM is not installed and apt-get is not available to install slurm-wlm and munge")
        if os.geteuid() != 0:
            pytest.skip("starting a local SLURM cluster (munged, slurmctld, slurmd) needs root")
    try:
        cluster.start()
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))
    yield cluster
    cluster.stop(only_started=True)  # leave a cluster that was already running (e.g. started by hand)


@pytest.fixture(scope="session")
def node(slurm_cluster) -> dict:
    return slurm_cluster.node_info()


def job_env(**extra) -> dict:
    """The environment sbatch passes to the job (sbatch exports the submitter's environment)."""
    env = dict(os.environ)
    env.pop("NER_TAGGERS_DIR", None)  # the scripts must find the checkout themselves
    env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "offline"})
    env.update(extra)
    return env


def job_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else f"(no job log at {path})"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path) if line.strip()]


def tiny_args(data: Path, encoder: Path, *extra: str) -> list[str]:
    return ["--data", str(data), f"model.encoder={json.dumps(str(encoder))}", "train.max_tokens=512",
            "optim.lr=1e-3", "optim.head_lr=1e-2", "train.progress=false", "train.seed=1", *extra]


def cpu_request(node: dict, env: dict) -> list[str]:
    """2 workers on CPU: one per allocated CPU, or NPROC_PER_NODE=2 on a one-CPU node."""
    cpus = min(2, node["cpus"])
    if cpus < 2:
        env["NPROC_PER_NODE"] = "2"
    return [f"--cpus-per-task={cpus}"]


@pytest.fixture(scope="module")
def train_job(slurm_cluster, node, tmp_path_factory, tiny_bert_dir, tiny_data_json):
    """A BiLSTM training job with 2 CPU workers (no GPUs requested); returns (job record, submit dir)."""
    work = tmp_path_factory.mktemp("slurm_train")
    env = job_env()
    args = ["--gpus-per-node=0", *cpu_request(node, env), str(TRAIN_SBATCH),
            *tiny_args(tiny_data_json, tiny_bert_dir, "train.epochs=1", *BILSTM)]
    job_id = slurm_cluster.sbatch(args, cwd=work, env=env)
    (job,) = slurm_cluster.wait(job_id, timeout=JOB_TIMEOUT)
    return job, work


# ---------------------------------------------------------------- (a) training
def test_train_two_workers_completes(train_job):
    job, work = train_job
    job_id = job["JobId"]
    log = job_log(work / f"ner-train-{job_id}.out")
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log[-4000:]
    run = work / "runs" / f"ner-train-{job_id}"
    assert (run / "metrics.json").is_file(), log[-4000:]
    assert (run / "export" / "ner_config.json").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert "procs/node=2" in log and "gpus/node=0" in log
    assert "no checkpoint" in log  # --resume is always passed and starts fresh on a new run folder


# ---------------------------------------------------------------- (d) DeepSpeed, BERT
def test_train_deepspeed_bert(slurm_cluster, node, tmp_path, tiny_bert_dir, tiny_data_json):
    pytest.importorskip("deepspeed")
    # the CPU communication op is compiled on first use: share the build with tests/test_deepspeed.py
    env = job_env(TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR")
                  or str(Path.home() / ".cache" / "ner-taggers" / "torch_extensions"))
    args = ["--gpus-per-node=0", *cpu_request(node, env), str(TRAIN_SBATCH),
            "--engine", "deepspeed", "--deepspeed-config", str(REPO_ROOT / "train" / "configs" / "ds_zero1.json"),
            *tiny_args(tiny_data_json, tiny_bert_dir, "train.epochs=1")]
    job_id = slurm_cluster.sbatch(args, cwd=tmp_path, env=env)
    (job,) = slurm_cluster.wait(job_id, timeout=JOB_TIMEOUT + 240)  # + a cold DeepSpeed op build
    log = job_log(tmp_path / f"ner-train-{job_id}.out")
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log[-4000:]
    run = tmp_path / "runs" / f"ner-train-{job_id}"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["engine"] == "deepspeed" and metrics["world_size"] == 2 and metrics["model_type"] == "bert"
    assert (run / "export" / "ner_config.json").is_file()


# ---------------------------------------------------------------- (b) preemption and requeue
def test_preempted_job_checkpoints_requeues_and_resumes(slurm_cluster, node, tmp_path, tiny_bert_dir,
                                                        tiny_data_json):
    env = job_env()
    if node["gpus"] >= 2:
        resources = ["--gpus-per-node=2", f"--cpus-per-task={min(2, node['cpus'])}"]  # 2 workers, one per GPU
    else:
        resources = ["--gpus-per-node=0", *cpu_request(node, env)]
    max_steps = 80
    args = [*resources, str(TRAIN_SBATCH),
            *tiny_args(tiny_data_json, tiny_bert_dir, *BILSTM, "train.epochs=1000", f"train.max_steps={max_steps}",
                       "train.eval_every=40", "train.checkpoint_every=10", "train.log_every=1")]
    job_id = slurm_cluster.sbatch(args, cwd=tmp_path, env=env)
    run = tmp_path / "runs" / f"ner-train-{job_id}"
    log_path = tmp_path / f"ner-train-{job_id}.out"

    # wait for the first checkpoint, then send what --signal=B:USR1@120 sends before the time limit
    deadline = time.time() + JOB_TIMEOUT
    while not (run / "checkpoints" / "latest").exists():
        job = slurm_cluster.show_job(job_id)[0]
        assert job["JobState"] in ("PENDING", "RUNNING"), job_log(log_path)[-4000:]
        assert time.time() < deadline, "no checkpoint appeared\n" + job_log(log_path)[-4000:]
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", str(job_id)], check=True, env=slurm_cluster.env())

    # SLURM holds a requeued job for CredExpire+1 s (~2 minutes, Reason=BeginTime) so that the new
    # launch credential is not taken for the revoked one: slurmd rejects a credential of the same
    # job id whose creation second is <= the second it revoked the old one (the job then FAILS with
    # no output at all, as seen once in CI). Release it early, but only once a few whole seconds have
    # passed since the requeue. States seen while the requeue happens (COMPLETING, ...) pass quickly:
    # a final state must hold for 2 s.
    deadline = time.time() + JOB_TIMEOUT
    final = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
    seen, final_since, held_since = [], None, None
    while True:
        job = slurm_cluster.show_job(job_id)[0]
        state = (job["JobState"], job.get("Reason"), job.get("Restarts"))
        if not seen or seen[-1] != state:
            seen.append(state)
        if job["JobState"] in final:
            final_since = final_since or time.time()
            if time.time() - final_since >= 2:
                break
        else:
            final_since = None
        if job["JobState"] == "PENDING" and job.get("Reason") == "BeginTime":
            held_since = held_since or time.time()
            if time.time() - held_since >= 3:
                subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"],
                               env=slurm_cluster.env(), capture_output=True)
        assert time.time() < deadline, f"job {job_id}: states {seen}\n" + job_log(log_path)[-4000:]
        time.sleep(0.3)
    log = job_log(log_path)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", (
        f"states {seen}\n{log[-6000:]}\n{slurm_cluster.log_tails()}")
    assert int(job["Restarts"]) == 1, f"states {seen}\n{log[-6000:]}"
    assert "got SIGUSR1" in log and f"requeueing job {job_id}" in log
    assert "stop signal received: checkpoint written at step" in log  # the trainer saved on the way out
    # the requeued run resumed from the checkpoint instead of starting over
    assert log.count("no checkpoint in") == 1, log[-6000:]
    resumed = [ln for ln in log.splitlines() if "resumed from" in ln]
    assert len(resumed) == 1, log[-6000:]
    resumed_at = int(resumed[0].rsplit(" at step ", 1)[1].split()[0])
    assert 0 < resumed_at < max_steps
    steps = [r["step"] for r in read_jsonl(run / "train_log.jsonl") if r["event"] == "step"]
    assert steps == list(range(1, max_steps + 1))  # continued after the checkpoint, no step twice
    assert (run / "metrics.json").is_file() and (run / "export" / "ner_config.json").is_file()


# ---------------------------------------------------------------- (c) tagging array
def write_parquet_inputs(folder: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = ["Peter Blackburn visited Germany .", "EU rejects German call to boycott British lamb .",
             "Japan began the defence of their title .", "Nadim Ladki said nothing in New York .", "Reuters"]
    folder.mkdir()
    ids = []
    for f, n in enumerate((7, 9, 5)):
        rows = [{"id": f"f{f}-{i}", "text": f"{texts[(f + i) % len(texts)]} {i}"} for i in range(n)]
        pq.write_table(pa.Table.from_pylist(rows), folder / f"docs-{f}.parquet", row_group_size=3)
        ids += [r["id"] for r in rows]
    return ids


def test_tag_array_covers_every_row_once(slurm_cluster, train_job, tmp_path):
    import pyarrow.parquet as pq

    job, work = train_job
    export = work / "runs" / f"ner-train-{job['JobId']}" / "export"
    assert export.is_dir(), "the training job made no export"
    ids = write_parquet_inputs(tmp_path / "in")
    out = tmp_path / "tagged"
    args = ["--array=0-1", "--cpus-per-task=1", str(TAG_SBATCH), "--model", str(export),
            "--input", str(tmp_path / "in" / "*.parquet"), "--output", str(out), "--id-column", "id",
            "--rows-per-part", "3"]
    env = job_env()

    array_id = slurm_cluster.sbatch(args, cwd=tmp_path, env=env)
    tasks = slurm_cluster.wait(array_id, timeout=JOB_TIMEOUT)
    logs = {t: job_log(tmp_path / f"ner-tag-{array_id}_{t}.out") for t in (0, 1)}
    assert len(tasks) == 2, tasks
    assert all(t["JobState"] == "COMPLETED" and t["ExitCode"] == "0:0" for t in tasks), logs
    assert "shard 0/2" in logs[0] and "shard 1/2" in logs[1]

    tagged = collections.Counter()
    parts = sorted(out.glob("part-*.parquet"))
    for part in parts:
        table = pq.read_table(part)
        assert "entities" in table.column_names
        tagged.update(table.column("id").to_pylist())
    assert sorted(tagged) == sorted(ids) and set(tagged.values()) == {1}, tagged
    mtimes = {p: p.stat().st_mtime_ns for p in parts}

    # submitting again finds every part done and rewrites nothing
    again = slurm_cluster.sbatch(args, cwd=tmp_path, env=env)
    tasks = slurm_cluster.wait(again, timeout=JOB_TIMEOUT)
    assert all(t["JobState"] == "COMPLETED" for t in tasks), [
        job_log(tmp_path / f"ner-tag-{again}_{t}.out") for t in (0, 1)]
    assert {p: p.stat().st_mtime_ns for p in sorted(out.glob("part-*.parquet"))} == mtimes
