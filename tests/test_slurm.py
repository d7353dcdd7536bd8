"""The SLURM scripts against a real one-node SLURM cluster on localhost (see tests/slurm_cluster.py).

The session fixture installs ``slurm-wlm`` and ``munge`` with apt when needed and starts
``munged``, ``slurmctld`` and ``slurmd`` by hand (re-using a cluster that is already running);
it skips only where apt-get is missing or the tests do not run as root.  The node declares two
fake GPUs (character devices), so ``--gpus-per-node=2`` exercises the GPU-count path while the
workers still compute on CPU.

* ``slurm/train.sbatch`` with 2 torchrun workers (one per CPU) on tiny data and a tiny BiLSTM, and
  with the DeepSpeed engine and a tiny BERT;
* training jobs (DDP/BiLSTM and DeepSpeed/BERT) preempted with ``scancel --signal=USR1 --batch`` (what
  ``--signal=B:USR1@300`` sends before the time limit) after their first checkpoint: they checkpoint,
  requeue themselves, resume and end like an uninterrupted run (every step logged once, metrics.json);
* a training job stopped before its first checkpoint is not requeued (no progress); a rank that dies
  ends the job FAILED, not requeued;
* ``slurm/tag.sbatch`` as a 2-task array over 3 Parquet files: every input row comes out exactly
  once, and submitting again does no work; a task preempted mid-way requeues itself and the output
  still holds every row once; a task is not requeued without progress, or past NER_MAX_REQUEUES; an
  array with a step (``--array=0-2:2``) and a slowed task, whose parts the other task takes over (work
  stealing); a task killed outright, whose parts the other task finishes;
* the scripts' stop budget (shutdown + node grace inside the signal lead) and rendezvous port range.

A requeued job is released from SLURM's ~2 minute BeginTime hold early, but only 3 s after the requeue
(see ``Cluster.wait_through_requeues``).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
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
    """A BiLSTM job (2 workers: one per fake GPU) preempted after its first checkpoint requeues and resumes."""
    env = job_env()
    if node["gpus"] >= 2:
        resources = ["--gpus-per-node=2", f"--cpus-per-task={min(2, node['cpus'])}"]  # 2 workers, one per GPU
    else:
        resources = ["--gpus-per-node=0", *cpu_request(node, env)]
    max_steps = 80
    args = [*resources, str(TRAIN_SBATCH),
            *tiny_args(tiny_data_json, tiny_bert_dir, *BILSTM, "train.epochs=1000", f"train.max_steps={max_steps}",
                       "train.eval_every=40", "train.checkpoint_every=10", "train.log_every=1")]
    job, log, run = preempt_and_requeue_training(slurm_cluster, args, tmp_path, env, max_steps, JOB_TIMEOUT)
    if node["gpus"] >= 2:  # workers per node come from the GPUs SLURM gave the step on the node
        assert "procs/node=2 gpus/node=2" in log, log[-6000:]
    assert (run / "export" / "ner_config.json").is_file()


def preempt_and_requeue_training(cluster: Cluster, args: list[str], cwd: Path, env: dict, max_steps: int,
                                 timeout: float) -> tuple[dict, str, Path]:
    """Submit a training job, preempt it after its first checkpoint (`scancel --signal=USR1 --batch`, what
    --signal=B:USR1@300 sends before the time limit), let it requeue itself, and check that it ends like
    an uninterrupted run: every step logged once, metrics.json written. Returns (job, job log, run folder)."""
    job_id = cluster.sbatch(args, cwd=cwd, env=env)
    run = cwd / "runs" / f"ner-train-{job_id}"
    log_path = cwd / f"ner-train-{job_id}.out"

    deadline = time.time() + timeout
    while not (run / "checkpoints" / "latest").exists():
        job = cluster.show_job(job_id)[0]
        assert job["JobState"] in ("PENDING", "RUNNING"), job_log(log_path)[-4000:]
        assert time.time() < deadline, "no checkpoint appeared\n" + job_log(log_path)[-4000:]
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", str(job_id)], check=True, env=cluster.env())

    # requeued: released early, only once a few whole seconds passed since the requeue (see the helper)
    (job,), seen = cluster.wait_through_requeues(job_id, timeout=timeout)
    log = job_log(log_path)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", (
        f"states {seen}\n{log[-6000:]}\n{cluster.log_tails()}")
    assert int(job["Restarts"]) == 1, f"states {seen}\n{log[-6000:]}"
    assert "got SIGUSR1" in log and f"requeueing job {job_id} (restart 1 of at most 50" in log, log[-6000:]
    assert "stop signal received: checkpoint written at step" in log  # the trainer saved on the way out
    # the requeued run resumed from the checkpoint instead of starting over
    assert log.count("no checkpoint in") == 1, log[-6000:]
    resumed = [ln for ln in log.splitlines() if "resumed from" in ln]
    assert len(resumed) == 1, log[-6000:]
    resumed_at = int(resumed[0].rsplit(" at step ", 1)[1].split()[0])
    assert 0 < resumed_at < max_steps
    steps = [r["step"] for r in read_jsonl(run / "train_log.jsonl") if r["event"] == "step"]
    assert steps == list(range(1, max_steps + 1)), steps  # continued after the checkpoint, no step twice
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == max_steps and metrics["world_size"] == 2
    return job, log, run


def test_deepspeed_job_preempted_requeues_and_resumes(slurm_cluster, node, tmp_path, tiny_bert_dir,
                                                      tiny_data_json):
    """DeepSpeed (ZeRO-1, tiny BERT, 2 CPU workers) stopped and requeued ends like an uninterrupted run."""
    pytest.importorskip("deepspeed")
    env = job_env(TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR")
                  or str(Path.home() / ".cache" / "ner-taggers" / "torch_extensions"))
    max_steps = 24
    args = ["--gpus-per-node=0", *cpu_request(node, env), str(TRAIN_SBATCH),
            "--engine", "deepspeed", "--deepspeed-config", str(REPO_ROOT / "train" / "configs" / "ds_zero1.json"),
            *tiny_args(tiny_data_json, tiny_bert_dir, "train.epochs=1000", f"train.max_steps={max_steps}",
                       "train.eval_every=12", "train.checkpoint_every=4", "train.log_every=1")]
    _, log, run = preempt_and_requeue_training(slurm_cluster, args, tmp_path, env, max_steps, JOB_TIMEOUT + 240)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["engine"] == "deepspeed" and metrics["model_type"] == "bert"
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert (ckpt / "deepspeed").is_dir(), sorted(p.name for p in ckpt.iterdir())


def test_train_job_stopped_before_its_first_checkpoint_is_not_requeued(slurm_cluster, node, tmp_path,
                                                                       tiny_bert_dir, tiny_data_json):
    """Requeued only while training progresses: a run that wrote no checkpoint before the warning signal
    (start-up longer than the time limit allows) would do the same after a requeue, so it is not requeued."""
    env = job_env()
    args = ["--gpus-per-node=0", *cpu_request(node, env), str(TRAIN_SBATCH),
            *tiny_args(tiny_data_json, tiny_bert_dir, *BILSTM, "train.epochs=1000", "train.max_steps=80")]
    job_id = slurm_cluster.sbatch(args, cwd=tmp_path, env=env)
    log_path = tmp_path / f"ner-train-{job_id}.out"
    deadline = time.time() + JOB_TIMEOUT
    while "trainer args:" not in job_log(log_path):  # signal while the trainer is being started
        assert slurm_cluster.show_job(job_id)[0]["JobState"] in ("PENDING", "RUNNING"), job_log(log_path)[-4000:]
        assert time.time() < deadline, job_log(log_path)[-4000:]
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR1", "--batch", str(job_id)], check=True, env=slurm_cluster.env())
    (job,), seen = slurm_cluster.wait_through_requeues(job_id, timeout=JOB_TIMEOUT)
    log = job_log(log_path)
    assert job["JobState"] == "FAILED" and job["ExitCode"] == "3:0", (seen, log[-4000:])
    assert int(job["Restarts"]) == 0 and f"requeueing job {job_id}" not in log, (seen, log[-4000:])
    assert "not requeueing: no checkpoint past step 0" in log, log[-4000:]
    assert not (tmp_path / "runs" / f"ner-train-{job_id}" / "metrics.json").exists()


CRASH_RANK = """\
# written by tests/test_slurm.py: the worker with RANK=$NER_TEST_CRASH_RANK dies (os._exit, like a segfault
# or an OOM kill) as soon as the file $NER_TEST_CRASH_WHEN exists
import os

