"""GSM8K (Cobbe et al. 2021): grade-school word problems; the reference ends with `#### N`.

Data: the official JSONL (`question`, `answer`), path from `--data`. Prompts (`--option prompt=...`):
- `chat` (default): zero-shot, one user turn asking for step-by-step reasoning and "The answer is N";
- `fewshot`: four worked examples as alternating user/assistant turns before the question, each ending
  "The answer is N." (the multi-turn few-shot layout OpenCompass uses for InternLM2 chat models; the
  examples here are puyu's own).
Scoring (both reported): strict = the number after the last `####` or "The answer is"; flexible = the
last number in the output. `score` uses strict when the output has one, else flexible; values compare
exactly (`puyu.eval.numbers`).
"""

from __future__ import annotations

from puyu.eval.numbers import format_number, last_number, parse_number, strict_answer
from puyu.eval.task import Context, EvalError, Generation, Sample, Task, apply_limit, need, read_records

INSTRUCTION = "Solve the problem step by step. End with \"The answer is N.\" where N is the final number."
FEWSHOT = [
    ("A baker makes 24 rolls in the morning and 18 in the afternoon. She sells 35. How many are left?",
     "She makes 24 + 18 = 42 rolls. After selling 35, 42 - 35 = 7 are left. The answer is 7."),
    ("Tom reads 12 pages a day. How many pages does he read in 3 weeks?",
     "3 weeks are 3 * 7 = 21 days. He reads 12 * 21 = 252 pages. The answer is 252."),
    ("A shirt costs $20 and is on sale for 25% off. What is the sale price in dollars?",
     "25% of $20 is 0.25 * 20 = $5. The sale price is 20 - 5 = $15. The answer is 15."),
    ("Mia has 3 boxes with 8 pencils each. She gives away 5 pencils. How many does she have?",
     "She has 3 * 8 = 24 pencils. After giving 5 away she has 24 - 5 = 19. The answer is 19."),
]


def reference(record: dict):
    """The reference value: the number after `####` in `answer` (or a bare number)."""
    if not isinstance(record, dict) or "answer" not in record:
        raise EvalError("gsm8k: the record has no 'answer' field (the reference, '... #### N')")
    ans = str(record["answer"])
    head = ans.rsplit("####", 1)[-1]
    v = parse_number(head)
    if v is None:
        raise EvalError(f"gsm8k: reference {ans[-40:]!r} has no number after ####")
    return v


class GSM8K(Task):
    name = "gsm8k"
    description = "grade-school math word problems (official JSONL via --data); strict and flexible extraction"
    generation = Generation(max_new_tokens=512, temperature=0.7)
    options = ("prompt",)

    def samples(self, ctx: Context) -> list[Sample]:
        if not ctx.data:
            raise EvalError("gsm8k needs --data PATH (the official test.jsonl with question/answer)")
        style = ctx.options.get("prompt", "chat")
        if style not in ("chat", "fewshot"):
            raise EvalError(f"gsm8k: unknown prompt style {style!r} (chat, fewshot)")
        out = []
        for where, row in read_records(ctx.data, "gsm8k"):
            need(row, ("question", "answer"), where, "gsm8k")
            if "####" not in row["answer"]:
                raise EvalError(f"gsm8k: {where}: the answer has no '#### N' line")
            reference(row)
            msgs = []
            if style == "fewshot":
                for q, a in FEWSHOT:
                    msgs += [{"role": "user", "content": f"{q}\n{INSTRUCTION}"}, {"role": "assistant", "content": a}]
            msgs.append({"role": "user", "content": f"{row['question']}\n{INSTRUCTION}"})
            out.append(Sample(id=str(len(out)), record=row, messages=msgs))
        return apply_limit(out, ctx.limit, f"gsm8k ({ctx.data})")

    def details(self, prediction: str, record: dict) -> dict:
        ref = reference(record)
        s, f = strict_answer(prediction or ""), last_number(prediction or "")
        return {"strict": float(s is not None and s == ref), "flexible": float(f is not None and f == ref),
                "has_strict": s is not None}

    def extract(self, prediction: str, record: dict) -> str | None:
        s = strict_answer(prediction or "")
        return format_number(s if s is not None else last_number(prediction or ""))

    def score(self, prediction: str | None, record: dict) -> float:
        ref = reference(record)
        if prediction is None:  # a model that returned nothing
            return 0.0
        s = strict_answer(prediction)
        got = s if s is not None else last_number(prediction)
        return float(got is not None and got == ref)


TASK = GSM8K()
