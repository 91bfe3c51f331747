"""The programmatic judge, pair files and the verifiable scorers."""

from __future__ import annotations

import json
import random

import pytest

from puyu.rl.judge import PairError, Reply, build_pairs, perturb, prefer, read_pairs, task_score
from puyu.tasks import verifiable as V
from puyu.tasks.synthetic import Problem

ARITH = V.arithmetic_prompt(Problem(12, "+", 34))
TOOL = V.tool_prompt(random.Random(1))
_NAME, _CITY = TOOL["call"]["name"], TOOL["call"]["arguments"]["city"]
CALL = f'<|action_start|><|plugin|>\n{{"name": "{_NAME}", "parameters": {{"city": "{_CITY}"}}}}<|action_end|>'


def test_scorers():
    assert V.arithmetic_score("12+34=46", ARITH) == 1.0
    assert V.arithmetic_score("46", ARITH) == 1.0
    assert V.arithmetic_score("12+34=47", ARITH) == 0.0
    assert V.arithmetic_score("The answer is 46.", ARITH) == 1.0
    assert V.arithmetic_score("", ARITH) == 0.0
    assert V.tool_call_score(CALL, TOOL) == 1.0
    assert V.tool_call_score(CALL.replace('"parameters": {', '"parameters": '), TOOL) == 0.0
    assert V.tool_call_score(CALL.replace("<|action_end|>", ""), TOOL) == 0.0
    assert V.tool_call_score(CALL.replace('"parameters"', '"arguments"'), TOOL) == 1.0
    assert V.score("12-40=-28", V.arithmetic_prompt(Problem(12, "-", 40))) == 1.0


def test_judge_rules_in_order():
    right, wrong = Reply("12+34=46", True, 6), Reply("12+34=47", True, 6)
    assert prefer(ARITH, right, wrong) == ("arithmetic", 0)
    assert prefer(ARITH, wrong, right) == ("arithmetic", 1)
    assert prefer(ARITH, Reply("12+34=46", False), right) == ("format", 1)  # both correct: ending decides
    assert prefer(ARITH, Reply("46", True, 2), right) == ("concise", 0)
    assert prefer(ARITH, right, Reply("12+34=46", True, 6)) is None
    assert prefer(TOOL, Reply(CALL), Reply(CALL.replace("<|action_end|>", ""))) == ("tool", 0)
    assert task_score(ARITH, Reply("12+34=46", False)) == 0.0


def test_perturbations_are_worse_by_the_judge():
    rng = random.Random(0)
    for sample, good in ((ARITH, Reply("12+34=46", True, 6)), (TOOL, Reply(CALL, True))):
        for _ in range(20):
            out = perturb(sample, good, rng)
            if out is None:
                continue
            domain, bad = out
            verdict = prefer(sample, good, bad)
            assert verdict == (domain, 0), (domain, bad)


def test_build_pairs_prefers_policy_samples_then_perturbs():
    reps = [[Reply("12+34=47", True, 6), Reply("12+34=46", True, 6)], [Reply("12+34=46", True, 6)] * 2]
    pairs = build_pairs([ARITH, ARITH], reps, seed=0)
    assert pairs[0]["source"] == "policy" and pairs[0]["chosen"] == "12+34=46"
    assert pairs[1]["source"] == "perturbed"


def test_pair_file_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "chosen": "a"}) + "\n")
    with pytest.raises(PairError, match=r"p.jsonl:1: missing key 'rejected'"):
        read_pairs(f)
    f.write_text("{not json\n")
    with pytest.raises(PairError, match="not valid JSON"):
        read_pairs(f)
    f.write_text(json.dumps({"messages": [], "chosen": 3, "rejected": "b"}) + "\n")
    with pytest.raises(PairError, match="chosen"):
        read_pairs(f)
    ok = {"system": "format", "messages": [{"role": "user", "content": "hi"}], "chosen": "hello",
          "rejected": {"content": "hello hello", "end": False}}
    f.write_text(json.dumps(ok) + "\n")
    assert read_pairs(f)[0]["rejected"]["end"] is False


def test_reference_pairs_when_every_reply_fails():
    from puyu.rl.judge import reference_reply

    wrong = [[Reply("12+34=47", True, 6), Reply("12+34=48", False, 6)]]
    pairs = build_pairs([ARITH], wrong, seed=0)
    assert pairs[0]["source"] == "reference" and pairs[0]["domain"] == "arithmetic"
    assert pairs[0]["chosen"] == "12+34=46"
    ref = reference_reply(TOOL)
    assert V.tool_call_score(ref.content, TOOL) == 1.0
    assert build_pairs([ARITH], wrong, seed=0, reference=False)[0]["source"] != "reference"


def test_domain_pairs_one_per_domain_each_won_by_its_rule():
    from puyu.rl.judge import _reply, build_domain_pairs, domain_verdict
    from puyu.rl.rm_train import split_pairs

    samples = [ARITH, ARITH, ARITH, TOOL]
    reps = [[Reply("12+34=47", True, 6), Reply("12+34=46", True, 6), Reply("12+34=46 and more", False, 9)],
            [Reply("12+34=46", True, 6)] * 3,  # all right and alike: arithmetic and concise by perturbation
            [Reply("12+34=45", True, 6), Reply("45", True, 2)],  # all wrong: the reference pair
            [Reply(CALL, True, 20), Reply(CALL.replace("Tokyo", "Paris"), True, 20)]]
    pairs = build_domain_pairs(samples, reps, seed=0)
    got = [(p["prompt_id"], p["domain"], p["source"]) for p in pairs]
    assert got == [("0", "arithmetic", "policy"), ("0", "format", "policy"), ("0", "concise", "perturbed"),
                   ("1", "arithmetic", "perturbed"), ("1", "format", "perturbed"), ("1", "concise", "perturbed"),
                   ("2", "arithmetic", "reference"), ("2", "format", "perturbed"), ("2", "concise", "perturbed"),
                   ("3", "tool", "policy"), ("3", "format", "perturbed")]
    by_prompt = {"0": ARITH, "1": ARITH, "2": ARITH, "3": TOOL}
    for p in pairs:  # the chosen reply wins under the pair's own domain rule
        c, r = _reply(p["chosen"], "c"), _reply(p["rejected"], "r")
        c.n_tokens, r.n_tokens = None, None
        assert domain_verdict(by_prompt[p["prompt_id"]], c, r, p["domain"]) == 0, p
    train, held = split_pairs(pairs, 0.5, seed=0)  # a prompt's pairs stay on one side
    assert {p["prompt_id"] for p in train}.isdisjoint({p["prompt_id"] for p in held}) and len(held) > 0