if os.environ.get("NER_TEST_CRASH_RANK") and os.environ.get("RANK") == os.environ["NER_TEST_CRASH_RANK"]:
    import threading
    import time

    def _crash():
        while not os.path.exists(os.environ["NER_TEST_CRASH_WHEN"]):
            time.sleep(0.05)
        once = os.environ.get("NER_TEST_CRASH_ONCE")  # a marker file: crash only the first time
        if once:
            if os.path.exists(once):
                return
            open(once, "w").close()
        os._exit(9)

    threading.Thread(target=_crash, daemon=True).start()
"""


def test_rank_that_dies_ends_the_job_failed_without_requeue(slurm_cluster, node, tmp_path, tiny_bert_dir,
                                                            tiny_data_json):
    """What a user sees when a rank dies and torchrun may not restart it: the job ends FAILED at once (torchrun
    stops the other workers), the log names the rank and its exit code, and the job is not requeued."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CRASH_RANK)
    run_name = "crash-run"
    env = job_env(NER_TEST_CRASH_RANK="1", RUN_NAME=run_name, NER_MAX_RESTARTS="0",
                  NER_TEST_CRASH_WHEN=str(tmp_path / "runs" / run_name / "checkpoints" / "latest"))
    env["PYTHONPATH"] = str(site) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    args = ["--gpus-per-node=0", *cpu_request(node, env), str(TRAIN_SBATCH),
            *tiny_args(tiny_data_json, tiny_bert_dir, *BILSTM, "train.epochs=1000", "train.max_steps=400",
                       "train.checkpoint_every=5", "train.log_every=1")]
    job_id = slurm_cluster.sbatch(args, cwd=tmp_path, env=env)
    (job,) = slurm_cluster.wait(job_id, timeout=JOB_TIMEOUT)
    log = job_log(tmp_path / f"ner-train-{job_id}.out")
    assert job["JobState"] == "FAILED" and job["ExitCode"] == "1:0", log[-6000:]
    assert int(job["Restarts"]) == 0 and "requeueing" not in log, log[-6000:]
    assert "ChildFailedError" in log and "exitcode  : 9" in log and "rank      : 1" in log, log[-6000:]
    steps = [r["step"] for r in read_jsonl(tmp_path / "runs" / run_name / "train_log.jsonl") if r["event"] == "step"]
    assert 0 < max(steps) < 400  # it had trained, and stopped long before the end


