"""RL prompt sets (`puyu.tasks.verifiable.rl_prompts`) and the rewards GRPO reads from them: tool
questions in the SFT data's phrasings, interpreter questions scored on the call's operands."""

from __future__ import annotations

import re

import pytest

from puyu.model.chat_format import ACTION_END, ACTION_START, INTERPRETER, plugin_action
from puyu.tasks import verifiable as V
from puyu.tasks.synthetic import TOOL_QUESTIONS


def _fenced(code: str) -> str:
    return f"{ACTION_START}{INTERPRETER}\n```python\n{code}\n```{ACTION_END}"


def test_kinds_follow_the_weights():
    ps = V.rl_prompts(0, 400, {"tool": 1.0, "interpreter": 1.0}, set())
    kinds = [p["kind"] for p in ps]
    assert set(kinds) == {"tool", "interpreter"}
    assert 150 < kinds.count("interpreter") < 250
    assert V.rl_prompts(0, 40, {"interpreter": 1.0}, set()) == V.rl_prompts(0, 40, {"interpreter": 1.0}, set())


def test_tool_prompts_use_training_phrasings_only():
    train = {q for qs in TOOL_QUESTIONS.values() for q in qs[0]}
    held = {q for qs in TOOL_QUESTIONS.values() for q in qs[1]}
    seen = set()
    for p in V.rl_prompts(1, 300, {"tool": 1.0}, set()):
        city = p["call"]["arguments"]["city"]
        q = p["messages"][-1]["content"]
        template = q.replace(city, "{c}")
        assert template in TOOL_QUESTIONS[p["call"]["name"]][0]
        assert template not in held
        seen.add(template)
        # the expected call scores 1, the other tool 0
        assert V.score(plugin_action(p["call"]["name"], p["call"]["arguments"]), p) == 1.0
        other = "get_time" if p["call"]["name"] == "get_weather" else "get_weather"
        assert V.score(plugin_action(other, p["call"]["arguments"]), p) == 0.0
    assert seen == train  # every training phrasing is drawn


def test_interpreter_prompts_reward_the_call_with_the_operands():
    for p in V.rl_prompts(2, 60, {"interpreter": 1.0}, set()):
        assert p["interpreter"] is True and p["operands"]
        q = p["messages"][-1]["content"]
        if "*" in q:  # Use Python to compute a*b.
            a, b = re.search(r"(\d+)\*(\d+)", q).groups()
            right = _fenced(f"print({a}*{b})")
        elif "factorial" in q:
            right = _fenced(f"import math\nprint(math.factorial({p['operands'][0]}))")
        else:  # sum of 1..n: range(1, n + 1)
            right = _fenced(f"print(sum(range(1, {p['operands'][0]})))")
        assert V.score(right, p) == 1.0, (q, right)
        assert V.score(right.replace(p["operands"][0], p["operands"][0] + "1"), p) == 0.0
        assert V.score(f"The answer is {p['operands'][0]}.", p) == 0.0  # no call: no reward


def test_unknown_kind_and_no_weight_are_refused():
    with pytest.raises(ValueError, match="unknown prompt kinds"):
        V.rl_prompts(0, 3, {"poetry": 1.0}, set())
    with pytest.raises(ValueError, match="positive weight"):
        V.rl_prompts(0, 3, {"tool": 0.0}, set())

