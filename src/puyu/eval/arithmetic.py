"""a±b arithmetic: the nano recipe's task, at three sizes (operands < 100, < 1000, < 10^4).

The < 100 and < 1000 problems are the recipe's own held-out test set (`puyu.tasks.synthetic.
held_out_problems` with the recipe's seed and counts: 400 and 200), which every training generator
skips; the < 10^4 problems come from their own seed (training never draws operands that large).
`--option n=N` problems per size (default 100; at most 400/200 for the first two sizes),
`--option sizes=100,1000,10000`, `--option test_small=400 --option test_big=200` if the recipe's
counts differ. Prompts (`--option style=`): `raw` (default; the recipe's completion prompt `<s>12+34=`)
or `chat` ("What is 12+34?" in one user turn; always with `--interpreter`).
Score: `puyu.tasks.verifiable.arithmetic_score`, the RL reward's rule (the first number after the last
'=', else the last number, by value; 0 for a reply that calls a tool without the agent). The raw prompt
`12+34=` is scored with the output after it (`12+34=46`), as the nano recipe's base check does.
"""

from __future__ import annotations

import random

from puyu.eval.task import Context, EvalError, Generation, Sample, Task
from puyu.tasks.numbers import format_number
from puyu.tasks.synthetic import Problem, held_out_problems
from puyu.tasks.verifiable import arithmetic_answer, arithmetic_raw_text, arithmetic_score

CHAT_QUESTION = "What is {q}?"


def problems(seed: int, size: int, n: int, test_small: int = 400, test_big: int = 200) -> list[Problem]:
    """`n` problems with operands < `size`, half + and half -, in a seeded random order."""
    if size in (100, 1000):
        small, big = held_out_problems(seed, test_small, test_big)
        pool = small if size == 100 else big
        if n > len(pool):
            raise EvalError(f"arithmetic: only {len(pool)} held-out problems with operands < {size} "
                            f"(the recipe's test set); asked for {n}")
        pool = list(pool)
        random.Random(f"puyu-arith-eval-{seed}-{size}").shuffle(pool)
        return pool[:n]
    rng = random.Random(f"puyu-arith-eval-{seed}-{size}")
    chosen: dict[Problem, None] = {}
    while len(chosen) < n:
        op = "+-"[len(chosen) % 2]
        chosen.setdefault(Problem(rng.randrange(size), op, rng.randrange(size)))
    return list(chosen)


def _positive(value, key: str) -> int:
    """An option's value as a positive int, or EvalError naming the option."""
    try:
        v = int(str(value).strip())
    except ValueError:
        raise EvalError(f"arithmetic: --option {key}={value!r}: expected a positive integer") from None
    if v < 1:
        raise EvalError(f"arithmetic: --option {key}={v}: expected a positive integer")
    return v


class Arithmetic(Task):
    name = "arithmetic"
    description = "a+b and a-b at operands < 100, < 1000, < 10^4 (the nano recipe's held-out problems)"
    generation = Generation(max_new_tokens=24, temperature=0.7)
    options = ("n", "sizes", "style", "test_small", "test_big")

    def samples(self, ctx: Context) -> list[Sample]:
        o = ctx.options
        sizes = [_positive(x, "sizes") for x in str(o.get("sizes", "100,1000,10000")).split(",")]
        n = _positive(o.get("n", 100), "n")
        test_small, test_big = _positive(o.get("test_small", 400), "test_small"), _positive(o.get("test_big", 200), "test_big")
        style = "chat" if ctx.interpreter else o.get("style", "raw")
        if style not in ("raw", "chat"):
            raise EvalError(f"arithmetic: unknown style {style!r} (raw, chat)")
        out = []
        for size in sizes:
            for p in problems(ctx.seed, size, n, test_small, test_big):
                q = p.prompt[:-1]
                record = {"question": q, "answer": p.answer, "size": size, "style": style}
                s = Sample(id=f"{size}:{q}", record=record, groups={"size": f"< {size}", "op": p.op})
                if style == "raw":
                    s.prompt = p.prompt
                    if ctx.tokenizer is not None:
                        s.prompt_ids = [ctx.tokenizer.bos_id] + ctx.tokenizer.encode(p.prompt)
                    s.max_new_tokens = 8
                else:
                    s.messages = [{"role": "user", "content": CHAT_QUESTION.format(q=q)}]
                out.append(s)
        if ctx.limit is not None and ctx.limit < len(out):  # a larger limit takes them all
            rng = random.Random(f"puyu-arith-limit-{ctx.seed}")
            out = rng.sample(out, ctx.limit)  # a mix of sizes, not only the first size
        return out

    def score(self, prediction: str, record: dict) -> float:
        if "answer" not in record:
            raise EvalError("arithmetic: the sample has no answer")
        return arithmetic_score(_scored_text(prediction, record), record)

    def extract(self, prediction: str, record: dict) -> str | None:
        return format_number(arithmetic_answer(_scored_text(prediction, record)))


def _scored_text(prediction: str | None, record: dict) -> str:
    """The text the rule reads: a raw-style output (the record's `style`) continues `12+34=`, so it is read
    as the prompt and the output's first line (`arithmetic_raw_text`, as the recipe's base check does)."""
    text = prediction or ""
    return arithmetic_raw_text(record["question"] + "=", text) if record.get("style") == "raw" else text


TASK = Arithmetic()