def test_rank_that_dies_once_is_restarted_from_the_last_checkpoint(slurm_cluster, node, tmp_path, tiny_bert_dir,
                                                                    tiny_data_json):
    """torchrun restarts failed workers (--max_restarts 1 by default): a rank that dies after the first
    checkpoint costs the steps since it, and the job completes like an uninterrupted run."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CRASH_RANK)
    run_name = "restart-run"
    env = job_env(NER_TEST_CRASH_RANK="1", RUN_NAME=run_name, NER_TEST_CRASH_ONCE=str(tmp_path / "crashed"),
                  NER_TEST_CRASH_WHEN=str(tmp_path / "runs" / run_name / "checkpoints" / "latest"))
    env["PYTHONPATH"] = str(site) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    max_steps = 40
    args = ["--gpus-per-node=0", *cpu_request(node, env), str(TRAIN_SBATCH),
            *tiny_args(tiny_data_json, tiny_bert_dir, *BILSTM, "train.epochs=1000", f"train.max_steps={max_steps}",
                       "train.checkpoint_every=5", "train.log_every=1")]
    job_id = slurm_cluster.sbatch(args, cwd=tmp_path, env=env)
    (job,) = slurm_cluster.wait(job_id, timeout=JOB_TIMEOUT)
    log = job_log(tmp_path / f"ner-train-{job_id}.out")
    if job["JobState"] != "COMPLETED" and "connectFullMesh failed" in log:
        # a known race on a loaded machine: the restarted rank 0 can meet the dead rank's stale gloo address;
        # the job then fails as it did without restarts. Submitted once more (the crash marker stays, so it
        # continues from its checkpoint without a crash) to check the rest of the path.
        job_id = slurm_cluster.sbatch(args, cwd=tmp_path, env=env)
        (job,) = slurm_cluster.wait(job_id, timeout=JOB_TIMEOUT)
        log = job_log(tmp_path / f"ner-train-{job_id}.out")
    assert (tmp_path / "crashed").exists(), log[-6000:]
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log[-6000:]
    assert int(job["Restarts"]) == 0 and "requeueing" not in log, log[-6000:]  # torchrun restarted, not SLURM
    resumed = [ln for ln in log.splitlines() if "resumed from" in ln]
    assert len(resumed) == 1 and 0 < int(resumed[0].rsplit(" at step ", 1)[1].split()[0]) < max_steps, log[-6000:]
    run = tmp_path / "runs" / run_name
    steps = [r["step"] for r in read_jsonl(run / "train_log.jsonl") if r["event"] == "step"]
    assert steps == list(range(1, max_steps + 1)), steps  # the log was cut back to the checkpoint, no step twice
    assert json.loads((run / "metrics.json").read_text())["steps"] == max_steps


# ---------------------------------------------------------------- (c) tagging array
def write_parquet_inputs(folder: Path, rows=(7, 9, 5), row_group_size: int = 3) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = ["Peter Blackburn visited Germany .", "EU rejects German call to boycott British lamb .",
             "Japan began the defence of their title .", "Nadim Ladki said nothing in New York .", "Reuters"]
    folder.mkdir()
    ids = []
    for f, n in enumerate(rows):
        table = [{"id": f"f{f}-{i}", "text": f"{texts[(f + i) % len(texts)]} {i}"} for i in range(n)]
        pq.write_table(pa.Table.from_pylist(table), folder / f"docs-{f}.parquet", row_group_size=row_group_size)
        ids += [r["id"] for r in table]
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


SLOW_WRITES = """\
# written by tests/test_slurm.py: every Parquet write sleeps NER_TEST_SLOW_WRITE_S seconds, so that a tagging
# task is still busy when the test preempts it (the tiny model tags these inputs in well under a second)
import os

