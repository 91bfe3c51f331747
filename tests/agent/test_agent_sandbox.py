"""Hostile code through the real interpreter kernel: each attempt is contained and reported, and this
pytest process (the host) lives on. Plus the sandbox's command line and fallbacks, without a kernel.

The assertions follow the mode the sandbox reports: on a machine with bubblewrap (the Makefile installs
it) every protection is checked; a weaker mode is checked for what it promises."""

from __future__ import annotations

import os
import socket
import warnings

import pytest

from puyu.agent.interpreter import Interpreter
from puyu.agent.sandbox import Limits, Sandbox, SandboxConfig, SandboxError, SandboxWarning, probe

SECRET_ENV = "PUYU_TEST_SECRET_TOKEN"


@pytest.fixture(scope="module")
def it():
    os.environ[SECRET_ENV] = "hunter2"  # set before the kernel starts: it must not inherit it
    limits = Limits(max_file_bytes=64 << 20, memory_bytes=3 << 30)
    with Interpreter(timeout=4, interrupt_grace=2, limits=limits) as interp:
        yield interp
    os.environ.pop(SECRET_ENV, None)


def protected(it, name: str) -> bool:
    return it.sandbox.protections()[name]


def require(it, *names: str) -> None:
    """Skip (saying why) where the sandbox mode in use does not promise any of `names`: running the
    attack there would hit this machine (an unbounded fork bomb, a killed pytest, overwritten files)."""
    if not any(protected(it, n) for n in names):
        pytest.skip(f"sandbox mode {it.sandbox.mode!r} has none of {', '.join(names)} on this machine")


def test_reports_its_protections(it):
    p = it.sandbox.protections()
    assert p["rlimits"] and p["scrubbed_env"]
    if probe("bwrap") is None:  # bubblewrap works here: it must be the mode in use, with everything on
        assert it.sandbox.mode == "bwrap" and all(p.values()), p


