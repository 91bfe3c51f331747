"""The code interpreter: a real, stateful IPython kernel per session, confined by `puyu.agent.sandbox`.

    with Interpreter(timeout=30) as it:
        r = it.run("import pandas as pd; df = pd.read_csv('data.csv'); df.describe()")
        r.text, r.images, r.error   # output text, PNG paths in the session dir, None or a message

Contract of `run(code)`: it never raises for anything the code does. Errors come back as the
traceback text in `.text` plus a one-line `.error`; a cell that runs past the wall-time limit is
interrupted (KeyboardInterrupt; state kept) or, if the kernel does not yield within a grace period,
the kernel is restarted (state lost, `.restarted` set, said in `.error`); a kernel that dies (segfault,
`os._exit`, the memory or CPU limit, a killed parent) is restarted and reported the same way. Output
beyond `max_output_chars` keeps its head and tail with a marker in between (one output message is
decoded whole before that: a single 400 MB print costs this process ~1 GB for a moment, bounded by the
kernel's own memory limit; a ZeroMQ message-size cap was tried and loses all later output). Figures (matplotlib's
inline backend, or any `image/png` display) are written as `figure_NNN.png` in the session directory.

The kernel talks to this process over Unix-domain sockets (ZeroMQ ipc transport) in a private
runtime directory, because the sandbox gives the kernel its own network namespace: TCP to the host's
127.0.0.1 would not reach it. `run` calls are serialised by a lock; one Interpreter is one session.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import os
import queue
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from puyu.agent.sandbox import Limits, Sandbox, SandboxConfig

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

# Kernels are started from this one long-lived thread: the parent-death signal that ties a kernel to
# this process fires when the *thread* that forked it exits, so a short-lived request thread (a server
# worker) must not be the parent.
_LAUNCHER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="puyu-kernel-launcher")


def _close_client(client) -> None:
    client.stop_channels()
    client.context.destroy(linger=0)  # each client has its own context (see _start_kernel)


def read_png(path: str | os.PathLike, workdir: str | os.PathLike, max_bytes: int = 8 << 20) -> bytes | None:
    """The bytes of an image result, or None if it is not a PNG file inside `workdir` of at most
    `max_bytes`. Use this (not open()) to send images on: code in the kernel can replace a figure with a
    link to a host file after it was saved, and this process may be root."""
    root = Path(workdir).resolve()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        real = Path(os.readlink(f"/proc/self/fd/{fd}")) if os.path.exists("/proc/self/fd") else Path(path)
        if not real.is_relative_to(root) or os.fstat(fd).st_size > max_bytes:
            return None
        data = f.read(max_bytes + 1)
    return data if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) <= max_bytes else None


class InterpreterError(RuntimeError):
    """The interpreter itself cannot work (kernel does not start, session closed); not user-code errors."""


@dataclass
class RunResult:
    """What one `run` produced. `text` holds all output (stdout, stderr, results, traceback text);
    `error` is None on success, else one line (exception, timeout, crash, restart) for callers."""

    text: str = ""
    images: list[str] = field(default_factory=list)
    error: str | None = None
    timed_out: bool = False
    restarted: bool = False  # the kernel was (re)started during this call: earlier state is gone
    truncated: bool = False
    duration: float = 0.0

    def for_model(self) -> str:
        """The environment-turn text for the model: output, image links, and the error if not shown."""
        parts = [self.text.rstrip("\n")] if self.text.strip() else []
        parts += [f"![image]({os.path.basename(p)})" for p in self.images]
        if self.error and self.error not in self.text:
            parts.append(f"Error: {self.error}")
        return "\n".join(parts) if parts else "(no output)"


class _Output:
    """Collects output text, keeping the first `head` and last `tail` characters of an unbounded stream."""

    def __init__(self, max_chars: int):
        self.head_cap = max_chars * 2 // 3
        self.tail_cap = max_chars - self.head_cap
        self.head: list[str] = []
        self.head_len = 0
        self.tail = ""
        self.dropped = 0

    def add(self, s: str) -> None:
        if not s:
            return
        room = self.head_cap - self.head_len
        if room > 0:
            self.head.append(s[:room])
            self.head_len += min(room, len(s))
            s = s[room:]
        if s:
            self.tail += s
            if len(self.tail) > self.tail_cap:
                self.dropped += len(self.tail) - self.tail_cap
                self.tail = self.tail[len(self.tail) - self.tail_cap:]

    def text(self) -> str:
        mid = f"\n[... {self.dropped} characters of output omitted ...]\n" if self.dropped else ""
        return "".join(self.head) + mid + self.tail


class Interpreter:
    """A sandboxed IPython kernel bound to a session directory.

    workdir: the session directory (created if missing; kept on close). None: a fresh temporary
        directory, deleted on close. Files the model should analyse go here.
    timeout: default wall-time limit per `run`, seconds. interrupt_grace: seconds to wait after the
        interrupt before restarting. max_output_chars: text kept per run. idle_timeout: close the
        session (kernel and owned directory) after this many idle seconds (None: never).
    limits / sandbox: resource limits and confinement (see `puyu.agent.sandbox`).
    The kernel starts on `start()`, `__enter__` or the first `run`.
    """

    def __init__(self, workdir: str | os.PathLike | None = None, timeout: float = 30.0, *,
                 max_output_chars: int = 8000, interrupt_grace: float = 5.0, startup_timeout: float = 60.0,
                 idle_timeout: float | None = None, max_images: int = 20, limits: Limits | None = None,
                 sandbox: SandboxConfig | None = None):
        self.timeout = float(timeout)
        self.max_output_chars = max_output_chars
        self.interrupt_grace = interrupt_grace
        self.startup_timeout = startup_timeout
        self.idle_timeout = idle_timeout
        self.max_images = max_images
        config = sandbox or SandboxConfig()
        if limits is not None:
            config = dataclasses.replace(config, limits=limits)  # never edit the caller's config
        self._owns_workdir = workdir is None
        if workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="puyu-session-")).resolve()
        else:
            self.workdir = Path(workdir).resolve()
            self.workdir.mkdir(parents=True, exist_ok=True)
        # ipc socket paths must stay under the 107-byte sun_path limit, hence a short base directory.
        base = tempfile.gettempdir() if len(tempfile.gettempdir()) < 40 else "/tmp"
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="puyu-kernel-", dir=base)).resolve()
        self._res: dict = {"proc": None, "client": None, "sandbox": None, "dirs": [self.runtime_dir]}
        if self._owns_workdir:
            self._res["dirs"].append(self.workdir)
        self._finalizer = weakref.finalize(self, Interpreter._cleanup, self._res)
        try:
            self.sandbox = Sandbox(self.workdir, self.runtime_dir, config)
        except Exception:
            self._finalizer()
            raise
        self._res["sandbox"] = self.sandbox
        self._lock = threading.RLock()
        self._closed: str | None = None  # reason, once closed
        self._idle_timer: threading.Timer | None = None
        self._figure_no = 0
        self._baseline_procs: int | None = None

    # ---- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Interpreter:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def alive(self) -> bool:
        proc = self._res["proc"]
        return proc is not None and proc.poll() is None

    def start(self) -> None:
        """Start the kernel if it is not running. Raises InterpreterError if it cannot start."""
        with self._lock:
            self._check_open()
            if not self.alive:
                self._start_kernel()
            self._arm_idle_timer()

    def restart(self) -> None:
        """Kill the kernel and everything it started, then start a fresh one (all state is lost)."""
        with self._lock:
            self._check_open()
            self._stop_kernel()
            self._start_kernel()

    def close(self, reason: str = "closed") -> None:
        """Stop the kernel, remove the runtime directory and an owned workdir. Idempotent."""
        with self._lock:
            if self._closed:
                return
            if self._idle_timer:
                self._idle_timer.cancel()
            if not self._owns_workdir:
                self._stop_kernel()
                self.sandbox.release()
            self._finalizer()
            self._closed = reason  # last: `closed` means the kernel is gone and the files are cleaned up

    @staticmethod
    def _cleanup(res: dict) -> None:
        # A static function over a plain dict so weakref.finalize (also run at exit) holds no self.
        client, proc, sandbox = res.get("client"), res.get("proc"), res.get("sandbox")
        if client is not None:
            _close_client(client)
            res["client"] = None
        if proc is not None and sandbox is not None:
            sandbox.kill(proc)
            res["proc"] = None
        for d in res["dirs"]:
            shutil.rmtree(d, ignore_errors=True)

    def _check_open(self) -> None:
        if self._closed:
            raise InterpreterError(f"this interpreter session is {self._closed}; create a new one")

    def _arm_idle_timer(self) -> None:
        if self.idle_timeout is None:
            return
        if self._idle_timer:
            self._idle_timer.cancel()
        self._idle_timer = threading.Timer(self.idle_timeout, self._on_idle)
        self._idle_timer.daemon = True
        self._idle_timer.start()

    def _on_idle(self) -> None:
        if self._lock.acquire(blocking=False):  # a run in progress re-arms the timer when it ends
            try:
                self.close(reason=f"closed after {self.idle_timeout:g} s idle")
            finally:
                self._lock.release()

    # ---- kernel process --------------------------------------------------------------------------
    def _start_kernel(self) -> None:
        import zmq
        from jupyter_client import BlockingKernelClient
        from jupyter_client.connect import write_connection_file

        for stale in self.runtime_dir.glob("kernel-*"):
            stale.unlink(missing_ok=True)
        conn = str(self.runtime_dir / "connection.json")
        write_connection_file(conn, transport="ipc", ip=str(self.runtime_dir / "kernel"),
                              key=secrets.token_hex(32).encode())
        if self.sandbox.dedicated_uid:
            os.chown(conn, self.sandbox.uid, self.sandbox.uid)  # the file is 0600 and the kernel reads it
        env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline",
               "MPLCONFIGDIR": str(self.runtime_dir / "home" / ".mpl"),
               "IPYTHONDIR": str(self.runtime_dir / "home" / ".ipython"),
               "JUPYTER_RUNTIME_DIR": str(self.runtime_dir / "home" / ".jupyter"),
               "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", conn,
                "--HistoryManager.enabled=False", "--InteractiveShell.colors=nocolor",
                "--InteractiveShell.xmode=Plain"]
        log = self.runtime_dir / "kernel.log"
        proc = _LAUNCHER.submit(self.sandbox.spawn, argv, log, env).result()
        self._res["proc"] = proc
        client = BlockingKernelClient(context=zmq.Context())  # private: closed with the client
        client.load_connection_file(conn)
        client.start_channels(stdin=False, hb=False)
        self._res["client"] = client
        # Ready = a kernel_info reply on shell AND a message on iopub (the SUB socket connects
        # asynchronously; output published before it is subscribed would be lost).
        deadline = time.monotonic() + self.startup_timeout
        got_reply = got_iopub = False
        while not (got_reply and got_iopub):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                why = f"exited with code {proc.returncode}" if proc.poll() is not None else \
                    f"did not answer within {self.startup_timeout:g} s"
                self._stop_kernel()
                raise InterpreterError(f"the interpreter kernel {why} (sandbox mode "
                                       f"{self.sandbox.mode}); kernel log:\n{tail}")
            client.kernel_info()
            try:
                while True:
                    msg = client.get_shell_msg(timeout=0.5)
                    got_reply = got_reply or msg["msg_type"] == "kernel_info_reply"
            except queue.Empty:
                pass
            try:
                while True:
                    client.get_iopub_msg(timeout=0.05)
                    got_iopub = True
            except queue.Empty:
                pass
        self._baseline_procs = self.sandbox.count_processes()

    def _stop_kernel(self) -> None:
        client, proc = self._res["client"], self._res["proc"]
        if client is not None:
            _close_client(client)
            self._res["client"] = None
        if proc is not None:
            self.sandbox.kill(proc)
            self._res["proc"] = None

    def _interrupt(self) -> None:
        client = self._res["client"]
        # ipykernel handles interrupt_request on its control thread by sending itself SIGINT; the
        # host could not signal it directly as easily (another uid, another PID namespace).
        client.control_channel.send(client.session.msg("interrupt_request", {}))

    # ---- running code ----------------------------------------------------------------------------
    def run(self, code: str, timeout: float | None = None) -> RunResult:
        """Run `code` in the kernel; see the module docstring for the contract."""
        with self._lock:
            self._check_open()
            if self._idle_timer:
                self._idle_timer.cancel()
            try:
                return self._run_locked(code, self.timeout if timeout is None else float(timeout))
            finally:
                if not self._closed:
                    self._arm_idle_timer()

    def _run_locked(self, code: str, timeout: float) -> RunResult:
        t0 = time.monotonic()
        notes: list[str] = []
        restarted = False
        if self._res["proc"] is None:
            self._start_kernel()
        elif not self.alive:
            code_ = self._res["proc"].returncode
            self._stop_kernel()
            self._start_kernel()
            restarted = True
            notes.append(f"the kernel had died (exit status {code_}) and was restarted before this code "
                         "ran; variables from earlier calls are gone")
        res = self._execute(code, timeout)
        res.restarted = res.restarted or restarted
        if notes:
            res.error = "; ".join(notes + ([res.error] if res.error else []))
        res.duration = time.monotonic() - t0
        return res

    def _execute(self, code: str, timeout: float) -> RunResult:
        client, proc = self._res["client"], self._res["proc"]
        out = _Output(self.max_output_chars)
        res = RunResult()
        msg_id = client.execute(code, store_history=True, allow_stdin=False, stop_on_error=True)
        deadline = time.monotonic() + timeout
        reply: dict | None = None
        reply_at = 0.0
        idle = interrupted = saw_error = False
        while True:
            now = time.monotonic()
            if reply is not None and (idle or now > reply_at + 2.0):
                break  # done; iopub messages can be dropped under a flood, so do not wait forever
            if proc.poll() is not None:
                status = proc.returncode
                self._stop_kernel()
                self._start_kernel()
                res.restarted = True
                res.error = (f"the kernel died while running this code (exit status {status}; a memory, "
                             "CPU or process limit, or the code ended the process) and was restarted; "
                             "variables from earlier calls are gone")
                break
            if reply is None and now > deadline:
                if not interrupted:
                    self._interrupt()
                    interrupted, res.timed_out = True, True
                    deadline = now + self.interrupt_grace
                    continue
                self._stop_kernel()
                self._start_kernel()
                res.restarted = True
                res.error = (f"timed out after {timeout:g} s and did not stop on interrupt; the kernel was "
                             "restarted and variables from earlier calls are gone")
                break
            try:
                msg = client.get_iopub_msg(timeout=0.05)
            except queue.Empty:
                msg = None
            if msg is not None and msg["parent_header"].get("msg_id") == msg_id:
                kind, content = msg["msg_type"], msg["content"]
                if kind == "status" and content.get("execution_state") == "idle":
                    idle = True
                elif kind == "stream":
                    out.add(content.get("text", ""))
                elif kind in ("execute_result", "display_data", "update_display_data"):
                    self._display(content.get("data", {}), out, res)
                elif kind == "error":
                    saw_error = True
                    out.add(_ANSI.sub("", "\n".join(content.get("traceback", []))) + "\n")
            while reply is None and client.shell_channel.msg_ready():
                m = client.get_shell_msg(timeout=0)
                if m["parent_header"].get("msg_id") == msg_id:
                    reply, reply_at = m, time.monotonic()
        if reply is not None and reply["content"].get("status") == "error":
            c = reply["content"]
            if not saw_error:  # the iopub error message was dropped: use the reply's traceback
                out.add(_ANSI.sub("", "\n".join(c.get("traceback", []))) + "\n")
            res.error = f"{c.get('ename', 'Error')}: {c.get('evalue', '')}".rstrip(": ")
        if interrupted and not res.restarted:
            res.error = f"timed out after {timeout:g} s and was interrupted (variables are kept)"
        if not res.restarted:
            self._reap_fork_bomb(res)
        res.text, res.truncated = out.text(), out.dropped > 0
        return res

    def _display(self, data: dict, out: _Output, res: RunResult) -> None:
        png = data.get("image/png")
        if png:
            if len(res.images) < self.max_images:
                path = self._save_png(base64.b64decode(png))
                if path:
                    res.images.append(path)
            else:
                out.add(f"[image not saved: more than {self.max_images} images in one run]\n")
            return  # the text/plain of a figure is "<Figure size ...>": noise for the model
        text = data.get("text/plain")
        if text:
            out.add(_ANSI.sub("", text) + "\n")

    def _save_png(self, blob: bytes) -> str | None:
        # O_EXCL|O_NOFOLLOW: the kernel can write this directory, so a name it planted (a symlink to a
        # host file) must never be followed by this (possibly root) process; take the next free name.
        for _ in range(1000):
            self._figure_no += 1
            path = self.workdir / f"figure_{self._figure_no:03d}.png"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                continue
            except OSError:
                return None
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            return str(path)
        return None

    def _reap_fork_bomb(self, res: RunResult) -> None:
        # Left-over processes near the process limit mean a fork bomb: they would keep spinning after
        # the cell ends, so restart (which kills them all). Ordinary helpers (a Pool of 4) stay well below.
        n = self.sandbox.count_processes()
        if n is None or self._baseline_procs is None:
            return
        if n - self._baseline_procs >= max(8, self.sandbox.config.limits.max_processes // 4):
            self._stop_kernel()
            self._start_kernel()
            res.restarted = True
            msg = (f"the code left {n - self._baseline_procs} processes running (process limit "
                   f"{self.sandbox.config.limits.max_processes}); the kernel was restarted and variables "
                   "from earlier calls are gone")
            res.error = f"{res.error}; {msg}" if res.error else msg
