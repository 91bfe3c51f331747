"""MATH (Hendrycks et al. 2021): competition problems; the answer is the solution's last `\\boxed{}`.

Data: the MATH release (a folder of one-JSON-per-problem files), a JSON list, or JSONL, with `problem`,
`solution` (and `level`, `type`; an `answer` field, as in MATH-500, is used as the reference when present).
Extraction: the content of the last `\\boxed{...}` or `\\fbox{...}` with balanced braces (also
`\\boxed 5`); without one, the text after a final "The answer is". Equivalence: `math-verify` (gold
first), in a persistent worker pool with a per-item time limit (`puyu.eval.verify_pool`); identical
strings after whitespace removal are equal without asking it. Reported by level and by type.
"""

from __future__ import annotations

import re

from puyu.eval.task import Context, EvalError, Generation, Sample, Task, apply_limit, need, read_records

INSTRUCTION = "Solve the problem. Put the final answer in \\boxed{}."
_BOX = re.compile(r"\\(?:boxed|fbox)")
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?(?P<a>[^\n$]+?)\$?\s*\.?\s*$", re.I | re.M)


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (balanced braces) or `\\boxed x`; None if
    there is none or its braces never close."""
    for m in reversed(list(_BOX.finditer(text))):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{" and text[j - 1] != "\\":
                    depth += 1
                elif text[j] == "}" and text[j - 1] != "\\":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1:j].strip()
            continue  # unbalanced: look at an earlier box
        if i > m.end():  # "\boxed 5": up to the next space or dollar
            tail = re.match(r"[^\s$]+", text[i:])
            if tail:
                return tail.group(0).rstrip(".,")
    return None


def _drop_final_period(answer: str) -> str:
    """"10." -> "10" (a sentence's period inside the box), but "1, 2, \\ldots" and "..." stay."""
    a = answer.rstrip()
    if a.endswith(".") and not a.endswith("..") and len(a) > 1:
        return a[:-1].rstrip()
    return a


def extract_answer(prediction: str | None) -> str | None:
    if prediction is None:
        return None
    boxed = last_boxed(prediction)
    if boxed is not None:
        return _drop_final_period(boxed)
    found = list(_ANSWER_IS.finditer(prediction))
    return found[-1].group("a").strip().rstrip(".") if found else None


def gold_answer(record: dict) -> str:
    if isinstance(record.get("answer"), str) and record["answer"].strip():
        return _drop_final_period(record["answer"].strip())
    if "solution" not in record:
        raise EvalError("math: the record has no 'solution' field (nor an 'answer'): nothing to score against")
    gold = last_boxed(str(record["solution"]))
    if gold is None:
        raise EvalError("math: the reference solution has no \\boxed{} answer")
    return _drop_final_period(gold)


def equivalent(gold: str, pred: str) -> bool | None:
    """math-verify's verdict through this process's worker pool (None: timed out)."""
    if re.sub(r"\s+", "", gold) == re.sub(r"\s+", "", pred):
        return True
    from puyu.eval.verify_pool import default_pool

    return default_pool().verify(gold, pred)


class CompetitionMath(Task):
    name = "math"
    description = "MATH competition problems (--data: folder/JSON/JSONL); \\boxed{} answers checked by math-verify"
    generation = Generation(max_new_tokens=1024, temperature=0.7)
    data = "required"

    def samples(self, ctx: Context) -> list[Sample]:
        if not ctx.data:
            raise EvalError("math needs --data PATH (MATH's folder of JSON files, a JSON list or JSONL)")
        out = []
        for where, row in read_records(ctx.data, "math"):
            need(row, ("problem", "solution"), where, "math")
            if last_boxed(row["solution"]) is None and not str(row.get("answer", "")).strip():
                raise EvalError(f"math: {where}: the solution has no \\boxed{{}} answer")
            out.append(Sample(id=str(len(out)), record=row,
                              messages=[{"role": "user", "content": f"{row['problem']}\n{INSTRUCTION}"}],
                              groups={"level": str(row.get("level", "?")), "type": str(row.get("type", "?"))}))
        return apply_limit(out, ctx.limit, f"math ({ctx.data})")

    def extract(self, prediction: str, record: dict) -> str | None:
        return extract_answer(prediction)

    def score(self, prediction: str | None, record: dict) -> float:
        gold = gold_answer(record)
        pred = extract_answer(prediction)
        if pred is None:
            return 0.0
        return float(bool(equivalent(gold, pred)))


TASK = CompetitionMath()
