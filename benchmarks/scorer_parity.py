"""Scorer parity: puyu's GSM8K and MATH verdicts vs lm-evaluation-harness's and OpenCompass's own code on
the same outputs.

    .venv/bin/python benchmarks/scorer_parity.py [--gsm8k DIR/gsm8k/predictions.jsonl] [--math DIR/math/predictions.jsonl]
                                                 [--opencompass-python PATH]

Without files it runs on the hand-written verdict table of tests/eval/test_eval_scoring_table.py (whose
right answers were decided by hand). Prints every item where a peer and puyu disagree, with the hand
verdict when known, then one summary line per peer. Each peer is skipped, with a line saying so and how
to install it, when it is missing.

lm-evaluation-harness (`pip install lm-eval`, 0.4.x, into puyu's own venv: the `parity` extra): its
functions are imported and called, not re-implemented:
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

OpenCompass (0.5.4) pins transformers, numpy < 2 and much else, so it lives in its own virtualenv and
runs there as a subprocess (`benchmarks/opencompass_peer.py`, which says which configs and functions it
calls: gsm8k_gen_1d7fe4, gsm8k_0shot_v2_gen_a58960 and math_0shot_gen_393424, OpenCompass's InternLM2-Chat
settings). Create that venv once (pyarrow 21+ needs numpy 2, which OpenCompass's pins exclude):

    python3 -m venv /work/venvs/opencompass
    /work/venvs/opencompass/bin/pip install opencompass==0.5.4 "pyarrow<21"

and point this script at its python with `--opencompass-python` or $PUYU_OPENCOMPASS_PYTHON (default
/work/venvs/opencompass/bin/python). Its first import takes ~10-35 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "eval")]
OPENCOMPASS_PYTHON = "/work/venvs/opencompass/bin/python"


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


def opencompass_verdicts(python: str, rows: list[dict]) -> tuple[str, list[dict]] | None:
    """(OpenCompass's version, one verdict dict per row) from `opencompass_peer.py` run by `python`, or
    None (with a printed reason) when that interpreter is absent or cannot import OpenCompass."""
    if not Path(python).exists():
        print(f"OpenCompass: skipped: no interpreter at {python}. Create its venv with\n"
              "    python3 -m venv /work/venvs/opencompass && "
              "/work/venvs/opencompass/bin/pip install opencompass==0.5.4 'pyarrow<21'\n"
              "and pass --opencompass-python (or set PUYU_OPENCOMPASS_PYTHON).")
        return None
    stdin = "".join(json.dumps(r) + "\n" for r in rows)
    p = subprocess.run([python, str(ROOT / "benchmarks" / "opencompass_peer.py")], input=stdin, text=True,
                       capture_output=True, cwd="/tmp", timeout=600)
    lines = p.stdout.splitlines()
    if p.returncode != 0 or len(lines) != len(rows) + 1:
        tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"OpenCompass: skipped: {python} could not run the peer (exit {p.returncode}): {tail}")
        return None
    return json.loads(lines[0])["version"], [json.loads(x) for x in lines[1:]]


def rows_from(path: str | None, table: list, make_record) -> list[tuple[str, dict, int | None]]:
    if path:
        return [(r["output"], r["record"], None) for r in map(json.loads, Path(path).read_text().splitlines())]
    return [(p, make_record(ref), getattr(exp, "values", [exp])[0] if not isinstance(exp, int) else exp)
            for p, ref, exp in (getattr(x, "values", x) for x in table)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gsm8k")
    ap.add_argument("--math")
    ap.add_argument("--opencompass-python", default=os.environ.get("PUYU_OPENCOMPASS_PYTHON", OPENCOMPASS_PYTHON))
    args = ap.parse_args()
    from test_eval_scoring_table import GSM8K, MATH, G, M

    from puyu.eval import get_task

    g, m = get_task("gsm8k"), get_task("math")
    grows = rows_from(args.gsm8k, GSM8K, lambda ref: {"question": "q", "answer": G.format(ref)})
    mrows = rows_from(args.math, MATH, lambda ref: {"problem": "p", "solution": M.format(ref)})
    print(f"{len(grows)} GSM8K and {len(mrows)} MATH rows")

    try:
        import lm_eval
    except ImportError:
        print("lm-evaluation-harness: skipped: not installed in this venv (pip install -e '.[parity]')")
    else:
        print(f"GSM8K: puyu vs lm-eval {lm_eval.__version__} strict-match / flexible-extract")
        dis = 0
        for out, rec, hand in grows:
            puyu = int(g.score(out, rec))
            strict, flex = lm_eval_gsm8k(out, rec["answer"])
            if not (puyu == strict == flex):
                dis += 1
                print(f"  {out!r:<60} ref {rec['answer'].split('####')[-1].strip()!r:<10} hand {hand} puyu {puyu} "
                      f"lm-eval strict {strict} flexible {flex}")
        print(f"  {dis} of {len(grows)} items where lm-eval's strict or flexible verdict differs from puyu's")
        print("MATH: puyu vs lm-eval minerva math_verify / hendrycks exact_match (raw output; puyu's extraction)")
        dis = 0
        for out, rec, hand in mrows:
            puyu = int(m.score(out, rec))
            mv, hx, hn = lm_eval_math(out, rec["solution"], m.extract(out, rec))
            if not (puyu == mv == hn):
                dis += 1
                print(f"  {out!r:<50} gold {rec['solution'][12:]!r:<28} hand {hand} puyu {puyu} "
                      f"minerva-math_verify {mv} hendrycks {hx} hendrycks($puyu-extracted$) {hn}")
        print(f"  {dis} of {len(mrows)} items where minerva's math_verify or hendrycks' equivalence differs from "
              "puyu (hendrycks on the raw output is 0 for every \\boxed answer: it reads only `$...$`)")

    peer = opencompass_verdicts(args.opencompass_python,
                                [{"task": "gsm8k", "output": o, "reference": r["answer"]} for o, r, _ in grows]
                                + [{"task": "math", "output": o, "reference": r["solution"]} for o, r, _ in mrows])
    if peer is None:
        return
    version, verdicts = peer
    gv, mv = verdicts[:len(grows)], verdicts[len(grows):]
    print(f"GSM8K: puyu vs OpenCompass {version} gsm8k_gen_1d7fe4 (few-shot: last number) / "
          "gsm8k_0shot_v2 (math_postprocess_v2 + MATHEvaluator v2)")
    dis = [0, 0]
    for (out, rec, hand), v in zip(grows, gv):
        puyu = int(g.score(out, rec))
        dis[0] += v["fewshot"] != puyu
        dis[1] += v["zeroshot_v2"] != puyu
        if not (puyu == v["fewshot"] == v["zeroshot_v2"]):
            print(f"  {out!r:<60} ref {rec['answer'].split('####')[-1].strip()!r:<10} hand {hand} puyu {puyu} "
                  f"oc-fewshot {v['fewshot']} (pred {v['pred']!r}) oc-0shot-v2 {v['zeroshot_v2']} (pred {v['pred_v2']!r})")
    print(f"  {dis[0]} of {len(grows)} items where OpenCompass's few-shot verdict differs from puyu's, "
          f"{dis[1]} where its zero-shot v2 verdict does")
    print(f"MATH: puyu vs OpenCompass {version} math_0shot_gen_393424 (math_postprocess_v2 + MATHEvaluator v2)")
    dis = 0
    for (out, rec, hand), v in zip(mrows, mv):
        puyu = int(m.score(out, rec))
        if v["v2"] != puyu:
            dis += 1
            print(f"  {out!r:<50} gold {rec['solution'][12:]!r:<28} hand {hand} puyu {puyu} "
                  f"oc-v2 {v['v2']} (pred {v['pred']!r}, gold {v['gold']!r})")
    print(f"  {dis} of {len(mrows)} items where OpenCompass's MATH verdict differs from puyu's")


if __name__ == "__main__":
    main()
