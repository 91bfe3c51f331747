"""Accuracy statistics for the report: Wilson intervals, unbiased pass@k, maj@k.

- Wilson score interval (Wilson 1927, "Probable inference, the law of succession, and statistical
  inference", JASA 22:209): for s successes in n trials at z = 1.959964 (95%), centre
  (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n). Unlike the normal
  interval it stays inside [0, 1] and is not degenerate at p = 0 or 1. Fractional scores (needle
  multi-retrieval) enter as their sum, which is what the interval of a mean of Bernoulli-like scores uses.
- pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1): with n samples
  of which c are correct, pass@k = 1 - C(n-c, k) / C(n, k), computed as a product to avoid overflow.
- maj@k: the most common extracted answer among k samples (ties broken by first occurrence) is scored.
- Exact McNemar test (McNemar 1947, "Note on the sampling error of the difference between correlated
  proportions or percentages", Psychometrika 12:153): two systems scored on the same items; only the
  discordant items count, and under "no difference" each is equally likely to favour either system, so
  the two-sided p is the binomial(n01 + n10, 1/2) tail at the smaller count, doubled and capped at 1.
"""

from __future__ import annotations

import math
from collections import Counter

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval (lo, hi) for `successes` out of `n` (n = 0 -> (0, 1))."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `c` correct among `n` samples (Chen et al. 2021)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if k < 1 or k > n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority(answers: list[str | None]) -> str | None:
    """The most common non-empty answer (first seen wins a tie); None when there is none."""
    counts = Counter(a for a in answers if a not in (None, ""))
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a not in (None, "") and counts[a] == best)


def accuracy(scores: list[float]) -> dict:
    """{"mean", "n", "ci95": [lo, hi]} of per-sample scores in [0, 1]."""
    n = len(scores)
    s = float(sum(scores))
    lo, hi = wilson(s, n)
    return {"mean": s / n if n else 0.0, "n": n, "ci95": [lo, hi]}


def mcnemar(a: list[bool], b: list[bool]) -> dict:
    """Exact two-sided McNemar test for paired outcomes of systems A and B on the same items:
    n01 = items A got wrong and B right, n10 = the reverse; p = P(Binomial(n01 + n10, 1/2) as extreme)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same items: {len(a)} vs {len(b)}")
    n01 = sum((not x) and y for x, y in zip(a, b))
    n10 = sum(x and (not y) for x, y in zip(a, b))
    n = n01 + n10
    k = min(n01, n10)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"a_only": n10, "b_only": n01, "p_value": p}
