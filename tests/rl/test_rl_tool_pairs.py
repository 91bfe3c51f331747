"""The reward model's programmatic tool pairs (`puyu.rl.judge.tool_pairs`): the right call against the same
call broken one way, checked by the verifiable tool scorer (an independent rule), and their use through
`rm.tool_pairs` in `puyu train rm`."""

from __future__ import annotations

import json

import pytest

from puyu.errors import ConfigError
from puyu.model.tool_calls import PluginCall, parse_turn
from puyu.rl.judge import TOOL_FAULT_ORDER, TOOL_FAULTS, PairError, pair_domain, pair_ids, tool_pairs
from puyu.tasks import verifiable as V


def _call(text: str) -> PluginCall:
    action = parse_turn(text).action
    assert isinstance(action, PluginCall), text
    return action


def test_chosen_is_the_right_call_and_rejected_breaks_one_thing(monkeypatch):
    asked = []  # the questions as the verifiable task drew them, with their expected calls

    def recording(rng):
        asked.append(real(rng))
        return asked[-1]

    real = V.tool_prompt
    monkeypatch.setattr(V, "tool_prompt", recording)
    pairs = tool_pairs(80, seed=3, faults=TOOL_FAULTS)
    assert len(pairs) == 80 == len(asked)
    seen = set()
    for i, (rec, sample) in enumerate(zip(pairs, asked)):
        fault = TOOL_FAULTS[i % len(TOOL_FAULTS)]
        seen.add(fault)
        assert rec["messages"] == sample["messages"]
        right = _call(rec["chosen"])
        city = right.arguments["city"]
        assert (right.name, right.arguments) == (sample["call"]["name"], sample["call"]["arguments"])
        assert city in sample["messages"][-1]["content"]  # the call answers the question asked
        assert V.tool_call_score(rec["chosen"], sample) == 1.0
        assert V.tool_call_score(rec["rejected"], sample) == 0.0
        assert rec["tools"] == V.TOOLS and pair_domain(rec) == "tool" and rec["source"] == "programmatic"
        body = rec["rejected"].split("\n", 1)[1]
        if fault == "json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(body.split("<|action_end|>")[0])
        else:
            wrong = json.loads(body.split("<|action_end|>")[0])
            if fault == "city":
                assert wrong["name"] == right.name and wrong["parameters"]["city"] != city
                assert wrong["parameters"]["city"] in V.CITIES
            elif fault == "function":
                assert {wrong["name"], right.name} == {"get_weather", "get_time"}
                assert wrong["parameters"]["city"] == city
            else:
                assert wrong["name"] in {"get_news", "get_stock"} and wrong["parameters"]["city"] == city
    assert seen == set(TOOL_FAULTS)
    assert all(r["prompt_id"] == "tool:" + r["messages"][-1]["content"] for r in pairs)  # split by question


def test_default_order_is_mostly_a_wrong_city():
    pairs = tool_pairs(40, seed=0)
    assert TOOL_FAULT_ORDER.count("city") == 3 and set(TOOL_FAULT_ORDER) <= set(TOOL_FAULTS)
    cities = [json.loads(r["rejected"].split("\n", 1)[1].split("<|action_end|>")[0])["parameters"]["city"]
              != json.loads(r["chosen"].split("\n", 1)[1].split("<|action_end|>")[0])["parameters"]["city"]
              for r in pairs]
    assert sum(cities) == 30


def test_seeded_faults_chosen_and_bad_arguments():
    assert tool_pairs(20, seed=1) == tool_pairs(20, seed=1)
    assert tool_pairs(20, seed=1) != tool_pairs(20, seed=2)
    only = tool_pairs(10, seed=0, faults=("function",))
    assert all(json.loads(r["rejected"].split("\n", 1)[1].split("<|action_end|>")[0])["parameters"] ==
               json.loads(r["chosen"].split("\n", 1)[1].split("<|action_end|>")[0])["parameters"] for r in only)
    with pytest.raises(PairError, match="n must be"):
        tool_pairs(-1, seed=0)
    with pytest.raises(PairError, match="faults must be"):
        tool_pairs(3, seed=0, faults=("city", "typo"))
    with pytest.raises(PairError, match="faults must be"):
        tool_pairs(3, seed=0, faults=())
    with pytest.raises(PairError, match="a tuple of names"):
        tool_pairs(3, seed=0, faults="json")


def test_reward_inputs_share_the_prompt_and_end_with_the_reward_token(tiny_tokenizer):
    rec = tool_pairs(1, seed=4)[0]
    c, r, n_head = pair_ids(tiny_tokenizer, rec, reward_token_id=3)
    assert c[:n_head] == r[:n_head] and c[-1] == r[-1] == 3 and c != r


def test_run_rm_adds_the_programmatic_pairs(tiny_checkpoint, tmp_path, one_thread):
    from puyu.rl.judge import arithmetic_pairs, read_pairs, write_pairs
    from puyu.rl.recipe import AlignRecipe
    from puyu.rl.rm_train import run_rm
    from puyu.train.recipe import from_dict

    r = from_dict(AlignRecipe, {
        "out_dir": str(tmp_path / "out"), "threads": 1, "progress": False, "policy": {"init": str(tiny_checkpoint)},
        "rm": {"tool_pairs": 40, "arithmetic_pairs": 4, "held_out": 0.25, "batch_size": 4, "epochs": 3.0}})
    rep = run_rm(r)
    assert rep["sources"] == {"tool/programmatic": 40, "arithmetic/programmatic": 4}
    assert rep["train"] + rep["held_out"] == 44 and rep["held_out"] > 0
    assert rep["steps"] == -(-rep["train"] // 4)  # programmatic pairs pass once, whatever rm.epochs says
    written = read_pairs(tmp_path / "out" / "rm" / "pairs.jsonl")
    qs = {split: {p["prompt_id"] for p in written if p["split"] == split} for split in ("train", "held_out")}
    assert qs["held_out"] and not qs["train"] & qs["held_out"]  # no held-out question was trained on

    # file pairs (even ones marked "programmatic") pass rm.epochs times, the drawn ones once
    write_pairs(tmp_path / "file.jsonl", arithmetic_pairs(12, seed=5))
    r = from_dict(AlignRecipe, {
        "out_dir": str(tmp_path / "mix"), "threads": 1, "progress": False, "policy": {"init": str(tiny_checkpoint)},
        "rm": {"pairs": [str(tmp_path / "file.jsonl")], "tool_pairs": 8, "held_out": 0.25, "batch_size": 4,
               "epochs": 3.0}})
    rep = run_rm(r)
    written = read_pairs(tmp_path / "mix" / "rm" / "pairs.jsonl")
    n_file = sum(p["split"] == "train" and p["prompt_id"].startswith("arith:") for p in written)
    n_drawn = sum(p["split"] == "train" and p["prompt_id"].startswith("tool:") for p in written)
    assert n_file and n_drawn and n_file + n_drawn == rep["train"]
    assert rep["steps"] == -(-(3 * n_file + n_drawn) // 4)
    with pytest.raises(ConfigError, match="rm.tool_pairs and rm.arithmetic_pairs must be >= 0"):
        run_rm(from_dict(AlignRecipe, {"out_dir": str(tmp_path / "o2"), "policy": {"init": str(tiny_checkpoint)},
                                       "rm": {"tool_pairs": -1}}))
