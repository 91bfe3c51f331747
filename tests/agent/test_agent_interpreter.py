"""The code interpreter on a real kernel: state, errors, crashes and restarts, figures, data analysis,
output limits, and cleanup of the session (closed or idle)."""

from __future__ import annotations

import os
import time

import pytest

from puyu.agent.interpreter import Interpreter, InterpreterError, RunResult, _Output, read_png


@pytest.fixture(scope="module")
def it():
    with Interpreter(timeout=10, interrupt_grace=2) as interp:
        yield interp


def test_state_persists_and_outputs_are_collected(it):
    assert it.run("x = 20\ny = x + 1").text == ""
    r = it.run("import sys\nprint('out'); print('err', file=sys.stderr)\nx + y")
    assert r.error is None and r.text == "out\nerr\n41\n"
    assert it.run("x * 2").text == "40\n"  # variables from earlier calls are still there


def test_error_is_traceback_text_and_one_line(it):
    r = it.run("def f(n):\n    return 10 / n\nf(0)")
    assert r.error == "ZeroDivisionError: division by zero"
    assert "Traceback" in r.text and "return 10 / n" in r.text and "\x1b[" not in r.text  # no ANSI colours
    assert it.run("f(5)").text == "2.0\n"  # the kernel survives user errors
    r = it.run("def broken(:\n    pass")
    assert r.error.startswith("SyntaxError")
    r = it.run("input('name? ')")  # no stdin: an error, not a hang
    assert r.error and "StdinNotImplementedError" in r.error


def test_for_model_text():
    assert RunResult(text="5\n").for_model() == "5"
    assert RunResult().for_model() == "(no output)"
    r = RunResult(text="", images=["/s/figure_001.png"], error="timed out after 2 s")
    assert r.for_model() == "![image](figure_001.png)\nError: timed out after 2 s"


def test_output_keeps_head_and_tail():
    o = _Output(30)
    for i in range(1000):
        o.add(f"{i}\n")
    text = o.text()
    assert text.startswith("0\n1\n2\n") and text.endswith("998\n999\n")
    assert f"[... {o.dropped} characters of output omitted ...]" in text and o.dropped > 3000


def test_crash_is_restarted_and_reported(it):
    it.run("precious = 1")
    r = it.run("import os\nos._exit(3)")
    assert r.restarted and "kernel died" in r.error and "exit status 3" in r.error
    r = it.run("precious")
    assert r.error == "NameError: name 'precious' is not defined"  # fresh kernel, said so above
    r = it.run("import ctypes\nctypes.string_at(0)")  # a segfault in C code
    assert r.restarted and "died" in r.error
    assert it.run("print('back')").text == "back\n"


def test_kernel_killed_between_calls_is_noticed(it):
    it.run("z = 1")
    proc = it._res["proc"]
    os.killpg(proc.pid, 9)
    proc.wait(timeout=10)
    r = it.run("print('hello')")
    assert r.text == "hello\n" and r.restarted and "had died" in r.error


def test_figures_are_png_files(it):
    r = it.run("import matplotlib.pyplot as plt\nfor k in range(2):\n    plt.figure()\n    plt.plot([1, 2, 3])\n"
               "print('drawn')")
    assert r.text == "drawn\n" and len(r.images) == 2
    for p in r.images:
        assert os.path.dirname(p) == str(it.workdir) and os.path.basename(p).startswith("figure_")
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "![image](figure_" in r.for_model()


def test_planted_figure_name_is_not_followed(it, tmp_path):
    """The kernel may plant `figure_NNN.png` as a link to a host file; saving must not write through it."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    n = it._figure_no + 1
    it.run(f"import os\nos.symlink({str(victim)!r}, 'figure_{n:03d}.png')")
    r = it.run("import matplotlib.pyplot as plt\nplt.plot([0, 1])")
    assert victim.read_text() == "keep me"
    assert len(r.images) == 1 and not r.images[0].endswith(f"figure_{n:03d}.png")
    # Sending an image on: a figure swapped for a link to a host file after saving is refused.
    assert read_png(r.images[0], it.workdir).startswith(b"\x89PNG")
    it.run(f"import os\nos.remove({r.images[0]!r})\nos.symlink({str(victim)!r}, {r.images[0]!r})")
    assert read_png(r.images[0], it.workdir) is None
    it.run("open('fake.png', 'w').write('not a png')")
    assert read_png(it.workdir / "fake.png", it.workdir) is None


def test_csv_is_loaded_summarised_and_charted(it):
    rows = ["city,month,rain_mm"] + [f"{c},{m},{(i * 7 + m * 3) % 50 + 10}"
                                     for i, c in enumerate(["Paris", "Oslo", "Lima"]) for m in range(1, 13)]
    (it.workdir / "rain.csv").write_text("\n".join(rows) + "\n")
    r = it.run("import pandas as pd\nimport matplotlib.pyplot as plt\n"
               "df = pd.read_csv('rain.csv')\n"
               "summary = df.groupby('city')['rain_mm'].agg(['mean', 'max'])\n"
               "print(len(df), list(df.columns))\nprint(summary.round(2).to_string())\n"
               "summary['mean'].plot(kind='bar', title='Mean monthly rain')\nplt.savefig('rain_chart.png')")
    assert r.error is None, r.text
    assert "36 ['city', 'month', 'rain_mm']" in r.text and "Lima" in r.text and "Oslo" in r.text
    import pandas as pd

    expected = pd.read_csv(it.workdir / "rain.csv").groupby("city")["rain_mm"].mean().round(2)
    assert f"{expected['Paris']}" in r.text
    from matplotlib.image import imread

    assert len(r.images) == 1  # the inline figure comes back to the caller ...
    for png in (r.images[0], it.workdir / "rain_chart.png"):  # ... and the one the code saved exists
        img = imread(png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_excel_file_is_read(it):
    import pandas as pd

    pd.DataFrame({"item": ["a", "b"], "qty": [3, 4]}).to_excel(it.workdir / "stock.xlsx", index=False)
    r = it.run("import pandas as pd\nprint(pd.read_excel('stock.xlsx')['qty'].sum())")
    assert r.text == "7\n", r.text


def test_owned_workdir_is_removed_and_kernel_stopped():
    interp = Interpreter(timeout=5)
    r = interp.run("print(1)")
    assert r.text == "1\n" and r.restarted is False
    proc, workdir, runtime = interp._res["proc"], interp.workdir, interp.runtime_dir
    interp.close()
    assert proc.poll() is not None and not workdir.exists() and not runtime.exists()
    with pytest.raises(InterpreterError, match="closed"):
        interp.run("print(2)")
    interp.close()  # idempotent


def test_caller_workdir_is_kept_and_given_back(tmp_path):
    work = tmp_path / "session"
    work.mkdir()
    owner = work.stat().st_uid
    with Interpreter(work, timeout=5) as interp:
        interp.run("open('result.txt', 'w').write('42')")
    assert (work / "result.txt").read_text() == "42"
    assert work.stat().st_uid == owner and (work / "result.txt").stat().st_uid == owner


def test_idle_session_is_closed():
    interp = Interpreter(timeout=5, idle_timeout=1.0)
    interp.run("a = 1")
    proc, workdir = interp._res["proc"], interp.workdir
    deadline = time.monotonic() + 15
    while not interp.closed and time.monotonic() < deadline:
        time.sleep(0.1)
    assert interp.closed and proc.poll() is not None and not workdir.exists()
    with pytest.raises(InterpreterError, match="idle"):
        interp.run("a")
