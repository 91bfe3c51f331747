"""Prompts with checkable answers for RL, and their scorers `score(prediction, sample) -> float`.

A sample is a dict: `kind` ("arithmetic", "tool", "interpreter" or "chat"), `messages` (the conversation up to the
assistant's turn), optional `tools`, and what a right answer is (`answer` for arithmetic, `call`
{"name", "arguments"} for a tool call, `operands` for an interpreter call). A prediction is the assistant turn's text as the model wrote
it (action markers included, the closing `<|im_end|>` excluded). Scorers return 1.0 or 0.0.

These are the verifiable rewards of critic-free RL (GRPO/RLOO) and the task scores of the alignment
report; `puyu.eval` tasks expose the same signature (`get_task(name).score(prediction, sample)`).
"""

from __future__ import annotations

import json
import random
import re
from fractions import Fraction

from puyu.model.chat_format import ACTION_START
from puyu.model.tool_calls import InterpreterCall, PluginCall, parse_turn
from puyu.tasks.synthetic import (
    ARITH_QUESTIONS,
    CITIES,
    GREETINGS,
    SYSTEM,
    TOOLS,
    Problem,
    _training_problem,
    tool_call_question,
)

KINDS = ("arithmetic", "tool", "interpreter", "chat")
_INT = re.compile(r"-?\d+")
_MARKER = re.compile(r"<\|[a-z_]+\|>|\[UNUSED_TOKEN_\d+\]")  # chat markers, as text
_TURN_END = re.compile(r"<\|im_end\|>|\[UNUSED_TOKEN_145\]|</s>")


def arithmetic_prompt(p: Problem, rng: random.Random | None = None, system: bool = False) -> dict:
    q = (rng.choice(ARITH_QUESTIONS) if rng else "{p}").format(p=p.prompt, q=p.prompt[:-1])
    msgs = ([{"role": "system", "content": SYSTEM}] if system else []) + [{"role": "user", "content": q}]
    return {"kind": "arithmetic", "messages": msgs, "answer": p.answer, "problem": [p.a, p.op, p.b]}


def tool_prompt(rng: random.Random) -> dict:
    """A question for one of the demo's two tools about a random city, in one of the SFT data's
    phrasings (`puyu.tasks.synthetic.TOOL_QUESTIONS`, training side: what `puyu eval run tools` asks by
    default; its `phrasings=held_out` questions are never drawn here)."""
    city = rng.choice(CITIES)
    name = "get_weather" if rng.random() < 0.5 else "get_time"
    q = tool_call_question(rng, name, city)
    return {"kind": "tool", "tools": TOOLS, "call": {"name": name, "arguments": {"city": city}},
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]}


def chat_prompt(rng: random.Random) -> dict:
    q, a = rng.choice(GREETINGS)
    return {"kind": "chat", "reference": a,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]}


def rl_prompts(seed, n: int, weights: dict[str, float], exclude: set[Problem], p_big: float = 0.1) -> list[dict]:
    """`n` prompts drawn from `seed` by kind `weights` (arithmetic problems skip `exclude`). Kinds:
    arithmetic, tool, interpreter (`interpreter_prompt`: scored by `interpreter_call_score`), chat. Raises ValueError for an unknown kind or no
    positive weight."""
    unknown = sorted(set(weights) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown prompt kinds {unknown}; known: {', '.join(KINDS)}")
    rng = random.Random(f"puyu-rl-prompts-{seed}")
    kinds = [k for k in KINDS if weights.get(k, 0) > 0]
    if not kinds:
        raise ValueError("prompt weights: at least one kind needs a positive weight")
    out = []
    for _ in range(n):
        kind = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
        if kind == "arithmetic":
            out.append(arithmetic_prompt(_training_problem(rng, p_big, exclude), rng))
        elif kind == "tool":
            out.append(tool_prompt(rng))
        elif kind == "interpreter":
            out.append(interpreter_prompt(rng))
        else:
            out.append(chat_prompt(rng))
    return out


# ---- scorers -------------------------------------------------------------------------------------
def arithmetic_answer(prediction: str) -> Fraction | None:
    """The value a reply gives as the answer to an arithmetic question (None when it gives none).

    The one rule of every arithmetic check in puyu (RL reward, `puyu eval` arithmetic, the nano recipe's
    base and chat checks, the interpreter check through the agent):
    - when the reply has an '=', the answer is the first number after its last '=' ("12+34=46" -> 46;
      "12+34=" -> None, never an operand);
    - otherwise it is the reply's last number ("46", "The answer is 46." -> 46);
    - the reply ends at its first `<|im_end|>` or `</s>` (or the raw spelling `[UNUSED_TOKEN_145]`): what
      a model writes after it is not its answer ("16+17=33<|im_end|>38=71" is 33);
    - the other chat markers (`<|...|>`, raw `[UNUSED_TOKEN_n]`) are dropped, so a token's digits are
      never read as the answer;
    - numbers are read by value with `puyu.tasks.numbers` (thousands separators, currency signs, a
      trailing period, decimals): "46.0", "$46", "46." are 46; "1,234" is 1234; "-3" is -3, never 3,
      and the minus of "12-15" is subtraction (its last number is 15).
    Rejected: a reply with no number (after its last '='); an answer written in words ("forty-six"); a
    fraction written with a slash ("92/2" reads as 92). Whether the reply called a tool is the caller's
    business (`arithmetic_score`)."""
    from puyu.tasks.numbers import last_number, numbers

    text = _MARKER.sub(" ", _TURN_END.split(prediction, 1)[0])
    if "=" in text:
        found = numbers(text.rsplit("=", 1)[1])
        return found[0][0] if found else None
    return last_number(text)


def arithmetic_right(prediction: str, answer) -> bool:
    """True when `arithmetic_answer(prediction)` equals `answer` (an int, or its text "46", "-3") by value."""
    got = arithmetic_answer(prediction)
    return got is not None and got == Fraction(str(answer).strip())


def arithmetic_raw_text(prompt: str, completion: str) -> str:
    """What the rule reads of a base model's raw completion of `12+34=`: the prompt followed by the
    completion's first line ("12+34=" + "46\n12+35=47" -> "12+34=46"). A base model that goes on writes a
    new problem of its own after the newline; a completion that starts with a newline has no answer."""
    return prompt + completion.split("\n", 1)[0]


def arithmetic_score(prediction: str, sample: dict) -> float:
    """1.0 when the reply answers `sample["answer"]` (`arithmetic_answer`'s rule) and calls no tool: a
    reply with an action marker has not answered yet (its code or call is not the answer), so it scores
    0 even when the right number is in it. An agent's final answer (`AgentResult.text`) has no markers."""
    if ACTION_START in prediction or "[UNUSED_TOKEN_144]" in prediction:  # the marker, or its raw spelling
        return 0.0
    return float(arithmetic_right(prediction, sample["answer"]))


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
