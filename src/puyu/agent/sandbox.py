"""How the code-interpreter kernel process is confined.

The interpreter (`puyu.agent.interpreter`) runs model-written Python in a Jupyter kernel. This module builds
the command line and the process settings that confine that kernel; it knows nothing about Jupyter.
`Sandbox.protections()` reports which of the items below are active for a given sandbox.

Modes (`SandboxConfig.mode`; "auto" takes the first that works on this machine, probed once):

1. ``bwrap`` (bubblewrap, which the Makefile installs). Protected:
   - network: own network namespace whose only interface, loopback, is down. No TCP/UDP anywhere,
     including ports the host opened on its 127.0.0.1; no DNS.
   - processes: own PID, IPC and UTS namespaces. The kernel sees only its own processes, cannot
     signal the host (its parent is bubblewrap's init, pid 1), and killing the sandbox kills everything
     it started (`--die-with-parent`, then the whole namespace).
   - files: a root built from scratch. /usr, /etc, the /bin and /lib links and the Python install are
     read-only binds; /tmp and /dev/shm are private tmpfs of `Limits.tmpfs_bytes`; the session directory
     and the kernel's runtime directory (connection file, sockets, HOME, caches) are the only writable
     host paths. Everything else (/root, /home, /work, /run, /var, other sessions) is absent.
   - privileges: with a root host the kernel runs as a fresh uid (one per sandbox, so sessions do not
     share a process budget or signal each other), with no capabilities and no_new_privs (set-uid
     programs do not elevate). A non-root host runs bubblewrap in a user namespace: the kernel keeps the
     host user's uid, without capabilities.
2. ``unshare`` (util-linux, used when bubblewrap is missing or fails): the same network, PID, IPC and
   UTS namespaces, but the host's file system. Writes are stopped only by the permissions of the kernel's
   uid. A root host drops to a fresh uid when that uid can run the venv's Python; where it cannot (a
   Python under /root, as on the machine these tests were first run on) the kernel stays uid 0 with an
   empty capability set, which can still write root-owned files and has no process limit. Use bwrap.
3. ``none`` (no namespaces, e.g. a container without user namespaces): NOT protected: the network,
   signals to processes of the same uid (with a root host whose fresh uid cannot run Python, that
   includes the host process itself), and files writable by that uid. A SandboxWarning says so, and
   `SandboxConfig(require_network_isolation=True)` makes it a SandboxError instead.

Every mode: rlimits (address space `Limits.memory_bytes`, so a 50 GB allocation is a MemoryError;
CPU seconds; file size, so a huge write is EFBIG; open files; no core files); RLIMIT_NPROC, which the
kernel counts over all tasks of the uid host-wide even inside a user namespace (measured), so it is
`max_processes` for a fresh uid and `max_processes` on top of the user's current tasks for a non-root
host; nice 10; a scrubbed environment (nothing from the host passes; HOME, TMPDIR and caches point
into the runtime directory); cwd = the session directory; stdin closed and output to a log file; a
new session (no controlling terminal to inject keystrokes into); death with the host process.

Not protected in any mode: CPU time up to the CPU-seconds limit (the interpreter's wall-time limit
interrupts, then restarts); disk use in the session directory beyond the per-file limit (many files);
kernel exploits and side channels; reading world-readable files under the exposed system paths.
Host code that writes into a session directory must not follow links the kernel may have planted
there (the interpreter saves figures with O_NOFOLLOW|O_EXCL; `tools.read_file` checks the real path).

Measured where this was written (Debian 12, Linux 6.x, running as root, bubblewrap 0.8.0): mode
"bwrap" with every protection; `unshare --net` works too; the hostile-code tests in
tests/test_sandbox.py pass in both modes they cover.
"""

from __future__ import annotations

import functools
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

MODES = ("bwrap", "unshare", "none")


class SandboxError(RuntimeError):
    """The requested confinement is not available on this machine."""


class SandboxWarning(UserWarning):
    """The sandbox runs with fewer protections than the full `bwrap` mode."""


@dataclass(frozen=True)
class Limits:
    """Per-kernel resource limits (setrlimit), inherited by everything the kernel starts."""

    memory_bytes: int = 4 << 30  # RLIMIT_AS; a kernel with pandas + pyplot loaded peaks at ~1.1 GiB (measured)
    cpu_seconds: int = 1800  # RLIMIT_CPU over the kernel's whole life; SIGXCPU kills it, then a restart
    max_processes: int = 64  # RLIMIT_NPROC; threads count, a kernel with pandas + pyplot has 12
    max_file_bytes: int = 1 << 30  # RLIMIT_FSIZE; Python ignores SIGXFSZ, so big writes fail with EFBIG
    max_open_files: int = 1024
    tmpfs_bytes: int = 512 << 20  # size of the private /tmp and /dev/shm under bwrap (host RAM)


