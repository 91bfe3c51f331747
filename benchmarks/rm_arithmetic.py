"""Can the conditional reward model learn the arithmetic rubric? Train an RM (initialised from a chat
model) on programmatic arithmetic pairs (`puyu.rl.judge.arithmetic_pairs`: `a+b=c` vs `a+b=c+k`) and
report held-out pairwise accuracy on pairs over the recipe's held-out test problems, every `--every` steps.

  python benchmarks/rm_arithmetic.py --model runs/nano/chat --tests runs/nano/data/test_problems.json \
      --pairs 8000 --steps 600 --lr 3e-4 --batch 32
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tests", required=True, help="test_problems.json of the recipe (held out)")
    ap.add_argument("--pairs", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-focal", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--held-every", type=int, default=2, help="every k-th held-out test problem")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    from puyu.model.checkpoint import load_model
    from puyu.model.tokenizer import load_tokenizer
    from puyu.rl.judge import arithmetic_pairs
    from puyu.rl.reward_model import RewardModel, default_reward_token
    from puyu.rl.rm_train import encode_pairs, pairwise_accuracy, train_rm_steps
    from puyu.tasks.synthetic import Problem
    from puyu.train.optim import build_optimizer

    tok = load_tokenizer(a.model)
    lm = load_model(a.model, dtype="float32")
    rm = RewardModel.from_causal_lm(lm, default_reward_token(tok, lm.config.vocab_size), tok.pad_id, tok).float()
    tests = json.load(open(a.tests, encoding="utf-8"))
    held = [Problem(*p) for p in tests["small"]][:: a.held_every]
    exclude = {Problem(*p) for k in ("small", "big") for p in tests.get(k, [])}
    tr = encode_pairs(tok, arithmetic_pairs(a.pairs, a.seed, exclude), rm.reward_token_id)
    ho = encode_pairs(tok, arithmetic_pairs(len(held), a.seed + 1, problems=held), rm.reward_token_id)
    opt = build_optimizer(rm, a.lr, weight_decay=0.0)
    t0, cpu0 = time.perf_counter(), time.process_time()
    done = 0
    while done < a.steps:
        n = min(a.every, a.steps - done)
        logs = train_rm_steps(rm, opt, tr, n, a.batch, a.seed + done, focal=not a.no_focal)
        done += n
        acc = pairwise_accuracy(rm, ho)
        tr_acc = sum(r["acc"] for r in logs) / len(logs)
        print(json.dumps({"step": done, "train_acc": round(tr_acc, 3), "loss": round(logs[-1]["loss"], 4),
                          "held_out": round(acc["overall"], 4), "ci95": [round(x, 3) for x in acc["ci95"]],
                          "wall_s": round(time.perf_counter() - t0, 1),
                          "cpu_s": round(time.process_time() - cpu0, 1)}), flush=True)


if __name__ == "__main__":
    main()
