"""Wilson intervals against SciPy's, pass@k against the definition by enumeration, maj@k ties."""

from __future__ import annotations

import itertools
import math

import pytest

from puyu.eval.stats import majority, pass_at_k, wilson


@pytest.mark.parametrize("s,n", [(0, 1), (1, 1), (3, 10), (0, 50), (50, 50), (17, 200), (999, 1000)])
def test_wilson_matches_scipy(s, n):
    stats = pytest.importorskip("scipy.stats")
    ci = stats.binomtest(s, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson(s, n)
    assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 3, 6), (8, 1, 4), (10, 9, 2)])
def test_pass_at_k_is_the_chance_that_k_draws_contain_a_correct_one(n, c, k):
    outcomes = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    expect = sum(any(outcomes[i] for i in sub) for sub in subsets) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expect)


def test_majority_first_seen_wins_a_tie_and_skips_empty():
    assert majority(["3", "4", "4", "3"]) == "3"
    assert majority([None, "", "5", None]) == "5"
    assert majority([None, ""]) is None
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_mcnemar_needs_paired_items():
    from puyu.eval.stats import mcnemar

    with pytest.raises(ValueError, match="same items"):
        mcnemar([True, False], [True])
    assert mcnemar([True, False, False], [False, True, True]) == {"a_only": 1, "b_only": 2, "p_value": 1.0}
