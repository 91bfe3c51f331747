"""Does a chat model use its tools right? Three greedy measurements on fresh, seeded inputs (the nano
recipe's report; small enough to move into the evaluation suite as they are).

- `tool_call_accuracy`: the demo's two tools (`get_weather`, `get_time`) and ten cities
  (`puyu.tasks.synthetic.TOOLS`, `CITIES`); the user asks with a held-out phrasing (or, with
  `held_out=False`, a training phrasing). Right = the turn is a plugin call of the asked function
  with arguments exactly `{"city": <the city asked about>}`.
- `interpreter_call_accuracy`: "Use Python to compute a*b." with fresh a, b in [100, 10000). Right =
  an interpreter call whose code has exactly the numbers a and b (in either order) and a `*`.
- `interpreter_arithmetic_accuracy`: a+b / a-b questions answered through `puyu.Agent` with the real
  sandboxed interpreter (`puyu.engine.chat_policy`, greedy). Right = the final answer's last
  integer is the result; also counted: how many turns called the interpreter.

The first two generate one assistant turn for a batch of prompts through `puyu.engine.Engine`
(stopping at `<|im_end|>`, `</s>` or `<|action_end|>`) and parse it with `puyu.agent.protocol`.
"""

from __future__ import annotations

import random
import re
import time

from puyu.agent.protocol import InterpreterCall, PluginCall, parse_turn
from puyu.model.chat_format import ACTION_END, render_chat
from puyu.tasks.synthetic import (
    ARITH_QUESTIONS,
    CITIES,
    MULTIPLY_QUESTIONS,
    SYSTEM,
    TOOLS,
    Problem,
    tool_call_question,
)


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
    """(right function, right function with arguments exactly {"city": city}) for one assistant turn."""
    action = parse_turn(turn).action
    is_fn = isinstance(action, PluginCall) and action.name == function
    return is_fn, is_fn and action.arguments == {"city": city}


def interpreter_call_right(turn: str, a: int, b: int) -> tuple[bool, bool]:
    """(an interpreter call, one whose code has exactly the numbers a and b, either order, and a `*`)."""
    action = parse_turn(turn).action
    is_call = isinstance(action, InterpreterCall)
    ok = is_call and sorted(re.findall(r"\d+", action.code)) == sorted([str(a), str(b)]) and "*" in action.code
    return is_call, ok


def tool_call_accuracy(model, tokenizer, n: int = 100, seed: int = 0, held_out: bool = True) -> dict:
    """Fraction of `n` questions (cities and functions drawn evenly, phrasings held out of training
    unless `held_out=False`) answered by a call of the right function with exactly the right city.
    Returns accuracy, right_function (the function alone), n, a few wrong examples and seconds."""
    t0 = time.perf_counter()
    rng = random.Random(f"puyu-tool-eval-{seed}-{held_out}")
    asks = [(fn, CITIES[i % len(CITIES)]) for i, fn in
            zip(range(n), ["get_weather", "get_time"] * n)]
    rng.shuffle(asks)
    chats = [{"messages": [{"role": "system", "content": SYSTEM},
                           {"role": "user", "content": tool_call_question(rng, fn, city, held_out=held_out)}],
              "tools": TOOLS} for fn, city in asks]
    right = right_fn = 0
    wrong = []
    for (fn, city), c, out in zip(asks, chats, _turns(model, tokenizer, chats, 48)):
        is_fn, ok = tool_call_right(out, fn, city)
        right_fn += is_fn
        right += ok
        if not ok and len(wrong) < 6:
            wrong.append(f"{c['messages'][-1]['content']} -> {out.strip()}")
    return {"accuracy": right / max(n, 1), "right_function": right_fn / max(n, 1), "n": n,
            "held_out_phrasings": held_out, "wrong_examples": wrong, "seconds": time.perf_counter() - t0}


def interpreter_call_accuracy(model, tokenizer, n: int = 100, seed: int = 0) -> dict:
    """Fraction of `n` "Use Python to compute a*b." questions (a, b fresh in [100, 10000)) answered by an
    interpreter call whose code holds exactly the numbers a and b (either order) and a `*`."""
    t0 = time.perf_counter()
    rng = random.Random(f"puyu-interp-eval-{seed}")
    pairs = [(rng.randrange(100, 10000), rng.randrange(100, 10000)) for _ in range(n)]
    chats = [{"messages": [{"role": "system", "content": SYSTEM},
                           {"role": "user", "content": MULTIPLY_QUESTIONS[1][0].format(a=a, b=b)}],
              "interpreter": True} for a, b in pairs]
    right = calls = 0
    wrong = []
    for (a, b), out in zip(pairs, _turns(model, tokenizer, chats, 48)):
        is_call, ok = interpreter_call_right(out, a, b)
        calls += is_call
        right += ok
        if not ok and len(wrong) < 6:
            wrong.append(f"{a}*{b} -> {out.strip()}")
    return {"accuracy": right / max(n, 1), "interpreter_calls": calls / max(n, 1), "n": n,
            "wrong_examples": wrong, "seconds": time.perf_counter() - t0}


def interpreter_arithmetic_accuracy(model, tokenizer, problems: list[Problem], seed: int = 0,
                                    max_new_tokens: int = 64) -> dict:
    """a+b / a-b through `puyu.Agent` with the sandboxed interpreter, one conversation per problem (the
    question phrased as the chat arithmetic data does, drawn by `seed`). Returns accuracy (the last
    integer of the final answer is the result), used_interpreter (fraction whose first turn called it), n, wrong examples and seconds.
    Raises whatever starting the interpreter raises (`puyu.agent.interpreter`)."""
    from puyu.agent.loop import Agent, ToolCall
    from puyu.engine.sampling import SamplingParams
    from puyu.engine.scheduler import Engine, chat_policy

    t0 = time.perf_counter()
    rng = random.Random(f"puyu-interp-arith-eval-{seed}")
    engine = Engine(model.eval(), tokenizer, max_batch_size=1)
    right = used = 0
    wrong = []
    try:
        with Agent(chat_policy(engine, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)),
                   interpreter=True, max_steps=2) as agent:
            for p in problems:
                q = rng.choice(ARITH_QUESTIONS).format(p=p.prompt, q=p.prompt[:-1])
                res = agent.run([{"role": "user", "content": q}])
                called = any(isinstance(e, ToolCall) and e.kind == "interpreter" for e in res.events)
                numbers = re.findall(r"-?\d+", res.text)
                ok = bool(numbers) and numbers[-1] == p.answer
                used += called
                right += ok
                if not ok and len(wrong) < 6:
                    wrong.append(f"{q} -> {res.text.strip()!r} ({'called' if called else 'no call'}; expected {p.answer})")
    finally:
        engine.close()
    n = max(len(problems), 1)
    return {"accuracy": right / n, "used_interpreter": used / n, "n": len(problems), "wrong_examples": wrong,
            "seconds": time.perf_counter() - t0}
