"""Does a chat model use its tools right? Three greedy measurements on fresh, seeded inputs (the nano
recipe's report and targets).

- `tool_call_accuracy`: the demo's two tools (`get_weather`, `get_time`) and ten cities
  (`puyu.tasks.synthetic.TOOLS`, `CITIES`); the user asks with a held-out phrasing (or, with
  `held_out=False`, a training phrasing). The questions are the suite's (`puyu.eval.tools.
  generated_set` without no-call questions) and so is the check (`puyu.eval.tools.judge`, with exact
  values): right = the turn is a plugin call of the asked function with arguments exactly
  `{"city": <the city asked about>}`. The suite's `tools` task differs only in sampling (temperature
  0.7), its no-call questions and its default phrasings.
- `interpreter_call_accuracy`: "Use Python to compute a*b." with fresh a, b in [100, 10000). Right =
  an interpreter call whose code has exactly the numbers a and b (in either order) and a `*`.
- `interpreter_arithmetic_accuracy`: a+b / a-b questions answered through `puyu.Agent` with the real
  sandboxed interpreter (`puyu.engine.chat_policy`, greedy). Right = the final answer passes
  `puyu.tasks.verifiable.arithmetic_score` (the RL reward's rule); also counted: how many turns called
  the interpreter.

The first two generate one assistant turn for a batch of prompts through `puyu.engine.Engine`
(stopping at `<|im_end|>`, `</s>` or `<|action_end|>`) and parse it with `puyu.agent.protocol`.
"""

from __future__ import annotations

import random
import re
import time

from puyu.agent.protocol import InterpreterCall, parse_turn
from puyu.eval.tools import generated_set, judge
from puyu.model.chat_format import ACTION_END, render_chat
from puyu.tasks.synthetic import ARITH_QUESTIONS, MULTIPLY_QUESTIONS, SYSTEM, TOOLS, Problem
from puyu.tasks.verifiable import arithmetic_score


def _turns(model, tokenizer, chats: list[dict], max_new: int) -> list[str]:
    """Greedy assistant turns (special tokens kept as text) for `chats`: {"messages", "tools", "interpreter"}."""
    from puyu.engine.sampling import SamplingParams
    from puyu.engine.scheduler import Engine

    stops = sorted(set(tokenizer.stop_ids) | {tokenizer.special_ids[ACTION_END]})
    prompts = [tokenizer.encode(render_chat(c["messages"], tools=c.get("tools"), interpreter=c.get("interpreter")),
                                allow_special=True) for c in chats]
    engine = Engine(model.eval(), tokenizer, max_batch_size=64)
    try:
        results = engine.generate(prompts, SamplingParams(max_new_tokens=max_new, temperature=0.0, stop_token_ids=stops))
    finally:
        engine.close()
    return [tokenizer.decode(r.token_ids) for r in results]


def tool_call_right(turn: str, function: str, city: str) -> tuple[bool, bool]:
    """(right function, right function with arguments exactly {"city": city}) for one assistant turn
    (`puyu.eval.tools.judge` with exact values against the demo's tools)."""
    j = judge(turn, {"tools": TOOLS, "expected": [{"name": function, "arguments": {"city": city}}]}, exact=True)
    return bool(j["name"]), bool(j["ok"])


def interpreter_call_right(turn: str, a: int, b: int) -> tuple[bool, bool]:
    """(an interpreter call, one whose code has exactly the numbers a and b, either order, and a `*`)."""
    action = parse_turn(turn).action
    is_call = isinstance(action, InterpreterCall)
    ok = is_call and sorted(re.findall(r"\d+", action.code)) == sorted([str(a), str(b)]) and "*" in action.code
    return is_call, ok


