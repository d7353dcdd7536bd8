"""What the GPU scripts share: ``nvidia-smi`` queries, a background GPU sampler, the code's commit and the
environment of a child process that imports this checkout.

Used by ``bench/gpu_check.py``, ``bench/bench_gpu_scale.py`` and ``bench/device/measure.py``; nothing here
needs a GPU (without ``nvidia-smi`` the sampler records nothing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# a child benchmark is one process: the launcher's distributed settings must not reach it
DISTRIBUTED_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def nvidia_smi(*args: str, timeout: int = 30) -> str | None:
    """``nvidia-smi ARGS`` -> its output, or None without nvidia-smi or when it fails."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        r = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def git_commit(repo: Path = REPO, mark_dirty: bool = False) -> str | None:
    """The short commit of ``repo``'s HEAD (None outside git); ``mark_dirty``: say so when tracked files changed."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                                text=True).stdout.strip()
        if not mark_dirty:
            return commit or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
    return commit + (" (with uncommitted changes)" if dirty else "")


def repo_env(base: dict | None = None, drop: tuple[str, ...] = (), **extra: str) -> dict:
    """``base`` (default: this process's environment) less ``drop``, plus ``extra``, with this checkout first on
    ``PYTHONPATH``, so that a child started anywhere imports this code."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


class GpuSampler:
    """``nvidia-smi -lms INTERVAL`` in the background: utilisation and memory used, per GPU.

    ``summary()``: mean / max utilisation and max memory per GPU; ``util_mean_max()``: mean and max utilisation
    over every sample of every GPU.  ``enabled=False`` samples nothing (a run on the CPU)."""

    def __init__(self, interval_ms: int = 500, enabled: bool = True):
        self.cmd = ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                    "-lms", str(interval_ms)]
        self.enabled = enabled
        self.samples: dict[int, list[tuple[float, float]]] = {}
        self.proc = None
        self.thread = None

    def __enter__(self):
        if self.enabled and shutil.which("nvidia-smi"):
            try:
                self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                self.thread = threading.Thread(target=self._read, daemon=True)
                self.thread.start()
            except OSError:
                self.proc = None
        return self

    def _read(self):
        for line in self.proc.stdout:
            self.add_line(line)

    def add_line(self, line: str) -> None:
        """One line of nvidia-smi's CSV (``index, utilization, memory``); lines it cannot read are skipped."""
        parts = [x.strip() for x in line.split(",")]
        try:
            idx, util, mem = int(parts[0]), float(parts[1]), float(parts[2])
        except (ValueError, IndexError):
            return  # "[N/A]" and the like
        self.samples.setdefault(idx, []).append((util, mem))

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.thread.join(timeout=5)
        return False

    def summary(self) -> dict:
        if self.proc is None and not self.samples:
            return {"note": "nvidia-smi not available: no utilisation samples"}
        out = {}
        for idx, rows in sorted(self.samples.items()):
            utils = [u for u, _ in rows]
            out[f"gpu{idx}"] = {"samples": len(rows), "util_mean_pct": round(sum(utils) / len(utils), 1),
                                "util_max_pct": max(utils), "mem_used_max_mib": max(m for _, m in rows)}
        return out

    def util_mean_max(self) -> tuple[float | None, float | None]:
        utils = [u for rows in self.samples.values() for u, _ in rows]
        if not utils:
            return None, None
        return round(sum(utils) / len(utils), 1), max(utils)
