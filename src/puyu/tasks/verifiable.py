"""Prompts with checkable answers for RL, and their scorers `score(prediction, sample) -> float`.

A sample is a dict: `kind` ("arithmetic", "tool" or "chat"), `messages` (the conversation up to the
assistant's turn), optional `tools`, and what a right answer is (`answer` for arithmetic, `call`
{"name", "arguments"} for a tool call). A prediction is the assistant turn's text as the model wrote
it (action markers included, the closing `<|im_end|>` excluded). Scorers return 1.0 or 0.0.

These are the verifiable rewards of critic-free RL (GRPO/RLOO) and the task scores of the alignment
report; `puyu.eval` tasks expose the same signature (`get_task(name).score(prediction, sample)`).
"""

from __future__ import annotations

import json
import random
import re

from puyu.model.chat_format import ACTION_START
from puyu.model.tool_calls import InterpreterCall, PluginCall, parse_turn
from puyu.tasks.synthetic import ARITH_QUESTIONS, CITIES, GREETINGS, SYSTEM, TOOLS, Problem, _training_problem

KINDS = ("arithmetic", "tool", "chat")
_INT = re.compile(r"-?\d+")


def arithmetic_prompt(p: Problem, rng: random.Random | None = None, system: bool = False) -> dict:
    q = (rng.choice(ARITH_QUESTIONS) if rng else "{p}").format(p=p.prompt, q=p.prompt[:-1])
    msgs = ([{"role": "system", "content": SYSTEM}] if system else []) + [{"role": "user", "content": q}]
    return {"kind": "arithmetic", "messages": msgs, "answer": p.answer, "problem": [p.a, p.op, p.b]}


def tool_prompt(rng: random.Random) -> dict:
    city = rng.choice(CITIES)
    if rng.random() < 0.5:
        q, name = rng.choice(["What is the weather in {c}?", "Weather in {c}?"]), "get_weather"
    else:
        q, name = rng.choice(["What time is it in {c}?", "Local time in {c}?"]), "get_time"
    return {"kind": "tool", "tools": TOOLS, "call": {"name": name, "arguments": {"city": city}},
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q.format(c=city)}]}


def chat_prompt(rng: random.Random) -> dict:
    q, a = rng.choice(GREETINGS)
    return {"kind": "chat", "reference": a,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]}


def rl_prompts(seed, n: int, weights: dict[str, float], exclude: set[Problem], p_big: float = 0.1) -> list[dict]:
    """`n` prompts drawn from `seed` by kind `weights` (arithmetic problems skip `exclude`)."""
    rng = random.Random(f"puyu-rl-prompts-{seed}")
    kinds = [k for k in KINDS if weights.get(k, 0) > 0]
    out = []
    for _ in range(n):
        kind = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
        if kind == "arithmetic":
            out.append(arithmetic_prompt(_training_problem(rng, p_big, exclude), rng))
        elif kind == "tool":
            out.append(tool_prompt(rng))
        else:
            out.append(chat_prompt(rng))
    return out


# ---- scorers -------------------------------------------------------------------------------------
def arithmetic_answer(prediction: str) -> str | None:
    """The number a reply gives: after its last '=' when there is one, else its last integer."""
    text = prediction.split("=")[-1] if "=" in prediction else prediction
    nums = _INT.findall(text)
    if not nums:
        return None
    return nums[0] if "=" in prediction else nums[-1]


def arithmetic_score(prediction: str, sample: dict) -> float:
    """1.0 when the reply's number equals `sample["answer"]` and it calls no tool."""
    if ACTION_START in prediction:
        return 0.0
    got = arithmetic_answer(prediction)
    return float(got is not None and int(got) == int(sample["answer"]))


def parse_plugin_call(prediction: str) -> dict | None:
    """The plugin call of a reply as {"name", "arguments"}, or None when it makes none or the call is
    malformed (invalid JSON, no name, arguments not an object, or no closing `<|action_end|>`). Read with
    the shared parser `puyu.model.tool_calls.parse_turn`, the one the agent and the evaluation scorers
    use: a fenced JSON body, "parameters" or "arguments", and arguments given as a JSON string are all
    accepted. The one deliberate difference from the evaluation: an unclosed call (which the agent still
    executes, and `puyu eval` scores) earns no reward, so RL never teaches the model to drop the marker."""
    turn = parse_turn(prediction)
    action = turn.action
    if not isinstance(action, PluginCall) or not turn.closed:
        return None
    return {"name": action.name, "arguments": action.arguments}


def tool_call_score(prediction: str, sample: dict) -> float:
    """1.0 when the reply makes a well-formed plugin call with the expected name and arguments."""
    call = parse_plugin_call(prediction)
    return float(call is not None and call == sample["call"])


def chat_score(prediction: str, sample: dict) -> float:
    """1.0 for a non-empty reply without an action (chat prompts have no single right answer)."""
    return float(bool(prediction.strip()) and ACTION_START not in prediction)


SCORERS = {"arithmetic": arithmetic_score, "tool": tool_call_score, "chat": chat_score}


def score(prediction: str, sample: dict) -> float:
    """Dispatch on `sample["kind"]`."""
    return SCORERS[sample["kind"]](prediction, sample)


def tool_result(call: dict, seed: int = 0) -> str:
    """The synthetic tools' deterministic answers (the environment of tool rollouts)."""
    rng = random.Random(f"{call.get('name')}-{json.dumps(call.get('arguments'), sort_keys=True)}-{seed}")
    city = str(call.get("arguments", {}).get("city", ""))
    if call.get("name") == "get_weather":
        return json.dumps({"city": city, "temperature_c": rng.randint(-5, 35),
                           "condition": rng.choice(["sunny", "cloudy", "rainy", "windy"])})
    if call.get("name") == "get_time":
        return json.dumps({"city": city, "time": f"{rng.randrange(24):02d}:{rng.randrange(60):02d}"})
    return json.dumps({"error": f"unknown tool {call.get('name')!r}"})


# ---- interpreter calls (evaluation only) ---------------------------------------------------------
def interpreter_prompt(rng: random.Random) -> dict:
    """A computation the SFT data teaches to hand to the interpreter; `operands` must appear in the code."""
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randrange(100, 10000), rng.randrange(100, 10000)
        q, ops = f"Use Python to compute {a}*{b}.", [str(a), str(b)]
    elif kind == 1:
        n = rng.randrange(5, 40)
        q, ops = f"What is the sum of the integers from 1 to {n}? Use code.", [str(n + 1)]
    else:
        n = rng.randrange(3, 15)
        q, ops = f"Run code to find {n} factorial.", [str(n)]
    return {"kind": "interpreter", "interpreter": True, "operands": ops,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]}


def interpreter_call_score(prediction: str, sample: dict) -> float:
    """1.0 when the reply opens an interpreter action whose code contains every expected operand."""
    action = parse_turn(prediction).action
    if not isinstance(action, InterpreterCall):
        return 0.0
    nums = set(_INT.findall(action.code))
    return float(all(op in nums for op in sample["operands"]))


SCORERS["interpreter"] = interpreter_call_score
