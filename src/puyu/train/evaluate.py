"""Greedy task evaluation for trained models: arithmetic, passkey retrieval and chat behaviour.

Generation goes through `puyu.engine.scheduler.Engine` with `SamplingParams(temperature=0)` (greedy), the same
path as `puyu generate` and `puyu chat`. Each scorer returns plain figures (accuracy, counts) and a few
examples so the report can show what the model actually wrote.
"""

from __future__ import annotations

import random
import time

from puyu.model.chat_format import IM_END, encode_chat
from puyu.tasks.synthetic import SYSTEM, TOOLS, Problem, arithmetic_cell, passkey_prompt
from puyu.tasks.verifiable import arithmetic_raw_text, arithmetic_score


def _engine(model, tokenizer):
    from puyu.engine.scheduler import Engine

    return Engine(model.eval(), tokenizer, max_batch_size=64)


def _greedy(engine, prompts: list[list[int]], max_new: int, stop_ids: list[int]):
    from puyu.engine.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=max_new, temperature=0.0, stop_token_ids=stop_ids)
    return engine.generate(prompts, params)


def arithmetic_accuracy(model, tokenizer, problems: list[Problem], engine=None) -> dict:
    """Raw completion: prompt `<s>12+34=`, greedy until `</s>` (8 new tokens at most). Right = the prompt
    followed by the completion's first line (`puyu.tasks.verifiable.arithmetic_raw_text`: "12+34=" +
    "46") passes `arithmetic_score`, the rule of RL and `puyu eval` (the first number after the last '=',
    by value): " 46", "46.0" and "46 (carry the 1)" count, "47", "", "-46" and a completion that starts with a newline do not; what follows
    the first line (a new problem the base model made up) is not read. `by_cell`: accuracy and count per
    `puyu.tasks.synthetic.arithmetic_cell` (operator, digit counts of the operands and the result, negative result);
    `right`: each problem's outcome in order (for paired tests between models). Not stricter than the
    chat check on purpose: this figure measures arithmetic, not the training data's exact format (the
    wrong examples show what was written)."""
    engine = engine or _engine(model, tokenizer)
    t0 = time.perf_counter()
    prompts = [[tokenizer.bos_id] + tokenizer.encode(p.prompt) for p in problems]
    results = _greedy(engine, prompts, max_new=8, stop_ids=[tokenizer.eos_id])
    correct, by_op, by_cell, wrong, right = 0, {}, {}, [], []
    for p, r in zip(problems, results):
        got = tokenizer.decode([t for t in r.token_ids if t != tokenizer.eos_id])
        ok = arithmetic_score(arithmetic_raw_text(p.prompt, got), {"answer": p.answer}) == 1.0
        correct += ok
        right.append(ok)
        for key, table in ((p.op, by_op), (arithmetic_cell(p), by_cell)):
            hit, n = table.get(key, (0, 0))
            table[key] = (hit + ok, n + 1)
        if not ok and len(wrong) < 8:
            wrong.append(f"{p.prompt}{got.strip()}  (expected {p.answer})")
    return {"accuracy": correct / max(len(problems), 1), "n": len(problems),
            "by_op": {op: h / n for op, (h, n) in by_op.items()},
            "by_cell": {c: {"accuracy": h / n, "n": n} for c, (h, n) in sorted(by_cell.items())},
            "wrong_examples": wrong, "right": right,
            "seconds": time.perf_counter() - t0}


def chat_arithmetic_accuracy(model, tokenizer, problems: list[Problem], engine=None) -> dict:
    """Through the chat template: user `12+34=`-style question, greedy for 16 tokens. Right = the reply
    passes `puyu.tasks.verifiable.arithmetic_score` (the RL reward and `puyu eval`'s rule: "12+34=46",
    "46", "The answer is 46." count; a reply that opens a tool call does not). `ends_with_im_end`: the
    share of replies that end the turn with `<|im_end|>`; `right`: each problem's outcome in order."""
    engine = engine or _engine(model, tokenizer)
    prompts = [encode_chat(tokenizer, [{"role": "user", "content": p.prompt}], None) for p in problems]
    results = _greedy(engine, prompts, max_new=16, stop_ids=tokenizer.stop_ids)
    im_end = tokenizer.special_ids[IM_END]
    right, ended = [], 0
    for p, r in zip(problems, results):
        text = tokenizer.decode([t for t in r.token_ids if t not in tokenizer.stop_ids]).strip()
        right.append(arithmetic_score(text, {"answer": p.answer}) == 1.0)
        ended += bool(r.token_ids) and r.token_ids[-1] == im_end
    n = max(len(problems), 1)
    return {"accuracy": sum(right) / n, "ends_with_im_end": ended / n, "n": len(problems), "right": right}


def passkey_accuracy(model, tokenizer, n: int, target_tokens: int, seed: int = 0, engine=None) -> dict:
    """Keys hidden at evenly spread depths in prompts of about `target_tokens` tokens (the filler is
    sized so the whole prompt fits); greedy continuation must start with the 5-digit key. `right`: per key, in
    depth order (the same keys and depths for the same `n`, `seed` and tokenizer: runs compare key by key)."""
    engine = engine or _engine(model, tokenizer)
    rng = random.Random(f"puyu-passkey-eval-{seed}")
    # The most filler blocks such that prompt + answer (6 new tokens) stays within target_tokens.
    n_filler = 0
    while len(tokenizer.encode(passkey_prompt(99999, n_filler + 1, 0.5))) + 1 + 6 <= target_tokens:
        n_filler += 1
    keys = [rng.randrange(10000, 100000) for _ in range(n)]
    depths = [(i + 0.5) / n for i in range(n)]
    prompts = [[tokenizer.bos_id] + tokenizer.encode(passkey_prompt(k, n_filler, d)) for k, d in zip(keys, depths)]
    results = _greedy(engine, prompts, max_new=6, stop_ids=[tokenizer.eos_id])
    right = [tokenizer.decode(r.token_ids).strip().startswith(str(k)) for k, r in zip(keys, results)]
    return {"accuracy": sum(right) / max(n, 1), "n": n, "prompt_tokens": len(prompts[0]), "n_filler": n_filler,
            "right": right}


SAMPLE_CHATS = [
    {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi, who are you?"}]},
    {"messages": [{"role": "user", "content": "What is 27+58?"}]},
    {"messages": [{"role": "user", "content": "63-91="}]},
    {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What does json.dumps do?"}]},
    {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the weather in Oslo?"}],
     "tools": TOOLS},
    {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Use Python to compute 123*456."}],
     "interpreter": True},
]


def sample_chats(model, tokenizer, chats: list[dict] | None = None, engine=None) -> dict:
    """Greedy replies to a few conversations; reports how many end their turn with `<|im_end|>`."""
    engine = engine or _engine(model, tokenizer)
    chats = chats or SAMPLE_CHATS
    prompts = [encode_chat(tokenizer, c["messages"], c.get("tools"), c.get("interpreter")) for c in chats]
    results = _greedy(engine, prompts, max_new=96, stop_ids=tokenizer.stop_ids)
    im_end = tokenizer.special_ids[IM_END]
    samples = []
    for c, r in zip(chats, results):
        samples.append({"user": c["messages"][-1]["content"], "tools": bool(c.get("tools")),
                        "interpreter": bool(c.get("interpreter")),
                        "reply": tokenizer.decode(r.token_ids),
                        "ends_with_im_end": bool(r.token_ids) and r.token_ids[-1] == im_end})
    ended = sum(s["ends_with_im_end"] for s in samples)
    return {"samples": samples, "ends_with_im_end": ended / max(len(samples), 1)}
