"""slurm/tag.sbatch's own logic, run by bash without a cluster: a fake tagger (PYTHON) and a fake ``scontrol``
on PATH stand in for the real ones.  The shard of an array with a step, exit codes that pass through, a
requeue that SLURM refuses (exit 3 with scontrol's reason), and a stop bounded by NER_STOP_GRACE."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny_models import REPO_ROOT

FAKE_TAGGER = f"""#!/bin/bash
[ "$1" = "-c" ] && exec {sys.executable} "$@"      # env.sh's torch version check
echo "$@" > "$FAKE_DIR/args"
out=""; prev=""
for a in "$@"; do [ "$prev" = "--output" ] && out="$a"; prev="$a"; done
case "$FAKE_TAGGER" in
    torchrun*)  # rank 0's status in NER_TAG_STATUS_FILE, torchrun's own exit code 1
        echo "${{FAKE_TAGGER#torchrun}}" > "$NER_TAG_STATUS_FILE"; exit 1 ;;
    exit*) exit "${{FAKE_TAGGER#exit}}" ;;
    progress)   # finishes a part, then works until SIGTERM
        trap 'exit 143' TERM
        mkdir -p "$out/_manifest" && echo {{}} > "$out/_manifest/part-000000.json"
        touch "$FAKE_DIR/started"
        while :; do sleep 0.1; done ;;
    stubborn)   # ignores SIGTERM
        trap '' TERM
        touch "$FAKE_DIR/started"
        while :; do sleep 0.1; done ;;
esac
"""

FAKE_SCONTROL = """#!/bin/bash
echo "$@" >> "$FAKE_DIR/scontrol"
if [ "$1" = "requeue" ]; then
    echo "slurm_requeue error: Requested operation is presently disabled" >&2
    exit 1
fi
"""


@pytest.fixture
def fake(tmp_path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("fakepy", FAKE_TAGGER), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", PYTHON=str(bin_dir / "fakepy"), FAKE_DIR=str(tmp_path),
               NER_TAGGERS_DIR=str(REPO_ROOT), VIRTUAL_ENV=env.get("VIRTUAL_ENV", sys.prefix), NPROC_PER_NODE="1",
               SLURM_JOB_ID="78", SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_MIN="1",
               SLURM_ARRAY_TASK_STEP="2", SLURM_ARRAY_TASK_COUNT="4")
    return env


def _start(fake: dict, tmp_path: Path, **extra) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(REPO_ROOT / "slurm" / "tag.sbatch"), "--model", "m", "--input", "in",
                             "--output", str(tmp_path / "out")], env={**fake, **extra}, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0] if proc.poll() is not None else ""
        time.sleep(0.05)


@pytest.mark.parametrize("code", [0, 4, 5])
def test_array_step_gives_the_shard_and_exit_codes_pass_through(fake, tmp_path, code):
    proc = _start(fake, tmp_path, FAKE_TAGGER=f"exit{code}")
    log, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, log
    args = (tmp_path / "args").read_text().split()
    # --array=1-7:2: task 3 is the second of 4 (shard 1)
    assert args[args.index("--num-shards") + 1] == "4" and args[args.index("--shard-index") + 1] == "1", args
    assert "shard 1/4" in log


@pytest.mark.parametrize("code", [2, 4, 5])
def test_the_taggers_exit_code_comes_through_torchrun(fake, tmp_path, code):
    proc = _start(fake, tmp_path, FAKE_TAGGER=f"torchrun{code}", NPROC_PER_NODE="2")
    log, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, log
    assert "torch.distributed.run" in (tmp_path / "args").read_text()
    assert f"torchrun exited with status 1; the tagger's own: {code}" in log, log


def test_refused_requeue_ends_the_task_with_the_reason(fake, tmp_path):
    proc = _start(fake, tmp_path, FAKE_TAGGER="progress")
    _wait_for(tmp_path / "started", proc)
    proc.send_signal(signal.SIGUSR1)
    log, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3, log
    assert "requeue 77_3" in (tmp_path / "scontrol").read_text()
    assert ("requeue of 77_3 failed: slurm_requeue error: Requested operation is presently disabled; the task "
            "ends here (exit code 3)") in log, log


def test_a_tagger_that_ignores_sigterm_is_killed_after_the_grace(fake, tmp_path):
    proc = _start(fake, tmp_path, FAKE_TAGGER="stubborn", NER_STOP_GRACE="2")
    _wait_for(tmp_path / "started", proc)
    t0 = time.time()
    proc.send_signal(signal.SIGUSR1)
    log, _ = proc.communicate(timeout=60)
    assert time.time() - t0 < 20, log
    assert "the tagger did not stop within NER_STOP_GRACE=2s: killing it" in log, log
    assert proc.returncode == 3 and "no part was finished since the task started" in log, log
