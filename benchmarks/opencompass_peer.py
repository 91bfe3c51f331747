"""OpenCompass's own GSM8K and MATH answer extraction and equivalence, run inside OpenCompass's virtualenv.

Not imported by puyu: `benchmarks/scorer_parity.py` runs it as `PEER_PYTHON opencompass_peer.py`, writes
one JSON object per line on stdin ({"task": "gsm8k" | "math", "output": model text, "reference": the
dataset row's `answer` (GSM8K, "... #### N") or `solution` (MATH, "... \\boxed{X} ...")}) and reads one
JSON object per line back. Every function called is OpenCompass's (0.5.x), as its configs wire them:
- GSM8K, `gsm8k_gen_1d7fe4` (the config OpenCompass's GSM8K README runs for InternLM2-Chat; 4-shot,
  "The answer is N" exemplars): prediction `gsm8k_postprocess` (the last `-?\\d+\\.\\d+|-?\\d+` before any
  "Question:"), reference `gsm8k_dataset_postprocess` (after "#### ", commas removed), verdict
  `Gsm8kEvaluator.is_equal` (equal strings, or |float(pred) - int(ref)| < 1e-6);
- GSM8K, `gsm8k_0shot_v2_gen_a58960` (zero-shot chat, "put your final answer within \\boxed{}"):
  prediction `math_postprocess_v2`, the same reference, verdict `MATHEvaluator(version="v2").is_equiv`;
- MATH, `math_0shot_gen_393424` (the config its MATH README runs for InternLM2-Chat): the reference is
  `extract_boxed_answer(solution)` as `MATHDataset.load` stores it, prediction `math_postprocess_v2`,
  verdict `MATHEvaluator(version="v2").is_equiv`.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    answer, sys.stdout = sys.stdout, sys.stderr  # anything OpenCompass prints goes to stderr, not the protocol
    import opencompass
    from opencompass.datasets.gsm8k import Gsm8kEvaluator, gsm8k_dataset_postprocess, gsm8k_postprocess
    from opencompass.datasets.math import MATHEvaluator, extract_boxed_answer, math_postprocess_v2

    def reply(obj: dict) -> None:
        answer.write(json.dumps(obj) + "\n")
        answer.flush()

    fewshot, v2 = Gsm8kEvaluator(), MATHEvaluator(version="v2")
    reply({"version": opencompass.__version__})
    for line in sys.stdin:
        row = json.loads(line)
        out, ref = row["output"], row["reference"]
        if row["task"] == "gsm8k":
            gold = gsm8k_dataset_postprocess(ref)
            pred, pred_v2 = gsm8k_postprocess(out), math_postprocess_v2(out)
            res = {"pred": pred, "fewshot": int(bool(fewshot.is_equal(pred, gold))),
                   "pred_v2": pred_v2, "zeroshot_v2": int(bool(v2.is_equiv(pred_v2, gold)))}
        else:
            gold = extract_boxed_answer(ref)
            pred = math_postprocess_v2(out)
            res = {"pred": pred, "gold": gold, "v2": int(bool(v2.is_equiv(pred, gold)))}
        reply(res)


if __name__ == "__main__":
    main()
