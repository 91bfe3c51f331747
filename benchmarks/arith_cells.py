"""Where a nano base model's held-out arithmetic fails, and how often training showed each kind of problem.

For each run directory (a `puyu demo` output: data/, tokenizer/, pretrain/hf, longctx/hf) this scores the
held-out a±b < 100 problems (`data/test_problems.json`, greedy, `puyu.train.evaluate.arithmetic_accuracy`)
per cell of `puyu.tasks.synthetic.arithmetic_cell` (operator, digit counts of a, b and the result, its sign),
and counts the same cells over the run's own pretraining records (`data/pretrain_train.jsonl`: plain
problems, worksheets, problems after text, arithmetic chats). Also counts the errors by kind: wrong sign,
wrong number of digits, first digit wrong, a later digit wrong.

    PYTHONPATH=src python benchmarks/arith_cells.py /work/main/runs/s6_lr5e4_s0 [...] [--stage longctx]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from puyu.tasks.synthetic import Problem, arithmetic_cell

PROBLEM = re.compile(r"(?<![\d])(\d{1,3})([+-])(\d{1,3})=")


def training_cells(path: Path, limit: int | None = None) -> tuple[Counter, Counter]:
    """Cells of every a±b < 100 problem in a pretraining JSONL (`prompt`, `segments` and chat records
    whose text holds `a+b=`), and the count of problems with an operand >= 100. Returns (cells, kinds)."""
    cells, kinds = Counter(), Counter()
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit and i >= limit:
                break
            rec = json.loads(line)
            if "prompt" in rec:
                texts, kind = [rec["prompt"]], "plain"
            elif "segments" in rec:
                texts = [t for t, train in rec["segments"] if not train]
                kind = "sheet/prefix"
            elif "messages" in rec:
                texts = [m["content"] for m in rec["messages"] if m["role"] == "assistant"
                         and isinstance(m.get("content"), str)]
                kind = "chat"
            else:
                continue
            for t in texts:
                for m in PROBLEM.finditer(t):
                    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
                    if a >= 100 or b >= 100:
                        kinds["big"] += 1
                        continue
                    cells[arithmetic_cell(Problem(a, op, b))] += 1
                    kinds[kind] += 1
    return cells, kinds


# Three groups that sum up the cells (README "Fourth round"): what the model does well, and the two weak spots.
GROUPS = {
    "two-digit operands, result of 2+ digits": lambda c: " 2d2d " in c and "=1d" not in c,
    "a-b, two-digit operands, one-digit result": lambda c: c.startswith("- 2d2d =1d"),
    "a one-digit operand": lambda c: "1d" in c.split(" ")[1],
}


def group_accuracy(by_cell: dict) -> dict:
    """{group: (accuracy, n)} over `arithmetic_accuracy`'s `by_cell` (cells < 100 only)."""
    out = {}
    for name, member in GROUPS.items():
        cells = [v for k, v in by_cell.items() if member(k)]
        n = sum(v["n"] for v in cells)
        out[name] = (sum(v["n"] * v["accuracy"] for v in cells) / n if n else float("nan"), n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--stage", default="longctx", help="model under RUN/<stage>/hf (pretrain, longctx)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from puyu.model.checkpoint import load_model
    from puyu.model.tokenizer import load_tokenizer
    from puyu.train.evaluate import arithmetic_accuracy

    torch.set_num_threads(args.threads)
    out = {}
    for run in args.runs:
        t = json.loads((run / "data" / "test_problems.json").read_text())
        small = [Problem(*p) for p in t["small"]]
        tok = load_tokenizer(run / "tokenizer")
        model = load_model(run / args.stage / "hf", dtype="float32", device="cpu")
        res = arithmetic_accuracy(model, tok, small)
        # every answer, for the error breakdown
        from puyu.train.evaluate import _engine, _greedy

        eng = _engine(model, tok)
        gen = _greedy(eng, [[tok.bos_id] + tok.encode(p.prompt) for p in small], 8, [tok.eos_id])
        errors = Counter()
        wrong = {}
        for p, r in zip(small, gen):
            got = tok.decode([x for x in r.token_ids if x != tok.eos_id]).split("\n")[0].strip()
            if got == p.answer:
                continue
            cell = arithmetic_cell(p)
            wrong.setdefault(cell, []).append(f"{p.prompt}{got}")
            if got.startswith("-") != p.answer.startswith("-"):
                errors["wrong sign"] += 1
            elif len(got.lstrip("-")) != len(p.answer.lstrip("-")):
                errors["wrong digit count"] += 1
            elif got.lstrip("-")[:1] != p.answer.lstrip("-")[:1]:
                errors["first digit wrong"] += 1
            else:
                errors["later digit wrong"] += 1
        cells, kinds = training_cells(run / "data" / "pretrain_train.jsonl")
        total = sum(cells.values())
        held = Counter(arithmetic_cell(p) for p in small)
        print(f"\n== {run} ({args.stage}): {res['accuracy']:.1%} of {res['n']}; by op "
              + ", ".join(f"{k} {v:.1%}" for k, v in res["by_op"].items()))
        print(f"training problems < 100 by record kind: {dict(kinds)}; errors: {dict(errors)}")
        print(f"{'cell':<18}{'held-out n':>11}{'held %':>8}{'train %':>9}{'acc':>8}  wrong (first 6)")
        for c in sorted(set(held) | set(cells)):
            acc = res["by_cell"].get(c, {}).get("accuracy", float("nan"))
            print(f"{c:<18}{held[c]:>11}{100 * held[c] / len(small):>7.1f}%{100 * cells[c] / total:>8.1f}%"
                  f"{100 * acc:>7.1f}%  {'; '.join(wrong.get(c, [])[:6])}")
        print("groups: " + "; ".join(f"{k} {100 * a:.0f}% of {n}" for k, (a, n) in group_accuracy(res["by_cell"]).items()))
        out[str(run)] = {"accuracy": res["accuracy"], "by_op": res["by_op"], "by_cell": res["by_cell"],
                         "errors": dict(errors), "train_cells": dict(cells), "train_kinds": dict(kinds),
                         "wrong": wrong}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
