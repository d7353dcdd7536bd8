"""Name the rank that holds a distributed job up.

Every rank publishes, every few seconds from a background thread, how many
micro-batches it has started (``beat``, a counter the training loop bumps: no
collective and no device sync) to torchrun's TCP store.  When a collective
times out (the process-group timeout), or when a rank has made no progress
for that long while a peer is behind it, the waiting rank reads every rank's
entry and names the one that is behind (or has stopped reporting), writes
that line to the store and exits with :data:`HUNG_EXIT_CODE`; the stuck rank
reads the line and exits too, so the job ends within about the timeout
instead of waiting for torchrun's SIGKILL.

Without torchrun (one process, or no ``MASTER_ADDR``) the heartbeat is off.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

HUNG_EXIT_CODE = 7
"""Exit code of a rank that ended because a collective waited ``timeout_s`` for a peer."""
_PREFIX = "ner_heartbeat/"
_ABORT = "abort"


class CollectiveTimeout(RuntimeError):
    """A collective waited longer than the process-group timeout; the message names the stuck rank."""


def is_timeout(exc: BaseException) -> bool:
    """True for the error a gloo/NCCL collective raises when it waited longer than the process-group timeout."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("timed out" in text or "timeout" in text)


def _exit(code: int) -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    os._exit(code)


class Heartbeat:
    """One per rank; ``start()`` after the process group is up, ``beat(step)`` in the loop, ``stop()`` at the end."""

    def __init__(self, rank: int, world_size: int, timeout_s: float, store=None):
        self.rank, self.world_size, self.timeout_s = rank, world_size, float(timeout_s)
        self.interval_s = min(10.0, max(0.5, self.timeout_s / 10))
        self.count = 0
        self.step = 0
        self._store = store
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_job(cls, rank: int, world_size: int, timeout_s: float) -> "Heartbeat | None":
        """A started heartbeat on torchrun's store, or None (one process, no store reachable)."""
        if world_size < 2 or not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
            return None
        try:
            import torch.distributed as dist

            client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                   timeout=datetime.timedelta(seconds=max(5.0, timeout_s)))
            store = dist.PrefixStore(_PREFIX, client)
        except Exception as e:  # noqa: BLE001 - the job runs on without naming stuck ranks
            log.warning("heartbeat off: cannot reach torchrun's store (%s)", e)
            return None
        beat = cls(rank, world_size, timeout_s, store)
        beat.start()
        return beat

    def beat(self, step: int) -> None:
        """A micro-batch starts (plain attribute writes: the thread publishes them)."""
        self.count += 1
        self.step = step

    def start(self) -> None:
        self._publish()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()

    # ------------------------------------------------------------ the thread
    def _publish(self) -> None:
        self._store.set(f"rank/{self.rank}", f"{self.count} {self.step} {time.time():.3f}")

    def _run(self) -> None:
        last_count, since = self.count, time.monotonic()
        while not self._done.wait(self.interval_s):
            try:
                self._publish()
                if self._store.check([_ABORT]):
                    self._abort_as_named()
                if self.count != last_count:
                    last_count, since = self.count, time.monotonic()
                elif time.monotonic() - since >= self.timeout_s:
                    line = self.diagnose(waited_s=time.monotonic() - since, only_if_behind=True)
                    if line:  # a peer is behind this rank: the same report as a timed-out collective
                        log.error("%s", line)
                        _exit(HUNG_EXIT_CODE)
            except Exception:  # noqa: BLE001 - the store is gone: the job is ending, torchrun stops this process
                return

    def _abort_as_named(self) -> None:
        line = self._store.get(_ABORT).decode()
        if self._done.is_set():  # this rank wrote the line (it reports and exits itself), or is ending anyway
            return
        self._done.set()
        log.error("rank %d ends: %s", self.rank, line)
        _exit(HUNG_EXIT_CODE)

    # ------------------------------------------------------------ the report
    def entries(self) -> dict[int, tuple[int, int, float]]:
        """Each reporting rank's (micro-batches started, step, wall time of the entry)."""
        out = {}
        for r in range(self.world_size):
            key = f"rank/{r}"
            if self._store.check([key]):
                count, step, when = self._store.get(key).decode().split()
                out[r] = (int(count), int(step), float(when))
        return out

    def diagnose(self, waited_s: float | None = None, only_if_behind: bool = False) -> str | None:
        """The line naming the stuck rank(s); also written to the store so that they exit. None when
        ``only_if_behind`` and no rank is behind this one."""
        waited = f" for {waited_s:.0f} s" if waited_s is not None else ""
        try:
            self._publish()
            entries = self.entries()
        except Exception as e:  # noqa: BLE001 - the store is gone too
            return f"rank {self.rank}: a collective timed out{waited}; cannot read the other ranks' progress ({e})"
        now = time.time()
        mine = entries.get(self.rank, (self.count, self.step, now))[0]
        behind = sorted(r for r, (count, _, _) in entries.items() if count < mine)
        silent = sorted(r for r in range(self.world_size)
                        if r not in entries or now - entries[r][2] > 3 * self.interval_s + 5)
        if only_if_behind and not behind:
            return None
        top = max(count for count, _, _ in entries.values()) if entries else mine
        parts = []
        for r in behind:
            count, step, _ = entries[r]
            parts.append(f"rank {r} is behind: it has started {count} micro-batch(es) (after optimizer step {step}), "
                         f"this rank {mine}")
        for r in silent:
            ago = f"{now - entries[r][2]:.0f} s ago" if r in entries else "never"
            parts.append(f"rank {r} stopped reporting (last report {ago}: its process is frozen or gone)")
        if not parts:
            parts.append(f"no rank is behind (all at micro-batch {top}): the stuck call is inside a step "
                         "(a GPU kernel, the file system) or outside the training loop")
        line = (f"rank {self.rank} waited{waited or ' past the process-group timeout'} in a collective "
                f"(timeout {self.timeout_s:g} s): " + "; ".join(parts))
        if behind or silent:
            self._done.set()  # this rank reports and exits; its thread must not exit first on its own line
            try:
                self._store.set(_ABORT, line)
            except Exception:  # noqa: BLE001 - torchrun still stops the stuck rank
                pass
        return line