if os.environ.get("NER_TEST_SLOW_WRITE_S"):
    import time

    import pyarrow.parquet as _pq

    _write_table = _pq.ParquetWriter.write_table

    def _slow_write_table(self, *args, **kwargs):
        time.sleep(float(os.environ["NER_TEST_SLOW_WRITE_S"]))
        return _write_table(self, *args, **kwargs)

    _pq.ParquetWriter.write_table = _slow_write_table
"""


def slow_writes_env(folder: Path, seconds: float, **extra) -> dict:
    """job_env() whose Python processes write Parquet slowly (a sitecustomize on PYTHONPATH)."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(SLOW_WRITES)
    env = job_env(NER_TEST_SLOW_WRITE_S=str(seconds), **extra)
    env["PYTHONPATH"] = str(folder) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def tag_args(export: Path, inputs: Path, out: Path, array: str, rows_per_part: int = 3) -> list[str]:
    return [f"--array={array}", "--cpus-per-task=1", str(TAG_SBATCH), "--model", str(export),
            "--input", str(inputs / "*.parquet"), "--output", str(out), "--id-column", "id",
            "--rows-per-part", str(rows_per_part)]


def manifest_entries(out: Path) -> int:
    return len(list((out / "_manifest").glob("part-*.json")))


def wait_until(cond, what: str, cluster: Cluster, job_id: int, logs, timeout: float = JOB_TIMEOUT) -> None:
    deadline = time.time() + timeout
    while not cond():
        jobs = cluster.show_job(job_id)
        assert all(j["JobState"] in ("PENDING", "RUNNING") for j in jobs), (jobs, logs())
        assert time.time() < deadline, f"{what} did not happen\n{logs()}"
        time.sleep(0.1)


