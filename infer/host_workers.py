"""Host worker processes for the batch tagger: each runs a :class:`infer.host_encoder.HostEncoder` on the
buffers it is sent (started by :mod:`infer.runner` when ``--host-workers``/``NER_TAG_HOST_WORKERS`` asks for them).
"""

from __future__ import annotations

import os
import sys

from .word_arrays import split_texts


def serve(task_fd: int, result_fd: int) -> None:
    """The loop of a host worker process (started by :mod:`infer.runner`): receives a pickled
    :class:`HostEncoder`, then encodes the buffers of texts it is sent, in order, until it is sent ``None``.
    It dies with its parent, also when that is killed."""
    from multiprocessing.connection import Connection

    _die_with_parent()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker
    tasks, results = Connection(task_fd, writable=False), Connection(result_fd, readable=False)
    try:
        encoder = tasks.recv()
        split_texts(["warm up"])  # the character tables, while the first buffer is read
        while True:
            texts = tasks.recv()
            if texts is None:
                return
            try:
                result = ("ok", encoder.encode(texts))
            except BaseException as e:  # noqa: BLE001 - handed to the parent, which raises it
                result = ("error", e)
            try:
                results.send(result)
            except Exception:  # an exception that does not pickle
                results.send(("error", RuntimeError(f"host worker: {result[1]!r}")))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):  # the parent went away
        return


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the thread that started it exits (prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before that
        os._exit(1)


class HostWorkers:
    """``n`` worker processes that prepare buffers (:meth:`infer.host_encoder.HostEncoder.encode`): buffer ``k`` goes
    to worker ``k % n`` (:meth:`submit`, producer thread), its result comes back in order (:meth:`result`, main
    thread).

    The workers are plain ``python -c`` processes (:func:`serve`) talking over two pipes each,
    not multiprocessing's spawn, which would re-run the caller's ``__main__`` script in every worker.  They
    are started by the main thread and die with it (also when it is killed).
    """

    def __init__(self, encoder, n: int):
        import subprocess
        from multiprocessing.connection import Connection

        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where the infer package is
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        code = "import sys; from infer.host_workers import serve; serve(int(sys.argv[1]), int(sys.argv[2]))"
        self.tasks, self.results, self.procs = [], [], []
        try:
            for _ in range(n):
                task_r, task_w = os.pipe()
                result_r, result_w = os.pipe()
                try:
                    proc = subprocess.Popen([sys.executable, "-c", code, str(task_r), str(result_w)],
                                            pass_fds=(task_r, result_w), env=env, stdin=subprocess.DEVNULL)
                finally:
                    os.close(task_r)
                    os.close(result_w)
                self.procs.append(proc)
                self.tasks.append(Connection(task_w, readable=False))
                self.results.append(Connection(result_r, writable=False))
            for conn in self.tasks:
                conn.send(encoder)
        except BaseException:
            self.close(kill=True)
            raise
        self.sent = 0

    def submit(self, texts: list) -> int:
        k = self.sent
        try:
            self.tasks[k % len(self.tasks)].send(texts)
        except OSError:  # BrokenPipeError: it is gone
            raise self._died(k) from None
        self.sent += 1
        return k

    def result(self, k: int):
        try:
            status, value = self.results[k % len(self.results)].recv()
        except (EOFError, OSError):
            raise self._died(k) from None
        if status == "error":
            raise value
        return value

    def _died(self, k: int) -> RuntimeError:
        proc = self.procs[k % len(self.procs)]
        try:
            code = proc.wait(timeout=1)
        except Exception:  # noqa: BLE001 - not dead after all; say so
            code = None
        return RuntimeError(f"a host worker process died (exit code {code}); nothing was written for its buffer")

    def close(self, kill: bool = False) -> None:
        for conn in self.tasks:
            try:
                if not kill:
                    conn.send(None)
                conn.close()
            except OSError:
                pass
        for proc in self.procs:
            if kill:
                proc.kill()
            try:
                proc.wait(timeout=5)
            except Exception:  # noqa: BLE001 - still running: no mercy
                proc.kill()
                proc.wait()
        for conn in self.results:
            conn.close()
