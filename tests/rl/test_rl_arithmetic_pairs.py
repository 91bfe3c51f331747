"""The reward model's programmatic arithmetic pairs (`puyu.rl.judge.arithmetic_pairs`): right `a+b=c`
against a near miss of the same question, checked by the verifiable scorer (an independent rule)."""

from __future__ import annotations

import re

import pytest

from puyu.rl.judge import OFF_BY, PairError, arithmetic_pairs, pair_domain, pair_ids
from puyu.rl.rm_train import split_pairs
from puyu.tasks import verifiable as V
from puyu.tasks.synthetic import Problem


def _problem(rec) -> Problem:
    m = re.fullmatch(r"arith:(\d+)([+-])(\d+)", rec["prompt_id"])
    return Problem(int(m[1]), m[2], int(m[3]))


def _sample(rec) -> dict:
    return {"kind": "arithmetic", "answer": _problem(rec).answer}


def test_chosen_is_right_and_rejected_is_a_near_miss():
    pairs = arithmetic_pairs(300, seed=3)
    assert len(pairs) == 300
    offsets = set()
    for rec in pairs:
        s = _sample(rec)
        assert V.arithmetic_score(rec["chosen"], s) == 1.0
        assert V.arithmetic_score(rec["rejected"], s) == 0.0
        # the two replies differ only after the '=': the same question, another answer
        head_c, ans_c = rec["chosen"].rsplit("=", 1)
        head_r, ans_r = rec["rejected"].rsplit("=", 1)
        assert head_c == head_r
        offsets.add(int(ans_r) - int(ans_c))
        assert rec["system"] == "arithmetic" and pair_domain(rec) == "arithmetic"
        assert rec["source"] == "programmatic"
        # the question asks the same problem as the replies answer
        assert head_c.replace(" ", "") in rec["messages"][-1]["content"].replace(" ", "") + "="
    assert offsets == set(OFF_BY)  # every near miss is drawn


def test_seeded_and_exclude_respected():
    assert arithmetic_pairs(50, seed=1) == arithmetic_pairs(50, seed=1)
    assert arithmetic_pairs(50, seed=1) != arithmetic_pairs(50, seed=2)
    banned = {_problem(r) for r in arithmetic_pairs(200, seed=1)}
    again = arithmetic_pairs(200, seed=1, exclude=banned)
    assert not {_problem(r) for r in again} & banned


def test_held_out_problems_in_turn_and_splits_keep_a_problem_together():
    probs = [Problem(5, "+", 7), Problem(90, "-", 95), Problem(0, "+", 0)]
    pairs = arithmetic_pairs(6, seed=0, problems=probs)
    assert [r["prompt_id"] for r in pairs] == ["arith:5+7", "arith:90-95", "arith:0+0"] * 2
    assert [V.arithmetic_score(r["chosen"], {"answer": p.answer}) for r, p in zip(pairs, probs * 2)] == [1.0] * 6
    train, held = split_pairs(pairs, 0.34, seed=0)
    assert {r["prompt_id"] for r in train}.isdisjoint({r["prompt_id"] for r in held})


def test_bad_arguments():
    with pytest.raises(PairError, match="n must be"):
        arithmetic_pairs(-1, seed=0)
    with pytest.raises(PairError, match="non-zero"):
        arithmetic_pairs(3, seed=0, offsets=(0, 1))
    with pytest.raises(PairError, match="non-zero"):
        arithmetic_pairs(3, seed=0, offsets=())


def test_reward_inputs_differ_only_in_the_answer(tiny_tokenizer):
    rec = arithmetic_pairs(1, seed=4, problems=[Problem(12, "+", 34)])[0]
    c, r, n_head = pair_ids(tiny_tokenizer, rec, reward_token_id=3)
    assert c[:n_head] == r[:n_head] and c[-1] == r[-1] == 3
    assert c != r
