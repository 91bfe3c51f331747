"""Scorer parity: puyu's GSM8K and MATH verdicts vs lm-evaluation-harness's own code on the same outputs.

    .venv/bin/python benchmarks/scorer_parity.py [--gsm8k DIR/gsm8k/predictions.jsonl] [--math DIR/math/predictions.jsonl]

Without files it runs on the hand-written verdict table of tests/eval/test_eval_scoring_table.py (whose
right answers were decided by hand). lm-eval's functions are imported from the installed package
(`pip install lm-eval`; 0.4.x), not re-implemented:
- GSM8K (gsm8k.yaml): `RegexFilter` "strict-match" (`#### (\\-?[0-9\\.\\,]+)`) and "flexible-extract"
  (`(-?[$0-9.,]{2,})|(-?[0-9]+)`, last match), then `exact_match_hf_evaluate` with ignore_case and
  regexes_to_ignore [",", "\\$", "(?s).*#### ", "\\.$"], the reference being the whole `answer` field;
- MATH: `hendrycks_math.utils.process_results` (the answer is the text between the first and last `$`
  of the output, compared after string normalisation), and the `math_verify` figure of
  `minerva_math.utils.process_results`, which is `verify(gold=parse(solution), target=parse(output))` on
  the whole output: that line is repeated here, because importing minerva_math asserts
  antlr4-python3-runtime 4.11 while puyu keeps math-verify's default 4.13.2 (under 4.11 math-verify
  parses `50\\%` to a string and loses the 50% = 50 verdict). minerva's exact_match reads only its own
  "Final Answer: The final answer is X. I hope it is correct." format, so it is not compared.
Prints every item where a peer and puyu disagree, with the hand verdict when known.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "eval")]


def lm_eval_gsm8k(output: str, answer: str) -> tuple[int, int]:
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    out = []
    for pattern, group in [(r"#### (\-?[0-9\.\,]+)", 0), (r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1)]:
        got = list(RegexFilter(pattern, group).apply([[output]], [{}]))[0][0]
        em = exact_match_hf_evaluate([got], [answer], regexes_to_ignore=[",", "\\$", "(?s).*#### ", "\\.$"],
                                     ignore_case=True, ignore_punctuation=False)["exact_match"]
        out.append(int(em))
    return out[0], out[1]


def lm_eval_math(output: str, solution: str, extracted: str | None) -> tuple[int, int, int]:
    from lm_eval.tasks.hendrycks_math import utils as H
    from math_verify import parse, verify

    minerva_math_verify = int(bool(verify(gold=parse(solution), target=parse(output))))
    raw = int(H.process_results({"solution": solution}, [output])["exact_match"])
    # hendrycks' equivalence alone: puyu's extracted answer handed over in the `$...$` it reads
    norm = int(H.process_results({"solution": solution}, [f"${extracted}$"])["exact_match"]) if extracted else 0
    return minerva_math_verify, raw, norm


def rows_from(path: str | None, table: list, make_record) -> list[tuple[str, dict, int | None]]:
    if path:
        return [(r["output"], r["record"], None) for r in map(json.loads, Path(path).read_text().splitlines())]
    return [(p, make_record(ref), getattr(exp, "values", [exp])[0] if not isinstance(exp, int) else exp)
            for p, ref, exp in (getattr(x, "values", x) for x in table)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gsm8k")
    ap.add_argument("--math")
    args = ap.parse_args()
    from test_eval_scoring_table import GSM8K, MATH, G, M

    from puyu.eval import get_task

    g, m = get_task("gsm8k"), get_task("math")
    print("GSM8K: puyu vs lm-eval strict-match / flexible-extract")
    n = dis = 0
    for out, rec, hand in rows_from(args.gsm8k, GSM8K, lambda ref: {"question": "q", "answer": G.format(ref)}):
        puyu = int(g.score(out, rec))
        strict, flex = lm_eval_gsm8k(out, rec["answer"])
        n += 1
        if not (puyu == strict == flex):
            dis += 1
            print(f"  {out!r:<60} ref {rec['answer'].split('####')[-1].strip()!r:<10} hand {hand} puyu {puyu} "
                  f"lm-eval strict {strict} flexible {flex}")
    print(f"  {dis} of {n} items where lm-eval's strict or flexible verdict differs from puyu's")
    print("MATH: puyu vs lm-eval minerva math_verify / hendrycks exact_match (raw output; puyu's extraction)")
    n = dis = 0
    for out, rec, hand in rows_from(args.math, MATH, lambda ref: {"problem": "p", "solution": M.format(ref)}):
        puyu = int(m.score(out, rec))
        mv, hx, hn = lm_eval_math(out, rec["solution"], m.extract(out, rec))
        n += 1
        if not (puyu == mv == hn):
            dis += 1
            print(f"  {out!r:<50} gold {rec['solution'][12:]!r:<28} hand {hand} puyu {puyu} "
                  f"minerva-math_verify {mv} hendrycks {hx} hendrycks($puyu-extracted$) {hn}")
    print(f"  {dis} of {n} items where minerva's math_verify or hendrycks' equivalence differs from puyu "
          "(hendrycks on the raw output is 0 for every \\boxed answer: it reads only `$...$`)")


if __name__ == "__main__":
    main()