def test_connect_to_host_port_is_blocked(it):
    require(it, "network")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        r = it.run(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('CONNECTED')")
        assert "CONNECTED" not in r.text
        assert r.error and ("ConnectionRefused" in r.error or "unreachable" in r.error), r.error
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever reached the host's listener
        r = it.run("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=3)")
        assert r.error and "Network is unreachable" in r.error, r.error
        r = it.run("import socket\nsocket.getaddrinfo('pypi.org', 443)")
        assert r.error and "gaierror" in r.error, r.error
    finally:
        server.close()


def test_read_outside_session_dir(it, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    secret.chmod(0o644)  # world-readable on purpose: only the sandbox may stop the read
    r = it.run(f"print(open({str(secret)!r}).read())")
    if protected(it, "read_only_root"):
        assert r.error and "FileNotFoundError" in r.error and "TOP SECRET" not in r.text
        # The project checkout, /root and host processes are not in the sandbox's view either.
        r = it.run(f"import os\nprint(os.path.exists({__file__!r}), os.path.exists('/root/.bashrc'), "
                   "os.path.exists('/home'), len(os.listdir('/proc')) < 60)")
        assert r.text == "False False False True\n", r.text
    else:
        assert "TOP SECRET" in r.text or r.error  # readable is allowed here; writing is not (next test)


def test_write_outside_session_dir(it, tmp_path):
    require(it, "read_only_root", "unprivileged_uid")
    target = tmp_path / "target.txt"
    target.write_text("original")
    target.chmod(0o666)  # world-writable on purpose: only a read-only view or namespaces can stop it
    code = (f"results = []\nfor path in [{str(target)!r}, '/etc/puyu_owned', '/usr/puyu_owned', "
            f"{str(tmp_path / 'new.txt')!r}]:\n"
            "    try:\n        open(path, 'w').write('owned')\n        results.append('WROTE ' + path)\n"
            "    except OSError as e:\n        results.append(type(e).__name__)\nprint(results)")
    r = it.run(code)
    assert target.read_text() == "original"
    assert not (tmp_path / "new.txt").exists()
    assert not os.path.exists("/etc/puyu_owned") and not os.path.exists("/usr/puyu_owned")
    if protected(it, "read_only_root"):
        assert "WROTE" not in r.text, r.text
    # The session directory itself is writable, and the private /tmp is not the host's.
    r = it.run("open('made_here.txt', 'w').write('ok')\nopen('/tmp/puyu_private_probe', 'w').write('x')")
    assert r.error is None and (it.workdir / "made_here.txt").read_text() == "ok"
    if protected(it, "private_tmp"):
        assert not os.path.exists("/tmp/puyu_private_probe")


def test_fork_bomb(it):
    require(it, "process_limit")
    it.run("survivor = 1")
    r = it.run("import os\nwhile True:\n    os.fork()")
    assert r.error, "a fork bomb must be reported"
    if protected(it, "process_limit"):
        assert "BlockingIOError" in r.error or "process" in r.error
    assert it.run("print('after the bomb')").text == "after the bomb\n"
    if it.sandbox.count_processes() is not None:
        assert it.sandbox.count_processes() <= 2, "fork-bomb children survived"


def test_allocate_50_gb(it):
    it.run("kept = 'still here'")
    r = it.run("x = bytearray(50 * 10**9)")
    assert r.error == "MemoryError" and not r.restarted
    r = it.run("import numpy as np\ny = np.ones(50 * 10**9 // 8)")
    assert r.error and "MemoryError" in r.error
    assert it.run("print(kept)").text == "still here\n"  # contained without losing the session


def test_infinite_loop_is_interrupted(it):
    it.run("kept = 41")
    r = it.run("while True:\n    pass", timeout=1.5)
    assert r.timed_out and not r.restarted and "timed out after 1.5 s" in r.error
    assert it.run("print(kept + 1)").text == "42\n"


def test_loop_that_ignores_interrupts_is_restarted(it):
    r = it.run("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass", timeout=1)
    assert r.timed_out and r.restarted and "restarted" in r.error
    assert it.run("print('fresh')").text == "fresh\n"


def test_kill_parent_and_host(it):
    require(it, "pid_namespace", "unprivileged_uid")
    host = os.getpid()
    r = it.run(f"import os, signal\nfor pid in (os.getppid(), {host}):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
               "    except OSError as e:\n        print(type(e).__name__)")
    assert os.getpid() == host  # still here
    if protected(it, "pid_namespace"):
        assert r.text.split() in (["PermissionError", "ProcessLookupError"],
                                  ["ProcessLookupError", "ProcessLookupError"]), r.text
    # kill(-1) reaches every process the kernel may signal except itself: none under a PID namespace
    # and a dedicated uid; elsewhere it may take the kernel's own group down, which must be reported.
    r = it.run("import os, signal\nos.kill(-1, signal.SIGKILL)")
    assert os.getpid() == host
    assert "ProcessLookupError" in r.error or (r.restarted and "died" in r.error), r.error
    assert it.run("print(2 + 2)").text == "4\n"


def test_100_mb_print(it):
    r = it.run("print('x' * 100_000_000)", timeout=30)
    assert r.truncated and len(r.text) < it.max_output_chars + 200
    assert "characters of output omitted" in r.text and r.text.startswith("xxx")
    r = it.run("for i in range(200_000):\n    print(i)", timeout=30)
    assert r.truncated and r.text.startswith("0\n1\n2\n") and r.text.rstrip().endswith("199999")


def test_file_size_limit(it):
    r = it.run("with open('big.bin', 'wb') as f:\n    f.write(b'0' * (100 << 20))")
    assert r.error and "File too large" in r.error
    assert (it.workdir / "big.bin").stat().st_size <= 64 << 20


def test_environment_and_privileges(it):
    r = it.run("import os\nprint(sorted(k for k in os.environ if 'SECRET' in k or k.startswith('PUYU')))\n"
               "st = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
               "print(st['CapEff'], st['NoNewPrivs'], os.getuid(), os.getcwd())")
    lines = r.text.splitlines()
    assert lines[0] == "[]"
    cap, nnp, uid, cwd = lines[1].split()
    assert cwd == str(it.workdir)
    if protected(it, "read_only_root"):
        assert int(cap, 16) == 0 and nnp == "1"
    if os.geteuid() == 0 and it.sandbox.dedicated_uid:
        assert int(uid) == it.sandbox.uid != 0


# ---- without a kernel: the command line and the fallbacks -------------------------------------------
def test_bwrap_command_line(tmp_path):
    if probe("bwrap") is not None:
        pytest.skip(f"bwrap unavailable: {probe('bwrap')}")
    (tmp_path / "w").mkdir()
    (tmp_path / "r").mkdir()
    sb = Sandbox(tmp_path / "w", tmp_path / "r", SandboxConfig(mode="bwrap"))
    cmd = sb.command(["/bin/true"])
    assert cmd[0] == "bwrap" and "--unshare-net" in cmd and "--unshare-pid" in cmd and "--die-with-parent" in cmd
    joined = " ".join(cmd)
    assert "--ro-bind /usr /usr" in joined and "--ro-bind /etc /etc" in joined
    assert f"--bind {tmp_path / 'w'} {tmp_path / 'w'}" in joined
    assert "--bind / " not in joined and "--ro-bind / /" not in joined  # the root is built, not shared
    env = sb.env()
    assert set(env) >= {"PATH", "HOME", "TMPDIR"} and str(tmp_path / "r") in env["HOME"]
    assert not any(k in env for k in ("SSH_AUTH_SOCK", "VIRTUAL_ENV", "PYTHONPATH"))


def test_config_errors_and_mode_none(tmp_path):
    with pytest.raises(ValueError, match="sandbox mode must be one of"):
        SandboxConfig(mode="docker")
    with pytest.raises(SandboxError, match="has network access"):
        Sandbox(tmp_path, tmp_path, SandboxConfig(mode="none", require_network_isolation=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb = Sandbox(tmp_path, tmp_path, SandboxConfig(mode="none"))
    assert any(issubclass(w.category, SandboxWarning) and "network access" in str(w.message) for w in caught)
    assert sb.protections()["network"] is False and sb.protections()["read_only_root"] is False
    assert sb.command(["/bin/true"])[-1] == "/bin/true"


def test_unshare_fallback_blocks_network_and_protects_host(tmp_path):
    """The mode used where bubblewrap is missing: namespaces, but the host's file system."""
    if probe("unshare") is not None:
        pytest.skip(f"unshare unavailable: {probe('unshare')}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SandboxWarning)
        interp = Interpreter(tmp_path / "s", timeout=5, sandbox=SandboxConfig(mode="unshare"))
    with interp:
        assert interp.sandbox.protections()["network"] and interp.sandbox.protections()["pid_namespace"]
        r = interp.run("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=2)")
        assert r.error and ("unreachable" in r.error or "Refused" in r.error)
        host = os.getpid()
        r = interp.run(f"import os\nprint(os.getpid())\ntry:\n    os.kill({host}, 9)\nexcept OSError as e:\n"
                       "    print(type(e).__name__)")
        assert r.text.split() == ["1", "ProcessLookupError"] and os.getpid() == host
