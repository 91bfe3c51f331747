"""The paired test behind every "better" / "not worse" claim of the nano alignment report."""

from __future__ import annotations

import math

import pytest

from puyu.rl.nano_stage import _verdict, mcnemar


def test_mcnemar_exact_hand_values():
    t = mcnemar([True, True, False, False, True], [True, False, True, True, True])
    assert (t["a_only"], t["b_only"]) == (1, 2) and t["p_value"] == pytest.approx(1.0)
    t = mcnemar([False] * 10, [True] * 10)
    assert t["b_only"] == 10 and t["p_value"] == pytest.approx(2 / 1024)
    assert mcnemar([True] * 5, [True] * 5)["p_value"] == 1.0  # no discordant pairs
    # against the two-sided binomial test (scipy) on a lopsided case
    scipy_stats = pytest.importorskip("scipy.stats")
    a = [True] * 30 + [False] * 12 + [True] * 3
    b = [True] * 30 + [True] * 12 + [False] * 3
    t = mcnemar(a, b)
    assert t["p_value"] == pytest.approx(scipy_stats.binomtest(3, 15, 0.5).pvalue)
    assert _verdict(t, 33 / 45, 42 / 45).startswith("better")
    assert _verdict(mcnemar(b, a), 42 / 45, 33 / 45).startswith("worse")
    assert math.isclose(sum(math.comb(15, i) for i in range(4)) * 2 / 2**15, t["p_value"])
