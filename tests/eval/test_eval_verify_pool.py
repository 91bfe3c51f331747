"""The math-verify pool works where multiprocessing's spawn and an inherited pool did not: from a plain
script without an `if __name__ == "__main__"` guard, and in forked children after the parent used it."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor

import pytest

pytest.importorskip("math_verify")

RECORD = {"problem": "p", "solution": "so \\boxed{\\frac12}"}


def test_math_score_from_a_script_without_a_main_guard(tmp_path):
    script = tmp_path / "score.py"
    script.write_text(textwrap.dedent("""
        from puyu.eval import get_task
        t = get_task("math")
        print(t.score("\\\\boxed{0.5}", {"problem": "p", "solution": "\\\\boxed{\\\\frac12}"}),
              t.score("\\\\boxed{3}", {"problem": "p", "solution": "\\\\boxed{2}"}))
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["1.0", "0.0"]


def _score_in_child(pred: str) -> tuple[int, float]:
    from puyu.eval import get_task

    return os.getpid(), get_task("math").score(pred, RECORD)


def test_forked_children_after_the_parent_used_the_pool_make_their_own():
    from puyu.eval import get_task
    from puyu.eval.verify_pool import default_pool

    assert get_task("math").score("\\boxed{0.5}", RECORD) == 1.0  # the parent's pool now has workers
    parent_pool = default_pool()
    with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as ex:
        got = list(ex.map(_score_in_child, ["\\boxed{1/2}", "\\boxed{3}", "\\boxed{\\dfrac{1}{2}}"], timeout=120))
    assert [s for _, s in got] == [1.0, 0.0, 1.0]
    assert default_pool() is parent_pool and parent_pool.verify("2", "2") is True  # the parent's still works
