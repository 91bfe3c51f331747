"""A persistent pool of worker processes that checks MATH answers with `math-verify`.

Why a pool: `math_verify` parses LaTeX into SymPy and compares symbolically; a pathological answer can
keep SymPy busy for minutes. Its own time limit uses `signal.alarm`, which only works on a process's
main thread (evaluation scores from worker threads), and a fresh process per item would pay about a
second of imports each time. So each worker imports `math_verify` once and answers requests over a
pipe (JSON lines); the caller waits at most `timeout` seconds for a verdict, then kills that worker, starts a
replacement, and counts the item as not equivalent (`verify` returns None, the caller records it).

Thread-safe: idle workers sit in a queue; each call takes one, so up to `workers` checks run at once.
Workers are `python verify_worker.py` subprocesses (never a fork of a process that runs engine threads,
and never multiprocessing's spawn, which re-imports the caller's `__main__` and so fails from a script
without an `if __name__ == "__main__"` guard). A pool belongs to the process that made it: a forked
child gets a fresh `default_pool()`.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

STARTUP_TIMEOUT = 120.0  # seconds for a fresh worker to import math_verify (~1-3 s measured; shared CPUs)
WORKER = Path(__file__).with_name("verify_worker.py")


class VerifyError(RuntimeError):
    """math-verify cannot run (not installed, or a worker cannot start)."""


class _Proc:
    """One worker process (`verify_worker.py` run as a script) and a thread that reads its replies."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-u", str(WORKER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     encoding="utf-8", bufsize=1, start_new_session=True)
        self.replies: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, name="puyu-math-verify-reader", daemon=True)
        self.reader.start()
        self.ready = False

    def _read(self) -> None:
        try:
            for line in self.proc.stdout:
                self.replies.put(json.loads(line))
        except (OSError, ValueError):
            pass
        self.replies.put(None)  # end of stream: the worker exited

    def reply(self, timeout: float):
        try:
            return self.replies.get(timeout=timeout)
        except queue.Empty:
            return "timeout"

    def wait_ready(self) -> None:
        if self.ready:
            return
        r = self.reply(STARTUP_TIMEOUT)
        if r == "timeout" or r is None:
            self.kill()
            raise VerifyError(f"a math-verify worker did not start within {STARTUP_TIMEOUT:.0f} s" if r else
                              "a math-verify worker exited at start")
        if r[0] == "error":
            self.kill()
            raise VerifyError(r[1])
        self.ready = True

    def send(self, item) -> None:
        self.proc.stdin.write(json.dumps(item) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class VerifyPool:
    """`workers` persistent math-verify processes; `verify(gold, pred)` -> True/False, or None when the
    check ran past `timeout` seconds (the worker is killed and replaced)."""

    def __init__(self, workers: int = 2, timeout: float = 10.0):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.timeout = float(timeout)
        self.pid = os.getpid()  # a pool belongs to the process that made it (a forked child makes its own)
        self._idle: queue.Queue[_Proc] = queue.Queue()
        self._all: list[_Proc] = []
        self._lock = threading.Lock()
        self._closed = False
        self.timeouts = 0  # items that ran past the limit (their workers were replaced)
        for _ in range(workers):
            self._add()

    def _add(self) -> None:
        p = _Proc()
        with self._lock:
            self._all.append(p)
        self._idle.put(p)

    def verify(self, gold: str, pred: str) -> bool | None:
        if self._closed:
            raise VerifyError("the verify pool is closed")
        if os.getpid() != self.pid:
            raise VerifyError("this verify pool belongs to another process (use default_pool() in a forked child)")
        p = self._idle.get()
        try:
            p.wait_ready()
        except VerifyError:
            with self._lock:
                self._all.remove(p)
            self._add()
            raise
        try:
            p.send([gold, pred])
            r = p.reply(self.timeout)
            if r != "timeout" and r is not None:
                self._idle.put(p)
                return bool(r[1])
        except (OSError, BrokenPipeError, ValueError):  # the worker died (e.g. out of memory): replace it
            pass
        p.kill()
        with self._lock:
            self._all.remove(p)
            self.timeouts += 1
        self._add()
        return None

    def close(self) -> None:
        if os.getpid() != self.pid:  # a forked child's copy (e.g. its inherited atexit hook): not ours to stop
            return
        self._closed = True
        with self._lock:
            procs, self._all = self._all, []
        for p in procs:
            try:
                p.proc.stdin.close()  # end of input: the worker returns
                p.proc.wait(1)
            except (OSError, subprocess.TimeoutExpired):
                pass
            p.kill()


_POOL: VerifyPool | None = None
_POOL_LOCK = threading.Lock()


def default_pool() -> VerifyPool:
    """This process's shared pool (started on first use, closed at exit). A cache of workers, not state:
    results never depend on it."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._closed or _POOL.pid != os.getpid():  # a forked child's inherited pool
            # belongs to its parent (the reader threads did not survive the fork): make this process's own
            _POOL = VerifyPool()
            atexit.register(_POOL.close)
        return _POOL