def test_tag_task_preempted_requeues_and_every_row_comes_out_once(slurm_cluster, train_job, tmp_path):
    """Array task 0 is preempted once parts are being written: it requeues itself (the manifest grew),
    resumes, and the output holds every input row exactly once."""
    import pyarrow.parquet as pq

    job, work = train_job
    export = work / "runs" / f"ner-train-{job['JobId']}" / "export"
    ids = write_parquet_inputs(tmp_path / "in", rows=(12, 12, 12), row_group_size=2)  # 18 parts of 2 rows
    out = tmp_path / "tagged"
    env = slow_writes_env(tmp_path / "slow", 0.5)
    array_id = slurm_cluster.sbatch(tag_args(export, tmp_path / "in", out, "0-1", rows_per_part=2),
                                    cwd=tmp_path, env=env)
    logs = lambda: {t: job_log(tmp_path / f"ner-tag-{array_id}_{t}.out")[-3000:] for t in (0, 1)}  # noqa: E731

    wait_until(lambda: manifest_entries(out) >= 2, "two finished parts", slurm_cluster, array_id, logs)
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{array_id}_0"], check=True, env=slurm_cluster.env())
    tasks, seen = slurm_cluster.wait_through_requeues(array_id, timeout=JOB_TIMEOUT)

    by_task = {int(t["ArrayTaskId"]): t for t in tasks}
    assert sorted(by_task) == [0, 1], tasks
    assert all(t["JobState"] == "COMPLETED" and t["ExitCode"] == "0:0" for t in tasks), (seen, logs())
    assert int(by_task[0]["Restarts"]) == 1 and int(by_task[1]["Restarts"]) == 0, (seen, logs())
    log0 = job_log(tmp_path / f"ner-tag-{array_id}_0.out")
    assert "got SIGUSR1" in log0 and f"requeueing {array_id}_0 (restart 1 of at most 10" in log0, log0[-4000:]
    assert log0.count("shard 0/2 procs=") == 2, log0[-4000:]  # started twice

    tagged = collections.Counter()
    parts = sorted(out.glob("part-*.parquet"))
    for part in parts:
        tagged.update(pq.read_table(part).column("id").to_pylist())
    assert sorted(tagged) == sorted(ids) and set(tagged.values()) == {1}, tagged
    assert len(parts) == manifest_entries(out) == 18


