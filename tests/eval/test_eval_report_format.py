"""report.md as a reader sees it, built from run folders written the way the runner writes them: the
K of pass@K/maj@K in the header, a needle run with no length above the threshold said in words, the
gsm8k/MATH reference in failure lines as the number or boxed answer the scorer compared, and the
heatmap's trained-length line placed by log length on the geometric length axis."""

from __future__ import annotations

import json
import math

from puyu.eval import report as R


def _folder(out, name, run, rows):
    d = out / name
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps(run))
    (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _row(i, score, record, rep=0, extracted=None, output="x"):
    return {"id": str(i), "repeat": rep, "groups": {}, "record": record, "output": output, "score": score,
            "extracted": extracted, "details": {}, "prompt_tokens": 3, "completion_tokens": 2}


def test_report_names_k_references_and_an_unreached_threshold(tmp_path):
    gold = {"question": "q", "answer": "She pays 35000 + 35000 = <<35000+35000=70000>>70000 dollars.\n#### 70000"}
    rows = [_row(i, float(r == 0), gold, rep=r, extracted="70000" if r == 0 else "5") for i in range(2) for r in range(3)]
    _folder(tmp_path, "gsm8k", {"n_samples": 2, "generation": {"repeats": 3}}, rows)
    math_rec = {"problem": "p", "solution": "So it is $\\boxed{\\frac{1}{2}}$. Done, with more words after it."}
    _folder(tmp_path, "math", {"n_samples": 1, "generation": {"repeats": 3}},
            [_row(0, 0.0, math_rec, rep=r, extracted="1") for r in range(3)])
    needle = [_row(f"{L}-{p}", 0.0, {"answers": ["7"], "length": L, "depth": p}) for L in (64, 256) for p in (0, 100)]
    _folder(tmp_path, "needle", {"n_samples": 4, "options": {"trained_length": "128"}}, needle)
    R.build(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| task | samples | pass@1 | pass@3 | maj@3 | notes |" in md
    assert 'reference "70000"' in md and 'reference "\\\\frac{1}{2}"' in md, md
    assert "effective length None" not in md and "no length reaches 85.6% recall (trained 128)" in md
    assert (tmp_path / "needle" / "needle_heatmap.png").stat().st_size > 0


def test_several_k_go_in_the_cells():
    t = {"folder": "a", "n_samples": 1, "complete": True, "empty_outputs": 0, "details": {}, "by": {},
         "failures": [], "pass@1": {"mean": 0.5, "ci95": [0.1, 0.9], "n": 1}}
    two = {**t, "repeats": 2, "pass@2": t["pass@1"], "maj@2": t["pass@1"]}
    four = {**t, "folder": "b", "repeats": 4, "pass@4": t["pass@1"], "maj@4": t["pass@1"]}
    md = R.markdown([two, four], bars=False)
    assert "| pass@k | maj@k |" in md and "(k=2)" in md and "(k=4)" in md


def test_the_trained_length_line_sits_by_log_length():
    assert R.trained_x([128, 256, 512, 1024], 512) == 2.0
    assert math.isclose(R.trained_x([256, 1024], 512), 0.5)  # halfway in ratio: the column boundary
    assert math.isclose(R.trained_x([128, 406, 1290, 4096], 512), 1 + math.log(512 / 406) / math.log(1290 / 406))
    assert R.trained_x([1024, 2048], 512) == -0.5 and R.trained_x([128, 256], 512) == 1.5