@dataclass
class SandboxConfig:
    mode: str = "auto"  # "auto" | "bwrap" | "unshare" | "none"
    limits: Limits = field(default_factory=Limits)
    uid: int | None = None  # host root only: the kernel's uid; None = a fresh unused uid per sandbox
    require_network_isolation: bool = False  # True: refuse mode "none" instead of warning
    extra_ro_paths: tuple[str, ...] = ()  # more host paths to show read-only under bwrap

    def __post_init__(self) -> None:
        if self.mode not in ("auto", *MODES):
            raise ValueError(f"sandbox mode must be one of auto, {', '.join(MODES)}; got {self.mode!r}")


# Run inside the sandbox before the kernel: drop to the sandbox uid (which clears all capabilities) or,
# when staying uid 0, empty the capability bounding set; then no_new_privs and a parent-death signal
# (a uid change clears the one set by the host), and chdir (only the new uid may enter the session
# directory). argv: uid gid cwd program args...; uid -1 = keep uid 0.
_SHIM = (
    "import ctypes,os,sys\n"
    "u,g=int(sys.argv[1]),int(sys.argv[2])\n"
    "c=ctypes.CDLL(None,use_errno=True)\n"
    "if u>=0:\n os.setgroups([]);os.setgid(g);os.setuid(u)\n"
    "else:\n [c.prctl(24,k,0,0,0) for k in range(64)]\n"  # PR_CAPBSET_DROP
    "c.prctl(38,1,0,0,0);c.prctl(1,9,0,0,0)\n"  # PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG=SIGKILL
    "os.chdir(sys.argv[3]);os.execv(sys.argv[4],sys.argv[4:])\n"
)

_ROOT_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


def _is_root() -> bool:
    return os.geteuid() == 0


def _quiet_run(argv: list[str], **kw) -> str | None:
    """Run a probe; None when it succeeded, else a one-line reason."""
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=30, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if r.returncode != 0:
        return (r.stderr.decode(errors="replace").strip().splitlines() or [f"exit {r.returncode}"])[-1]
    return None


@functools.cache
def probe(mode: str) -> str | None:
    """Whether `mode` works here: None if it does, else the reason. Cached for the process."""
    if mode == "none":
        return None
    if mode == "bwrap":
        if not shutil.which("bwrap"):
            return "bubblewrap (bwrap) is not installed"
        argv = ["bwrap", "--unshare-net", "--unshare-pid", "--ro-bind", "/", "/", "--proc", "/proc",
                "--dev", "/dev", "true"]
        if not _is_root():
            argv.insert(1, "--unshare-user")
        return _quiet_run(argv)
    if mode == "unshare":
        if not shutil.which("unshare"):
            return "util-linux unshare is not installed"
        argv = ["unshare", "--net", "--pid", "--fork", "--mount", "--mount-proc", "true"]
        if not _is_root():
            argv.insert(1, "--map-root-user")
        return _quiet_run(argv)
    raise ValueError(f"unknown sandbox mode {mode!r}")


@functools.cache
def _uid_can_run_python(uid: int) -> bool:
    """Whether a process of `uid` can start this Python outside bwrap (its install may be unreadable)."""
    def drop() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    return _quiet_run([sys.executable, "-c", "import ipykernel"], preexec_fn=drop, cwd="/") is None


def choose_mode(config: SandboxConfig) -> str:
    """The mode to use: the configured one (error if unavailable) or, for "auto", the best that works."""
    if config.mode != "auto":
        reason = probe(config.mode)
        if reason:
            raise SandboxError(f"sandbox mode {config.mode!r} is unavailable here: {reason}")
        return config.mode
    for mode in MODES:
        if probe(mode) is None:
            return mode
    return "none"  # unreachable: "none" always probes fine


def _count_tasks(uid: int) -> int:
    """Tasks (threads) of processes owned by `uid`, as RLIMIT_NPROC counts them."""
    n = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/status") as f:
                n += next((int(line.split()[1]) for line in f if line.startswith("Threads:")), 1)
        except (OSError, ValueError):
            continue
    return n