@pytest.mark.parametrize("case", ["no_progress", "cap"])
def test_tag_task_is_not_requeued_without_progress_or_past_the_cap(slurm_cluster, train_job, tmp_path, case):
    """no_progress: preempted before it finished any part, the task is not requeued (a part that does not
    fit in the time limit would loop forever). cap: NER_MAX_REQUEUES=0 allows no requeue at all.
    Either way the task ends FAILED (exit code 3) with a message saying why."""
    job, work = train_job
    export = work / "runs" / f"ner-train-{job['JobId']}" / "export"
    write_parquet_inputs(tmp_path / "in")
    out = tmp_path / "tagged"
    extra = {"NER_MAX_REQUEUES": "0"} if case == "cap" else {}
    env = slow_writes_env(tmp_path / "slow", 2.0 if case == "no_progress" else 0.5, **extra)
    array_id = slurm_cluster.sbatch(tag_args(export, tmp_path / "in", out, "0", rows_per_part=3),
                                    cwd=tmp_path, env=env)
    log_path = tmp_path / f"ner-tag-{array_id}_0.out"
    logs = lambda: job_log(log_path)[-4000:]  # noqa: E731
    if case == "no_progress":  # signal as soon as the script has started the tagger: no part can be done yet
        wait_until(lambda: "tagger args:" in job_log(log_path), "the start", slurm_cluster, array_id, logs)
        assert manifest_entries(out) == 0
    else:
        wait_until(lambda: manifest_entries(out) >= 1, "a finished part", slurm_cluster, array_id, logs)
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{array_id}_0"], check=True, env=slurm_cluster.env())
    (task,), seen = slurm_cluster.wait_through_requeues(array_id, timeout=JOB_TIMEOUT)

    log = job_log(log_path)
    assert task["JobState"] == "FAILED" and task["ExitCode"] == "3:0", (seen, log[-4000:])
    assert int(task["Restarts"]) == 0 and f"requeueing {array_id}_0 (restart" not in log, (seen, log[-4000:])
    if case == "no_progress":
        assert "not requeueing" in log and "no part was finished since the task started" in log, log[-4000:]
    else:
        assert "not requeueing" in log and "already requeued 0 times (NER_MAX_REQUEUES=0)" in log, log[-4000:]


SLOW_TASK = """\
# written by tests/test_slurm.py: array task NER_TEST_SLOW_TASK writes Parquet 10x slower than the others
import os

if os.environ.get("SLURM_ARRAY_TASK_ID") is not None and os.environ.get("NER_TEST_SLOW_TASK") is not None:
    import time

    import pyarrow.parquet as _pq

    _write_table = _pq.ParquetWriter.write_table
    _pause = 1.0 if os.environ["SLURM_ARRAY_TASK_ID"] == os.environ["NER_TEST_SLOW_TASK"] else 0.1

    def _paced_write_table(self, *args, **kwargs):
        time.sleep(_pause)
        return _write_table(self, *args, **kwargs)

    _pq.ParquetWriter.write_table = _paced_write_table
"""


def test_tag_array_with_a_step_and_a_slow_task_steals_and_covers_every_row_once(slurm_cluster, tiny_exports,
                                                                               tmp_path):
    """--array=0-2:2 (tasks 0 and 2: shards 0 and 1 of 2), task 2 slowed 10x: task 0 does its shard, then takes
    the slow task's unclaimed parts; both end COMPLETED, and every row comes out exactly once."""
    import pyarrow.parquet as pq

    ids = write_parquet_inputs(tmp_path / "in", rows=(8, 8, 8), row_group_size=2)  # 12 parts of 2 rows
    out = tmp_path / "tagged"
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW_TASK)
    env = job_env(NER_TEST_SLOW_TASK="2", PYTHON=os.environ.get("PYTHON", sys.executable))
    env["PYTHONPATH"] = str(tmp_path / "slow") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    array_id = slurm_cluster.sbatch(tag_args(tiny_exports["bert"] / "export", tmp_path / "in", out, "0-2:2",
                                             rows_per_part=2), cwd=tmp_path, env=env)
    tasks = slurm_cluster.wait(array_id, timeout=JOB_TIMEOUT)
    logs = {t: job_log(tmp_path / f"ner-tag-{array_id}_{t}.out") for t in (0, 2)}
    assert sorted(int(t["ArrayTaskId"]) for t in tasks) == [0, 2], tasks
    assert all(t["JobState"] == "COMPLETED" and t["ExitCode"] == "0:0" for t in tasks), logs
    assert "shard 0/2" in logs[0] and "shard 1/2" in logs[2], logs

    tagged = collections.Counter()
    for part in sorted(out.glob("part-*.parquet")):
        tagged.update(pq.read_table(part).column("id").to_pylist())
    assert sorted(tagged) == sorted(ids) and set(tagged.values()) == {1}, tagged
    by_pid = collections.Counter(json.loads(p.read_text())["pid"] for p in (out / "_manifest").glob("part-*.json"))
    assert len(by_pid) == 2 and max(by_pid.values()) > 6, by_pid  # the fast task did more than its 6 parts


