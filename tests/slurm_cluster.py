"""A real one-node SLURM cluster on localhost, for the SLURM tests and for trying the scripts by hand.

Installs Debian's ``slurm-wlm`` and ``munge`` with apt when they are missing, writes a
``slurm.conf`` under a state folder, and starts ``munged``, ``slurmctld`` and ``slurmd`` by
hand (no systemd needed).  The node line comes from ``slurmd -C``; two fake GPUs
(``/dev/tty0``, ``/dev/tty1``) are declared in ``gres.conf`` so ``--gres=gpu:N`` /
``--gpus-per-node=N`` work (``CUDA_VISIBLE_DEVICES`` is set but torch still runs on CPU).

By hand::

    python tests/slurm_cluster.py start      # prints the SLURM_CONF line to export
    export SLURM_CONF=/tmp/ner-slurm-cluster/etc/slurm.conf
    sbatch --wait ...; squeue; sinfo
    python tests/slurm_cluster.py status
    python tests/slurm_cluster.py stop

Settings (environment): ``NER_SLURM_DIR`` (state folder, default ``$TMPDIR/ner-slurm-cluster``),
``NER_SLURM_PORT`` (slurmctld port; slurmd uses the next one; default 16817).

Nothing is written outside the state folder except what munge needs in its standard places
(``/etc/munge/munge.key`` if missing, ``/run/munge``, ``/var/lib/munge``, ``/var/log/munge``):
the slurm tools reach munged only through its default socket.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MUNGE_KEY = Path("/etc/munge/munge.key")
FAKE_GPU_DEVICES = ["/dev/tty0", "/dev/tty1"]
APT_PACKAGES = ["slurm-wlm", "munge"]


class ClusterUnavailable(RuntimeError):
    """SLURM cannot be installed/started here at all: no apt-get, or not root (the tests skip)."""


class ClusterError(RuntimeError):
    """Setting the cluster up went wrong (the tests fail, with the daemons' log tails)."""


def _log(msg: str) -> None:
    print(f"[slurm_cluster] {msg}", file=sys.stderr, flush=True)


def _run(cmd, check=True, env=None, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, env=env, timeout=timeout, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie counts as dead
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def default_state_dir() -> Path:
    return Path(os.environ.get("NER_SLURM_DIR") or Path(tempfile.gettempdir()) / "ner-slurm-cluster")


@dataclass
class Cluster:
    state_dir: Path = field(default_factory=default_state_dir)
    port: int = int(os.environ.get("NER_SLURM_PORT", "16817"))
    partition: str = "debug"
    started: list = field(default_factory=list)   # daemons this object started (stop() stops only these)

    # ------------------------------------------------------------------ paths
    @property
    def conf(self) -> Path:
        return self.state_dir / "etc" / "slurm.conf"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    def env(self, base: dict | None = None) -> dict:
        """Environment for slurm client commands (sbatch, squeue, ...) talking to this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        return env

    # ------------------------------------------------------------------ install
    @staticmethod
    def installed() -> bool:
        return all(shutil.which(t) or Path("/usr/sbin", t).exists()
                   for t in ("slurmctld", "slurmd", "sbatch", "munged"))

    @classmethod
    def install(cls) -> None:
        if cls.installed():
            return
        if not shutil.which("apt-get"):
            raise ClusterUnavailable("SLURM is not installed and apt-get is not available to install it")
        if os.geteuid() != 0:
            raise ClusterUnavailable("SLURM is not installed and installing it with apt-get needs root")
        _log("installing " + " ".join(APT_PACKAGES) + " with apt-get (about 20 s)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            _run(["apt-get", "update", "-qq"], env=env, timeout=600)
            _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES],
                 env=env, timeout=900)
        except subprocess.CalledProcessError as exc:
            raise ClusterError(f"apt-get failed: {exc.stdout[-2000:]}") from exc
        if not cls.installed():
            raise ClusterError("apt-get ran but slurmctld/slurmd/munged are still missing")

    # ------------------------------------------------------------------ munge
    @staticmethod
    def munge_ok() -> bool:
        if not shutil.which("munge") or not MUNGE_SOCKET.exists():
            return False
        try:
            cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
            if cred.returncode != 0:
                return False
            out = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10)
            return out.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def start_munge(self) -> None:
        if self.munge_ok():
            return
        import pwd
        try:
            pw = pwd.getpwnam("munge")
        except KeyError as exc:
            raise ClusterError("the munge user does not exist (is the munge package installed?)") from exc
        for d, mode in (("/run/munge", 0o755), ("/var/lib/munge", 0o700), ("/var/log/munge", 0o700),
                        ("/etc/munge", 0o700)):
            os.makedirs(d, exist_ok=True)
            os.chown(d, pw.pw_uid, pw.pw_gid)
            os.chmod(d, mode)
        if not MUNGE_KEY.exists():
            MUNGE_KEY.write_bytes(os.urandom(1024))
        os.chown(MUNGE_KEY, pw.pw_uid, pw.pw_gid)
        os.chmod(MUNGE_KEY, 0o400)
        # munged forks into the background itself
        runner = ["runuser", "-u", "munge", "--"] if shutil.which("runuser") else ["su", "-s", "/bin/sh", "munge", "-c"]
        cmd = ["/usr/sbin/munged", "--force"]
        res = subprocess.run(runner + (cmd if runner[0] == "runuser" else [" ".join(cmd)]),
                             capture_output=True, text=True, timeout=30)
        for _ in range(50):
            if self.munge_ok():
                self.started.append("munged")
                return
            time.sleep(0.2)
        raise ClusterError(f"munged did not start: {res.stdout}{res.stderr}")

    def stop_munge(self) -> None:
        subprocess.run(["/usr/sbin/munged", "--stop"], capture_output=True, timeout=30)
        if shutil.which("runuser"):
            subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--stop"],
                           capture_output=True, timeout=30)

    # ------------------------------------------------------------------ config
    def node_line(self) -> tuple[str, str]:
        """``(node_name, "NodeName=... CPUs=... RealMemory=...")`` from ``slurmd -C``."""
        out = _run(["slurmd", "-C"], env=self.env()).stdout
        line = next(ln for ln in out.splitlines() if ln.startswith("NodeName="))
        fields = dict(kv.split("=", 1) for kv in line.split())
        name = fields["NodeName"]
        # leave head-room so slurmd never refuses to register because of memory noise
        if "RealMemory" in fields:
            fields["RealMemory"] = str(max(1, int(int(fields["RealMemory"]) * 0.9)))
        fields.pop("UpTime", None)
        devices = [d for d in FAKE_GPU_DEVICES if os.path.exists(d)]
        if devices:
            fields["Gres"] = f"gpu:{len(devices)}"
        fields["State"] = "UNKNOWN"
        return name, " ".join(f"{k}={v}" for k, v in fields.items())

    def write_config(self) -> None:
        sd = self.state_dir
        for sub in ("etc", "log", "ctld", "spool", "run"):
            (sd / sub).mkdir(parents=True, exist_ok=True)
        node, node_line = self.node_line()
        devices = [d for d in FAKE_GPU_DEVICES if os.path.exists(d)]
        conf = f"""\
# written by tests/slurm_cluster.py: a one-node test cluster on localhost
ClusterName=nertest
SlurmctldHost={node}
SlurmctldPort={self.port}
SlurmdPort={self.port + 1}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={sd}/ctld
SlurmdSpoolDir={sd}/spool
SlurmctldPidFile={sd}/run/slurmctld.pid
SlurmdPidFile={sd}/run/slurmd.pid
SlurmctldLogFile={sd}/log/slurmctld.log
SlurmdLogFile={sd}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2,sched_min_interval=100000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=15
MinJobAge=600
Waittime=0
MaxArraySize=1001
{node_line}
PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        self.conf.write_text(conf)
        gres = "".join(f"NodeName={node} Name=gpu File={d}\n" for d in devices)
        (self.conf.parent / "gres.conf").write_text(gres)
        (self.conf.parent / "cgroup.conf").write_text("CgroupPlugin=autodetect\n")

    # ------------------------------------------------------------------ daemons
    def _ping(self) -> bool:
        try:
            res = _run(["scontrol", "ping"], check=False, env=self.env(), timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return res.returncode == 0 and "UP" in res.stdout

    def node_info(self) -> dict:
        """``{"name", "cpus", "gpus"}`` of the (only) node, from ``scontrol show node``."""
        res = _run(["scontrol", "show", "node", "-o"], env=self.env(), timeout=30)
        line = res.stdout.strip().splitlines()[0]
        fields = dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))
        gres = re.search(r"gpu:(?:\w+:)?(\d+)", fields.get("Gres", ""))
        return {"name": fields["NodeName"], "cpus": int(fields["CPUTot"]), "gpus": int(gres.group(1)) if gres else 0}

    def node_state(self) -> str:
        res = _run(["sinfo", "-h", "-N", "-o", "%t"], check=False, env=self.env(), timeout=20)
        return res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else ""

    def running(self) -> bool:
        return (self.conf.exists() and _read_pid(self.state_dir / "run" / "slurmctld.pid") is not None
                and _read_pid(self.state_dir / "run" / "slurmd.pid") is not None
                and self.munge_ok() and self._ping())

    def start(self, timeout: float = 60) -> "Cluster":
        """Install if needed, start whatever is not running, wait until the node is idle."""
        if self.running() and self.node_state().rstrip("*") in ("idle", "mix", "alloc"):
            _log(f"re-using the running cluster (SLURM_CONF={self.conf})")
            return self
        if os.geteuid() != 0:
            raise ClusterUnavailable("starting slurmctld/slurmd/munged needs root")
        self.install()
        self.start_munge()
        if _read_pid(self.state_dir / "run" / "slurmctld.pid") is None or not self.conf.exists():
            self.write_config()
        env = self.env()
        if _read_pid(self.state_dir / "run" / "slurmctld.pid") is None:
            # -c: start from a clean state (no old jobs), -i: ignore unreadable state
            res = _run(["/usr/sbin/slurmctld", "-c", "-i"], check=False, env=env, timeout=60)
            if res.returncode != 0:
                raise ClusterError(f"slurmctld failed to start: {res.stdout}\n{self._tail('slurmctld.log')}")
            self.started.append("slurmctld")
        if _read_pid(self.state_dir / "run" / "slurmd.pid") is None:
            res = _run(["/usr/sbin/slurmd"], check=False, env=env, timeout=60)
            if res.returncode != 0:
                raise ClusterError(f"slurmd failed to start: {res.stdout}\n{self._tail('slurmd.log')}")
            self.started.append("slurmd")
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            if self._ping():
                state = self.node_state().rstrip("*~#")
                if state in ("idle", "mix", "alloc"):
                    _log(f"cluster up (SLURM_CONF={self.conf})")
                    return self
                if state.startswith(("down", "drain", "drng", "fail")):
                    node = self.node_line()[0]
                    _run(["scontrol", "update", f"nodename={node}", "state=resume"], check=False, env=env)
            time.sleep(0.5)
        raise ClusterError(f"the node did not become idle within {timeout:.0f}s (state {state!r})\n"
                                 f"{self._tail('slurmctld.log')}\n{self._tail('slurmd.log')}")

    def _tail(self, name: str, n: int = 30) -> str:
        try:
            return "\n".join((self.log_dir / name).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return f"({name} not found)"

    def log_tails(self, n: int = 30) -> str:
        """The last lines of both daemons' logs, for assertion messages."""
        return "\n".join(f"--- {name} (last {n} lines)\n{self._tail(name, n)}"
                         for name in ("slurmctld.log", "slurmd.log"))

    def stop(self, only_started: bool = False) -> None:
        """Stop slurmd and slurmctld (and munged if this object started it, or if not only_started)."""
        names = ["slurmd", "slurmctld"]
        if only_started:
            names = [n for n in names if n in self.started]
        for name in names:
            pid = _read_pid(self.state_dir / "run" / f"{name}.pid")
            if pid is None:
                continue
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not _pid_alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        if not only_started or "munged" in self.started:
            self.stop_munge()
        self.started.clear()

    # ------------------------------------------------------------------ jobs
    def sbatch(self, args: list[str], cwd: str | os.PathLike | None = None, env: dict | None = None) -> int:
        """Submit with ``sbatch --parsable ARGS``; returns the job id."""
        res = _run(["sbatch", "--parsable", *args], check=False, cwd=cwd, env=self.env(env), timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(map(str, args))} failed:\n{res.stdout}")
        return int(res.stdout.strip().split(";")[0])

    def show_job(self, job_id: int | str) -> list[dict]:
        """``scontrol show job -o`` as a list of dicts (one per array task)."""
        res = _run(["scontrol", "show", "job", "-o", str(job_id)], check=False, env=self.env(), timeout=30)
        jobs = []
        for line in res.stdout.splitlines():
            if "JobId=" not in line:
                continue
            fields = {}
            for m in re.finditer(r"(\w[\w:/]*)=(\S*)", line):
                fields.setdefault(m.group(1), m.group(2))
            jobs.append(fields)
        return jobs

    def wait(self, job_id: int | str, timeout: float = 120, poll: float = 1.0) -> list[dict]:
        """Wait until every task of the job reached a final state; returns ``show_job`` records."""
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                 "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
        deadline = time.time() + timeout
        jobs: list[dict] = []
        while time.time() < deadline:
            jobs = self.show_job(job_id)
            if jobs and all(j.get("JobState") in final for j in jobs):
                return jobs
            time.sleep(poll)
        _run(["scancel", str(job_id)], check=False, env=self.env())
        raise TimeoutError(f"job {job_id} not finished after {timeout:.0f}s: "
                           f"{[(j.get('JobId'), j.get('JobState')) for j in jobs]}")


    def wait_through_requeues(self, job_id: int | str, timeout: float = 240, hold_s: float = 3,
                              settle_s: float = 2, poll: float = 0.3) -> tuple[list[dict], list[tuple]]:
        """Wait for a job (or every task of an array) that may requeue itself to end; returns
        ``(show_job records, states seen)``, the states as ``(JobId, JobState, Reason, Restarts)``.

        SLURM holds a requeued job for CredExpire+1 s (~2 minutes, ``Reason=BeginTime``) so that its new
        launch credential is not taken for the revoked one: slurmd rejects a credential of the same job id
        whose creation second is <= the second it revoked the old one (the job then FAILS with no output
        at all). A task held like that is released early (``StartTime=now``), but only once ``hold_s``
        whole seconds have passed. States seen while a requeue happens (COMPLETING, ...) pass quickly,
        so every task's final state must hold for ``settle_s``.
        """
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                 "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
        deadline = time.time() + timeout
        seen: list[tuple] = []
        held_since: dict[str, float] = {}
        final_since = None
        while True:
            jobs = self.show_job(job_id)
            for job in jobs:
                state = (job.get("JobId"), job.get("JobState"), job.get("Reason"), job.get("Restarts"))
                if state not in seen[-len(jobs):]:
                    seen.append(state)
                if job.get("JobState") == "PENDING" and job.get("Reason") == "BeginTime":
                    since = held_since.setdefault(job["JobId"], time.time())
                    if time.time() - since >= hold_s:
                        _run(["scontrol", "update", f"jobid={job['JobId']}", "StartTime=now"], check=False,
                             env=self.env(), timeout=30)
                else:
                    held_since.pop(job.get("JobId"), None)
            if jobs and all(j.get("JobState") in final for j in jobs):
                final_since = final_since or time.time()
                if time.time() - final_since >= settle_s:
                    return jobs, seen
            else:
                final_since = None
            if time.time() > deadline:
                _run(["scancel", str(job_id)], check=False, env=self.env())
                raise TimeoutError(f"job {job_id} not finished after {timeout:.0f}s; states {seen}")
            time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cmd = argv[0] if argv else "status"
    cluster = Cluster()
    if cmd == "start":
        try:
            cluster.start()
        except (ClusterUnavailable, ClusterError) as exc:
            print(f"cannot start: {exc}", file=sys.stderr)
            return 1
        print(f"export SLURM_CONF={cluster.conf}")
        return 0
    if cmd == "stop":
        cluster.stop()
        print("stopped")
        return 0
    if cmd == "status":
        up = cluster.running()
        print(f"state dir: {cluster.state_dir}\nrunning: {up}" + (f"\nnode: {cluster.node_state()}" if up else ""))
        print(f"export SLURM_CONF={cluster.conf}")
        return 0 if up else 1
    print("usage: python tests/slurm_cluster.py start|stop|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
