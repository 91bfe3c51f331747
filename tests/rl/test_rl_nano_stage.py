"""The paired test behind every "better" / "not worse" claim of the nano alignment report."""

from __future__ import annotations

import math

import pytest

from puyu.eval.stats import mcnemar
from puyu.rl.nano_stage import _verdict


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


@pytest.mark.slow
def test_compare_goes_through_puyu_eval_and_pairs_the_same_items(tiny_checkpoint, tiny_tokenizer, tmp_path, one_thread):
    """A model compared with itself: every item concordant (p = 1, no growth), and the predictions are
    `puyu eval`'s files, one line per held-out problem and tool question."""
    import json

    from puyu.rl.nano_stage import compare

    rep = compare(tiny_checkpoint, tiny_checkpoint, tiny_tokenizer, 0, (6, 3), 4, 3, 8, tmp_path, progress=False)
    sets = ("chat_arithmetic", "tool_calls", "tool_calls_held_out_phrasings", "interpreter_calls")
    assert set(rep["table"]) == {f"{k}/{m}" for k in sets for m in ("correct", "ended")}
    n = {"chat_arithmetic": 6, "tool_calls": 4, "tool_calls_held_out_phrasings": 4, "interpreter_calls": 3}
    for k, v in rep["table"].items():
        assert v["n"] == n[k.split("/")[0]] and v["a_only"] == v["b_only"] == 0 and v["p_value"] == 1.0
        assert v["sft"] == v["rl"]
    assert rep["length"]["growth"] == 0.0
    rows = [json.loads(line) for line in (tmp_path / "rl" / "arithmetic" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["prompt"].endswith("<|im_start|>assistant\n") for r in rows)
    tools = [json.loads(line) for line in (tmp_path / "sft" / "tools" / "predictions.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in
            (tmp_path / "sft" / "held_out_phrasings" / "tools" / "predictions.jsonl").read_text().splitlines()]
    assert len(tools) == len(held) == 4  # the held-out phrasings have their own folder: nothing overwritten
    assert {r["prompt"] for r in held}.isdisjoint({r["prompt"] for r in tools})  # other phrasings