def test_tag_task_killed_outright_leaves_its_parts_to_the_other(slurm_cluster, tiny_exports, tmp_path):
    """Array task 1 is SIGKILLed whole (``scancel --signal=KILL``: no stop, no requeue) once parts are being
    written: task 0 takes over its parts (their claims died with it) and ends COMPLETED; every row once."""
    import pyarrow.parquet as pq

    ids = write_parquet_inputs(tmp_path / "in", rows=(8, 8, 8), row_group_size=2)  # 12 parts of 2 rows
    out = tmp_path / "tagged"
    env = slow_writes_env(tmp_path / "slow", 0.4, PYTHON=os.environ.get("PYTHON", sys.executable))
    array_id = slurm_cluster.sbatch(tag_args(tiny_exports["bert"] / "export", tmp_path / "in", out, "0-1",
                                             rows_per_part=2), cwd=tmp_path, env=env)
    logs = lambda: {t: job_log(tmp_path / f"ner-tag-{array_id}_{t}.out")[-3000:] for t in (0, 1)}  # noqa: E731
    wait_until(lambda: manifest_entries(out) >= 3, "three finished parts", slurm_cluster, array_id, logs)
    subprocess.run(["scancel", "--signal=KILL", f"{array_id}_1"], check=True, env=slurm_cluster.env())
    tasks = slurm_cluster.wait(array_id, timeout=JOB_TIMEOUT)
    by_task = {int(t["ArrayTaskId"]): t for t in tasks}
    assert by_task[0]["JobState"] == "COMPLETED" and by_task[0]["ExitCode"] == "0:0", (tasks, logs())
    assert by_task[1]["JobState"] != "COMPLETED", (tasks, logs())
    tagged = collections.Counter()
    for part in sorted(out.glob("part-*.parquet")):
        tagged.update(pq.read_table(part).column("id").to_pylist())
    assert sorted(tagged) == sorted(ids) and set(tagged.values()) == {1}, tagged


# ---------------------------------------------------------------- script settings (no cluster needed)
def _sbatch_lead(script: Path) -> int:
    (line,) = [ln for ln in script.read_text().splitlines() if ln.startswith("#SBATCH --signal=")]
    return int(line.rsplit("@", 1)[1])


def _default(script: Path, name: str) -> int:
    import re

    (value,) = re.findall(r'\$\{' + name + r':-(\d+)\}', script.read_text())[:1]
    return int(value)


def test_stop_budget_fits_in_the_signal_lead():
    """Everything between the warning signal and the requeue must fit in the --signal lead, or a slow stop
    ends in TIMEOUT instead of a requeue (the arithmetic is in the scripts' headers)."""
    env_sh = REPO_ROOT / "slurm" / "env.sh"
    lead = _sbatch_lead(TRAIN_SBATCH)
    shutdown = _default(env_sh, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT")
    grace = _default(TRAIN_SBATCH, "NODE_EXIT_GRACE")
    assert lead == _default(TRAIN_SBATCH, "NER_SIGNAL_LEAD")
    assert shutdown + grace + 60 <= lead, (shutdown, grace, lead)
    tag_lead = _sbatch_lead(TAG_SBATCH)
    tag_grace = _default(TAG_SBATCH, "NER_STOP_GRACE")  # past it the tagger is killed: the stop is bounded
    assert _default(TAG_SBATCH, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT") + 5 <= tag_grace and tag_grace + 10 <= tag_lead


def test_rendezvous_port_stays_below_the_ephemeral_range():
    script = ('source slurm/env.sh; for id in 0 1 999 1000 11999 12000 32767 65535 123456789 4294967295; do '
              'SLURM_JOB_ID=$id ner_port; done')
    res = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                         env=job_env())
    ports = [int(p) for p in res.stdout.split()]
    assert len(ports) == 10 and all(1024 <= p < 32768 for p in ports), ports
    assert len(set(ports[:4])) == 4  # neighbouring job ids get different ports
