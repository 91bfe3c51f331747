"""GSM8K (Cobbe et al. 2021): grade-school word problems; the reference ends with `#### N`.

Data: the official JSONL (`question`, `answer`), path from `--data`. Prompts (`--option prompt=...`), all
rendered with the InternLM2 chat template (`encode_chat`, no system turn):
- `chat` (default): zero-shot, one user turn asking for step-by-step reasoning and "The answer is N";
- `fewshot`: four worked examples as alternating user/assistant turns before the question, each ending
  "The answer is N." (the examples are puyu's own, written for this file);
- `opencompass`: OpenCompass's GSM8K prompt for InternLM2-Chat (config `gsm8k_gen_1d7fe4`, the one its
  GSM8K README runs for internlm2-chat; read from opencompass 0.5.4): `shots` (default 4) user/assistant
  turns, the user turn "Question: {question}\nLet's think step by step\nAnswer:" and the assistant turn
  the worked answer ending "The answer is N\n", then the question in the same user form. OpenCompass's
  four exemplars are train-set questions with rationales its authors rewrote; puyu does not ship that
  text. The exemplars are the first `shots` rows of the official train file the user gives
  (`--option fewshot_data=PATH/train.jsonl`, as lm-evaluation-harness takes GSM8K's from the train split
  with its `first_n` sampler), each rationale the row's own `answer` with the `<<48/2=24>>` calculator
  annotations removed and `#### N` written "The answer is N". Same layout and wording, other examples;
- `opencompass-0shot`: OpenCompass's zero-shot chat prompt (`gsm8k_0shot_v2_gen_a58960`): one user turn,
  the question then "\nPlease reason step by step, and put your final answer within \\boxed{}.".
Scoring (both reported): strict = the number after the last `####`, "The answer is" or `\boxed{`;
flexible = the last number in the output. `score` uses strict when the output has one, else flexible;
values compare exactly (`puyu.tasks.numbers`).
"""

from __future__ import annotations

import re

from puyu.eval.task import Context, EvalError, Generation, Sample, Task, apply_limit, need, read_records
from puyu.tasks.numbers import format_number, last_number, parse_number, strict_answer

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


# OpenCompass's wording (gsm8k_gen_1d7fe4 and gsm8k_0shot_v2_gen_a58960, opencompass 0.5.4).
OC_QUESTION = "Question: {question}\nLet's think step by step\nAnswer:"
OC_ZERO_SHOT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
OC_SHOTS = 4
PROMPTS = ("chat", "fewshot", "opencompass", "opencompass-0shot")
CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations: "48/2 = <<48/2=24>>24"


def rationale(row: dict) -> str:
    """A GSM8K train row's worked answer as an OpenCompass exemplar answer: the steps without calculator
    annotations, then "The answer is N" (N without thousands separators) and a newline."""
    steps, _, final = str(row["answer"]).rpartition("####")
    return f"{CALCULATOR.sub('', steps).strip()}\nThe answer is {final.strip().replace(',', '')}\n"


def opencompass_shots(path: str, shots: int) -> list[dict]:
    """The `shots` exemplar turns (user, assistant, ...) from the first rows of the train file `path`."""
    if shots < 0:
        raise EvalError(f"gsm8k: shots must be >= 0, got {shots}")
    rows = read_records(path, "gsm8k fewshot_data") if shots else []
    if len(rows) < shots:
        raise EvalError(f"gsm8k: fewshot_data {path} has {len(rows)} rows; {shots} shots asked")
    msgs = []
    for where, row in rows[:shots]:
        need(row, ("question", "answer"), where, "gsm8k fewshot_data")
        if "####" not in str(row["answer"]):
            raise EvalError(f"gsm8k: fewshot_data {where}: the answer has no '#### N' line")
        msgs += [{"role": "user", "content": OC_QUESTION.format(question=row["question"])},
                 {"role": "assistant", "content": rationale(row)}]
    return msgs


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
    options = ("prompt", "fewshot_data", "shots")
    data = "required"

    def samples(self, ctx: Context) -> list[Sample]:
        if not ctx.data:
            raise EvalError("gsm8k needs --data PATH (the official test.jsonl with question/answer)")
        style = ctx.options.get("prompt", "chat")
        if style not in PROMPTS:
            raise EvalError(f"gsm8k: unknown prompt style {style!r} ({', '.join(PROMPTS)})")
        shots: list[dict] = []
        if style == "opencompass":
            if not ctx.options.get("fewshot_data"):
                raise EvalError("gsm8k: prompt=opencompass takes its exemplars from the official train file: "
                                "--option fewshot_data=PATH/train.jsonl")
            try:
                n = int(ctx.options.get("shots", OC_SHOTS))
            except ValueError as e:
                raise EvalError(f"gsm8k: shots must be an integer, got {ctx.options['shots']!r}") from e
            shots = opencompass_shots(ctx.options["fewshot_data"], n)
        out = []
        for where, row in read_records(ctx.data, "gsm8k"):
            need(row, ("question", "answer"), where, "gsm8k")
            if "####" not in row["answer"]:
                raise EvalError(f"gsm8k: {where}: the answer has no '#### N' line")
            reference(row)
            msgs = list(shots)
            if style == "fewshot":
                for q, a in FEWSHOT:
                    msgs += [{"role": "user", "content": f"{q}\n{INSTRUCTION}"}, {"role": "assistant", "content": a}]
            if style == "opencompass":
                msgs.append({"role": "user", "content": OC_QUESTION.format(question=row["question"])})
            elif style == "opencompass-0shot":
                msgs.append({"role": "user", "content": OC_ZERO_SHOT.format(question=row["question"])})
            else:
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
