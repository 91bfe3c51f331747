"""A persistent pool of worker processes that checks MATH answers with `math-verify`.

Why a pool: `math_verify` parses LaTeX into SymPy and compares symbolically; a pathological answer can
keep SymPy busy for minutes. Its own time limit uses `signal.alarm`, which only works on a process's
main thread (evaluation scores from worker threads), and a fresh process per item would pay about a
second of imports each time. So each worker imports `math_verify` once and answers requests over a
pipe; the caller waits at most `timeout` seconds for a verdict, then kills that worker, starts a
replacement, and counts the item as not equivalent (`verify` returns None, the caller records it).

Thread-safe: idle workers sit in a queue; each call takes one, so up to `workers` checks run at once.
Workers start with the "spawn" method (never fork a process that runs engine threads).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import queue
import threading

STARTUP_TIMEOUT = 120.0  # seconds for a fresh worker to import math_verify (~1-3 s measured; shared CPUs)


def _worker(conn) -> None:  # pragma: no cover - runs in the child process
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns that its own timeouts are off
    try:
        from math_verify import parse, verify
    except Exception as e:  # math-verify is missing: say so once, then answer every request with it
        conn.send(("error", f"math-verify is not installed: {e} (pip install 'puyu[eval]')"))
        return
    conn.send(("ready", None))
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        gold, pred = item
        try:
            g = parse("\\boxed{" + gold + "}", parsing_timeout=None)
            p = parse("\\boxed{" + pred + "}", parsing_timeout=None)
            ok = bool(g) and bool(p) and verify(g, p, timeout_seconds=None)
            conn.send(("ok", ok))
        except Exception:  # a parse/compare failure is "not shown equivalent", not a crash
            conn.send(("ok", False))


class VerifyError(RuntimeError):
    """math-verify cannot run (not installed, or a worker cannot start)."""


class _Proc:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child,), daemon=True, name="puyu-math-verify")
        self.proc.start()
        child.close()
        self.ready = False

    def wait_ready(self) -> None:
        if self.ready:
            return
        if not self.conn.poll(STARTUP_TIMEOUT):
            self.kill()
            raise VerifyError(f"a math-verify worker did not start within {STARTUP_TIMEOUT:.0f} s")
        kind, msg = self.conn.recv()
        if kind == "error":
            self.kill()
            raise VerifyError(msg)
        self.ready = True

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class VerifyPool:
    """`workers` persistent math-verify processes; `verify(gold, pred)` -> True/False, or None when the
    check ran past `timeout` seconds (the worker is killed and replaced)."""

    def __init__(self, workers: int = 2, timeout: float = 10.0):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.timeout = float(timeout)
        self._ctx = mp.get_context("spawn")
        self._idle: queue.Queue[_Proc] = queue.Queue()
        self._all: list[_Proc] = []
        self._lock = threading.Lock()
        self._closed = False
        self.timeouts = 0  # items that ran past the limit (their workers were replaced)
        for _ in range(workers):
            self._add()

    def _add(self) -> None:
        p = _Proc(self._ctx)
        with self._lock:
            self._all.append(p)
        self._idle.put(p)

    def verify(self, gold: str, pred: str) -> bool | None:
        if self._closed:
            raise VerifyError("the verify pool is closed")
        p = self._idle.get()
        try:
            p.wait_ready()
        except VerifyError:
            with self._lock:
                self._all.remove(p)
            self._add()
            raise
        try:
            p.conn.send((gold, pred))
            if p.conn.poll(self.timeout):
                kind, ok = p.conn.recv()
                self._idle.put(p)
                return bool(ok)
        except (EOFError, OSError, BrokenPipeError):  # the worker died (e.g. out of memory): replace it
            pass
        p.kill()
        with self._lock:
            self._all.remove(p)
            self.timeouts += 1
        self._add()
        return None

    def close(self) -> None:
        self._closed = True
        with self._lock:
            procs, self._all = self._all, []
        for p in procs:
            try:
                p.conn.send(None)
            except OSError:
                pass
            p.proc.join(1)
            p.kill()


_POOL: VerifyPool | None = None
_POOL_LOCK = threading.Lock()


def default_pool() -> VerifyPool:
    """This process's shared pool (started on first use, closed at exit). A cache of workers, not state:
    results never depend on it."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._closed:
            _POOL = VerifyPool()
            atexit.register(_POOL.close)
        return _POOL