def tool_call_accuracy(model, tokenizer, n: int = 100, seed: int = 0, held_out: bool = True, turns=None) -> dict:
    """Fraction of `n` questions (`puyu.eval.tools.generated_set`: cities and functions drawn evenly with
    phrasings held out of training, or training phrasings with `held_out=False`) answered by a call of
    the right function with exactly the right city. `turns(chats) -> list[str]` replaces greedy
    generation (default: the model through `puyu.engine.Engine`). Returns accuracy, right_function
    (the function alone), n, a few wrong examples and seconds."""
    t0 = time.perf_counter()
    recs = generated_set(seed, n, "held_out" if held_out else "train", no_call_every=0)
    outs = turns(recs) if turns is not None else _turns(model, tokenizer, recs, 48)
    right = right_fn = 0
    wrong = []
    for rec, out in zip(recs, outs, strict=True):
        j = judge(out, rec, exact=True)
        right_fn += bool(j["name"])
        right += bool(j["ok"])
        if not j["ok"] and len(wrong) < 6:
            wrong.append(f"{rec['messages'][-1]['content']} -> {out.strip()}")
    return {"accuracy": right / max(n, 1), "right_function": right_fn / max(n, 1), "n": n,
            "held_out_phrasings": held_out, "wrong_examples": wrong, "seconds": time.perf_counter() - t0}


def interpreter_call_accuracy(model, tokenizer, n: int = 100, seed: int = 0, turns=None) -> dict:
    """Fraction of `n` "Use Python to compute a*b." questions (a, b fresh in [100, 10000)) answered by an
    interpreter call whose code holds exactly the numbers a and b (either order) and a `*`. `turns`:
    as in `tool_call_accuracy`."""
    t0 = time.perf_counter()
    rng = random.Random(f"puyu-interp-eval-{seed}")
    pairs = [(rng.randrange(100, 10000), rng.randrange(100, 10000)) for _ in range(n)]
    chats = [{"messages": [{"role": "system", "content": SYSTEM},
                           {"role": "user", "content": MULTIPLY_QUESTIONS[1][0].format(a=a, b=b)}],
              "interpreter": True} for a, b in pairs]
    right = calls = 0
    wrong = []
    outs = turns(chats) if turns is not None else _turns(model, tokenizer, chats, 48)
    for (a, b), out in zip(pairs, outs, strict=True):
        is_call, ok = interpreter_call_right(out, a, b)
        calls += is_call
        right += ok
        if not ok and len(wrong) < 6:
            wrong.append(f"{a}*{b} -> {out.strip()}")
    return {"accuracy": right / max(n, 1), "interpreter_calls": calls / max(n, 1), "n": n,
            "wrong_examples": wrong, "seconds": time.perf_counter() - t0}


def interpreter_arithmetic_accuracy(model, tokenizer, problems: list[Problem], seed: int = 0,
                                    max_new_tokens: int = 64, policy=None) -> dict:
    """a+b / a-b through `puyu.Agent` with the sandboxed interpreter, one conversation per problem (the
    question phrased as the chat arithmetic data does, drawn by `seed`). Returns accuracy (the agent's
    final answer passes `puyu.tasks.verifiable.arithmetic_score`: the first number after the last '=',
    else the last number, by value), used_interpreter (fraction whose first turn called it), n, wrong
    examples and seconds. `policy`: the agent's policy (None: greedy `chat_policy` over an Engine of
    `model`; a scripted one lets a test feed known replies). Raises whatever starting the interpreter
    raises (`puyu.agent.interpreter`)."""
    from puyu.agent.loop import Agent, ToolCall
    from puyu.engine.sampling import SamplingParams
    from puyu.engine.scheduler import Engine, chat_policy

    t0 = time.perf_counter()
    rng = random.Random(f"puyu-interp-arith-eval-{seed}")
    engine = None if policy is not None else Engine(model.eval(), tokenizer, max_batch_size=1)
    right = used = 0
    wrong = []
    try:
        with Agent(policy or chat_policy(engine, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)),
                   interpreter=True, max_steps=2) as agent:
            for p in problems:
                q = rng.choice(ARITH_QUESTIONS).format(p=p.prompt, q=p.prompt[:-1])
                res = agent.run([{"role": "user", "content": q}])
                called = any(isinstance(e, ToolCall) and e.kind == "interpreter" for e in res.events)
                ok = arithmetic_score(res.text, {"answer": p.answer}) == 1.0
                used += called
                right += ok
                if not ok and len(wrong) < 6:
                    wrong.append(f"{q} -> {res.text.strip()!r} ({'called' if called else 'no call'}; expected {p.answer})")
    finally:
        if engine is not None:
            engine.close()
    n = max(len(problems), 1)
    return {"accuracy": right / n, "used_interpreter": used / n, "n": len(problems), "wrong_examples": wrong,
            "seconds": time.perf_counter() - t0}