class Sandbox:
    """Confinement for one kernel process: build it once, then `spawn` (and later `kill`) processes.

    `workdir` is the session directory (writable, the cwd); `runtime_dir` holds the kernel's connection
    file, sockets, HOME and caches (writable, not shown to the model). Both must exist. When the host
    is root the sandbox chowns both directories (top level only) to its uid; `release()` gives a
    caller-owned workdir and everything in it back to its original owner.
    """

    def __init__(self, workdir: str | os.PathLike, runtime_dir: str | os.PathLike,
                 config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self.workdir = Path(workdir).resolve()
        self.runtime_dir = Path(runtime_dir).resolve()
        self.mode = choose_mode(self.config)
        if self.mode == "none":
            why = "" if self.config.mode == "none" else f" ({probe('bwrap')}; {probe('unshare')})"
            msg = (f"sandbox mode 'none'{why}: the interpreter kernel has network access and only "
                   "rlimits confine it")
            if self.config.require_network_isolation:
                raise SandboxError(msg)
            warnings.warn(msg, SandboxWarning, stacklevel=2)
        # uid: >= 0 = drop to it inside the sandbox, -1 = stay uid 0 without capabilities, None = host user.
        self.uid: int | None = None
        if _is_root():
            uid = self.config.uid if self.config.uid is not None else 1_800_000_000 + secrets.randbelow(10**8)
            if self.mode == "bwrap" or _uid_can_run_python(uid):
                self.uid = uid
            else:
                self.uid = -1
                warnings.warn(f"uid {uid} cannot run {sys.executable}; the kernel stays uid 0 without "
                              "capabilities (install bubblewrap for a read-only file system)",
                              SandboxWarning, stacklevel=2)
        self._workdir_owner = self.workdir.stat().st_uid, self.workdir.stat().st_gid
        self._nproc: int | None = None  # RLIMIT_NPROC for the next spawn
        if self.uid is not None and self.uid >= 0:
            for d in (self.workdir, self.runtime_dir):
                os.chown(d, self.uid, self.uid)

    # ---- what is protected ---------------------------------------------------------------------
    @property
    def dedicated_uid(self) -> bool:
        return self.uid is not None and self.uid >= 0

    @property
    def network_isolated(self) -> bool:
        return self.mode in ("bwrap", "unshare")

    def protections(self) -> dict[str, bool]:
        """Which protections are active, by name (for logs, `puyu chat` and the tests)."""
        return {
            "network": self.network_isolated,
            "pid_namespace": self.mode in ("bwrap", "unshare"),
            "read_only_root": self.mode == "bwrap",
            "private_tmp": self.mode == "bwrap",
            "unprivileged_uid": self.dedicated_uid or not _is_root(),  # kernel uid != 0
            "process_limit": self._nproc_enforced(),
            "rlimits": True,
            "scrubbed_env": True,
        }

    def _nproc_enforced(self) -> bool:
        # RLIMIT_NPROC compares the count of ALL tasks (threads included) of the real uid, host-wide and
        # even from inside a user namespace (measured), with the limit of the forking process; root is
        # exempt. So: a dedicated uid gets the limit as is; a non-root host user gets it on top of the
        # tasks it already runs (see `_nproc_limit`); a sandbox left at uid 0 gets none.
        return self.dedicated_uid or not _is_root()

    def _nproc_limit(self) -> int:
        lim = self.config.limits.max_processes
        return lim if self.dedicated_uid else lim + _count_tasks(os.getuid())

    # ---- process control -----------------------------------------------------------------------
    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A scrubbed environment: nothing from the host except what is set here."""
        home = self.runtime_dir / "home"
        tmp = self.runtime_dir / "tmp"
        env = {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
            "HOME": str(home), "TMPDIR": str(tmp), "LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1", "XDG_CACHE_HOME": str(home / ".cache"),
            # BLAS/OpenMP pools would start one thread per core, eating the process limit.
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        }
        env.update(extra or {})
        return env

    def command(self, argv: list[str]) -> list[str]:
        """Wrap `argv` (absolute program path first) in the sandbox's launcher."""
        inner = list(argv)
        if self.uid is not None:
            gid = self.uid if self.uid >= 0 else 0
            inner = [sys.executable, "-c", _SHIM, str(self.uid), str(gid), str(self.workdir), *inner]
        if self.mode == "bwrap":
            return self._bwrap_prefix() + inner
        if self.mode == "unshare":
            pre = ["unshare", "--net", "--pid", "--ipc", "--uts", "--mount", "--fork", "--kill-child",
                   "--mount-proc"]
            if not _is_root():
                pre.insert(1, "--map-root-user")
            return pre + ["--", *inner]
        return inner

    def _bwrap_prefix(self) -> list[str]:
        lim = self.config.limits
        a = ["bwrap", "--die-with-parent", "--unshare-net", "--unshare-pid", "--unshare-ipc",
             "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
        if _is_root():
            # No user namespace: the shim must setuid to a real (host) uid so RLIMIT_NPROC and file
            # permissions apply; keep only the two capabilities the shim needs, which setuid then clears.
            a += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            a += ["--unshare-user"]
        for link in _ROOT_LINKS:  # /bin -> usr/bin and friends on merged-/usr systems
            if os.path.islink(link):
                a += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                a += ["--ro-bind", link, link]
        ro = {"/usr", "/etc"}
        for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, Path(sys.executable).resolve().parent.parent,
                  *self.config.extra_ro_paths):
            ro.add(os.path.realpath(p))
            ro.add(os.path.abspath(p))  # the venv path itself, as sys.executable names it
        trees: list[str] = []  # mounted destinations: their contents exist below them
        made: set[str] = set()  # empty directories created in the sandbox root

        def mount(opt: list[str], dst: str) -> None:
            # bwrap creates missing parents of a mount point with mode 0700, which the sandbox uid
            # cannot traverse (/root, /work); create them explicitly as 0755 empty directories.
            for anc in reversed(Path(dst).parents):
                s = str(anc)
                if s != "/" and s not in made and not any(s == t or s.startswith(t + "/") for t in trees):
                    a.extend(["--perms", "0755", "--dir", s])
                    made.add(s)
            a.extend(opt)
            trees.append(dst.rstrip("/") or "/")

        # Parents before children; skip paths already inside another read-only bind. Paths under /tmp
        # or /dev/shm (a checkout and its venv cloned under /tmp, say) are bound after the private
        # tmpfs is mounted there, or the tmpfs would hide them.
        private = ("/tmp", "/dev/shm")
        wanted = [p for p in sorted(ro, key=len)
                  if os.path.exists(p) and not any(p != q and p.startswith(q.rstrip("/") + "/") for q in ro)]

        def under_private(p: str) -> bool:
            return any(p == t or p.startswith(t + "/") for t in private)

        for p in wanted:
            if not under_private(p):
                mount(["--ro-bind", p, p], p)
        a += ["--proc", "/proc", "--dev", "/dev",
              "--perms", "1777", "--size", str(lim.tmpfs_bytes), "--tmpfs", "/tmp"]
        made.add("/tmp")  # empty, so parents of binds below it are created like the others
        a += ["--perms", "1777", "--size", str(lim.tmpfs_bytes), "--tmpfs", "/dev/shm"]
        made.add("/dev/shm")
        for p in wanted:
            if under_private(p):
                mount(["--ro-bind", p, p], p)
        for d in (self.runtime_dir, self.workdir):
            mount(["--bind", str(d), str(d)], str(d))
        if self.uid is None:  # otherwise the shim changes directory once it has the sandbox uid
            a += ["--chdir", str(self.workdir)]
        return a

    def _preexec(self) -> None:
        """Runs in the child between fork and exec (as the host user): limits, nice, death signal."""
        lim = self.config.limits
        for res, value in ((resource.RLIMIT_AS, lim.memory_bytes), (resource.RLIMIT_CPU, lim.cpu_seconds),
                           (resource.RLIMIT_FSIZE, lim.max_file_bytes),
                           (resource.RLIMIT_NOFILE, lim.max_open_files), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(res, (value, value))
        if self._nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (self._nproc, self._nproc))
        os.nice(10)  # hostile loops compete with the host at a lower priority
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the launcher

    def spawn(self, argv: list[str], log_path: str | os.PathLike, env: dict[str, str] | None = None
              ) -> subprocess.Popen:
        """Start `argv` confined; stdout and stderr go to `log_path`. Call from a long-lived thread:
        the parent-death signal fires when the *thread* that forked exits."""
        for d in ("home", "tmp"):
            p = self.runtime_dir / d
            p.mkdir(exist_ok=True)
            if self.dedicated_uid:
                os.chown(p, self.uid, self.uid)
        self._nproc = self._nproc_limit() if self._nproc_enforced() else None  # computed here, not after fork
        with open(log_path, "ab") as log:
            return subprocess.Popen(self.command(argv), env=self.env(env), cwd=self.workdir,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=self._preexec, close_fds=True)

    def kill(self, proc: subprocess.Popen) -> None:
        """Kill the process and everything it started; waits for the launcher to be reaped."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # start_new_session made its pid the group id
        except ProcessLookupError:
            pass
        # Processes that left the group (setsid) die with the PID namespace under bwrap/unshare; a
        # dedicated uid catches them in every mode: kill(-1) as that uid reaches exactly its processes.
        if self.dedicated_uid:
            uid = self.uid

            def become() -> None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)

            subprocess.run(["kill", "-9", "-1"], preexec_fn=become, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def count_processes(self) -> int | None:
        """Processes (not threads) owned by the dedicated uid, or None if there is none to count by."""
        if not self.dedicated_uid:
            return None
        n = 0
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}").st_uid == self.uid:
                        n += 1
                except OSError:
                    continue
        return n

    def release(self, recursive: bool = True) -> None:
        """Give a caller-owned workdir (and, if `recursive`, its contents) back to its original owner."""
        if not self.dedicated_uid:
            return
        uid, gid = self._workdir_owner
        os.chown(self.workdir, uid, gid)
        if recursive:
            for root, dirs, files in os.walk(self.workdir):
                for name in dirs + files:
                    try:
                        os.lchown(os.path.join(root, name), uid, gid)  # lchown: never follow a planted link
                    except OSError:
                        pass
