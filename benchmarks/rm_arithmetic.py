"""Can the conditional reward model learn the arithmetic rubric? Train an RM (initialised from a chat
model) on programmatic arithmetic pairs (`puyu.rl.judge.arithmetic_pairs`: `a+b=c` vs `a+b=c+k`) and
report held-out pairwise accuracy on pairs over the recipe's held-out test problems, every `--every` steps.

`--probe` trains nothing: it asks whether the frozen body already carries the answer's correctness. A
logistic regression (torch LBFGS, L2) on the difference of the final hidden states of chosen and rejected,
read at the reward token, at `<|im_end|>` and at the answer's last digit, fitted on the training pairs and
scored on the held-out ones; beside it the chat model's own preference (summed log-probability of the
reply tokens, right vs near miss) on the same held-out pairs.

`--dense-weight W` adds the dense auxiliary (Bradley-Terry on v_head at every position where chosen and
rejected differ, `puyu.rl.losses.dense_pair_loss`) and `--lm-weight W` the next-token loss on the chosen
replies through the chat model's frozen LM head, `--distill-weight W` the squared error between v_head at
each reply token and the chat model's log-probability of it (`rm.dense_weight`, `rm.lm_weight`,
`rm.distill_weight` of the recipe).
`--judge-pairs FILE` mixes the judge's pairs of the other domains into training (its `split: train`
rows) and reports held-out accuracy per domain on its `split: held_out` rows; `--make-judge N` first
writes that file from the chat model's own samples (N training and N held-out prompts, arithmetic and
tool kinds, 4 samples each, one pair per domain: what `puyu train rm` does with `rm.per_domain`).

  python benchmarks/rm_arithmetic.py --model runs/nano/chat --tests runs/nano/data/test_problems.json \
      --pairs 8000 --steps 600 --lr 3e-4 --batch 32 --dense-weight 1
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
    ap.add_argument("--probe", action="store_true", help="linear probes on the frozen body (no training)")
    ap.add_argument("--dense-weight", type=float, default=0.0)
    ap.add_argument("--lm-weight", type=float, default=0.0)
    ap.add_argument("--distill-weight", type=float, default=0.0)
    ap.add_argument("--judge-pairs", default=None, help="JSONL of judge pairs with split train/held_out")
    ap.add_argument("--make-judge", type=int, default=0, help="first sample N+N prompts into --judge-pairs")
    ap.add_argument("--judge-only", action="store_true", help="train on the judge pairs alone (no arithmetic pairs)")
    ap.add_argument("--tool-pairs", type=int, default=0,
                    help="add N programmatic tool pairs (puyu.rl.judge.tool_pairs) to training")
    ap.add_argument("--train-last", type=int, default=0,
                    help="train only the last N layers, the final norm and v_head (0: the whole RM)")
    ap.add_argument("--save", default=None, help="write the trained RM here (released layout)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    from puyu.model.checkpoint import load_model
    from puyu.model.tokenizer import load_tokenizer
    from puyu.rl.judge import arithmetic_pairs, read_pairs, tool_pairs, write_pairs
    from puyu.rl.reward_model import RewardModel, default_reward_token
    from puyu.rl.rm_train import encode_pairs, frozen_teacher, pairwise_accuracy, train_rm_steps
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
    if a.probe:
        probe(lm, rm, tr, ho)
        return
    ho_judge = []
    if a.judge_pairs:
        if a.make_judge:
            write_pairs(a.judge_pairs, sample_judge_pairs(lm, tok, a.tests, a.make_judge, a.seed))
        recs = read_pairs(a.judge_pairs)
        tr_j = encode_pairs(tok, [p for p in recs if p.get("split") == "train"], rm.reward_token_id)
        ho_judge = encode_pairs(tok, [p for p in recs if p.get("split") == "held_out"], rm.reward_token_id)
        tr = tr_j if a.judge_only else tr + tr_j
    if a.tool_pairs:
        tr = tr + encode_pairs(tok, tool_pairs(a.tool_pairs, a.seed), rm.reward_token_id)
    if a.judge_pairs or a.tool_pairs:
        print(json.dumps({"judge_train": len(tr_j) if a.judge_pairs else 0, "judge_held_out": len(ho_judge),
                          "tool_pairs": a.tool_pairs, "train_pairs": len(tr)}), flush=True)
    teacher = frozen_teacher(lm) if a.lm_weight > 0 or a.distill_weight > 0 else None
    if a.train_last:
        keep = {f"model.layers.{i}." for i in range(rm.config.num_hidden_layers - a.train_last, rm.config.num_hidden_layers)}
        for name, p in rm.named_parameters():
            p.requires_grad_(name.startswith(tuple(keep)) or name.startswith(("model.norm.", "v_head.")))
    opt = build_optimizer(rm, a.lr, weight_decay=0.0)
    t0, cpu0 = time.perf_counter(), time.process_time()
    done = 0
    while done < a.steps:
        n = min(a.every, a.steps - done)
        logs = train_rm_steps(rm, opt, tr, n, a.batch, a.seed + done, focal=not a.no_focal,
                              dense_weight=a.dense_weight, lm_weight=a.lm_weight, distill_weight=a.distill_weight,
                              teacher=teacher)
        done += n
        acc = pairwise_accuracy(rm, ho)
        tr_acc = sum(r["acc"] for r in logs) / len(logs)
        rec = {"step": done, "train_acc": round(tr_acc, 3), "loss": round(logs[-1]["loss"], 4)}
        for key in ("bt_loss", "dense_loss", "lm_loss", "distill_loss"):
            if key in logs[-1]:
                rec[key] = round(sum(r[key] for r in logs) / len(logs), 4)
        rec.update(held_out=round(acc["overall"], 4), ci95=[round(x, 3) for x in acc["ci95"]])
        if ho_judge:
            jd = pairwise_accuracy(rm, ho_judge)["domains"]
            rec["judge_held_out"] = {d: [round(v["accuracy"], 3), v["n"], [round(x, 3) for x in v["ci95"]]]
                                     for d, v in jd.items()}
        rec.update(wall_s=round(time.perf_counter() - t0, 1), cpu_s=round(time.process_time() - cpu0, 1))
        print(json.dumps(rec), flush=True)
    if a.save:
        from puyu.rl.reward_model import save_reward_model

        save_reward_model(rm, a.save, tok)


def sample_judge_pairs(lm, tok, tests: str, n: int, seed: int) -> list[dict]:
    """Judge pairs over the chat model's own samples, as `puyu train rm` makes them (`rm.per_domain`):
    `n` training prompts (arithmetic and tool, test problems excluded) and `n` held-out prompts of their
    own (arithmetic from the test problems), 4 temperature-1 samples of <= 32 tokens each."""
    from puyu.rl import common as C
    from puyu.rl.recipe import AlignRecipe, PolicySection, PromptSection
    from puyu.rl.rm_train import judge_pairs

    r = AlignRecipe(seed=seed, device="cpu", policy=PolicySection(init="-"),
                    prompts=PromptSection(exclude_file=tests, weights={"arithmetic": 0.6, "tool": 0.4}))
    lm = lm.eval()
    train = judge_pairs(lm, tok, C.train_prompts(r, n, "rm"), 4, 32, 1.0, seed, per_domain=True, group="train-")
    held = judge_pairs(lm, tok, C.eval_prompts(r, n, "rm-held-out"), 4, 32, 1.0, seed + 1, per_domain=True,
                       group="held-")
    return [{**p, "split": "train"} for p in train] + [{**p, "split": "held_out"} for p in held]


@torch.no_grad()
def _features(rm, seqs, where: int) -> torch.Tensor:
    """Final hidden state [N, C] of each sequence at offset `where` from its end (-1: reward token)."""
    from puyu.rl.reward_model import pad_batch, padded_hidden

    out = []
    for i in range(0, len(seqs), 64):
        ids, attn = pad_batch(seqs[i:i + 64], rm.pad_id, "right")
        h = padded_hidden(rm.model, rm.config, ids, attn)
        last = attn.sum(1) - 1
        out.append(h[torch.arange(len(ids)), last + 1 + where])
    return torch.cat(out)


def _fit_probe(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3) -> torch.Tensor:
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


@torch.no_grad()
def _reply_logprob(lm, seqs, n_tail: int) -> list[float]:
    """Summed log-probability of each sequence's tokens before its last `n_tail`, from where chosen and
    rejected start to differ is not known here, so over the whole reply (same prompt on both sides)."""
    out = []
    for s in seqs:
        ids = torch.tensor([s[:-n_tail]])
        lp = torch.log_softmax(lm(ids)[0, :-1].float(), -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        out.append(float(lp.sum()))
    return out


def probe(lm, rm, tr, ho) -> None:
    # offsets from the end: -1 reward token, -3 `<|im_end|>` (then "\n", reward), -4 the last answer digit
    tr = tr[:1500]
    res = {}
    for name, where in (("reward_token", -1), ("im_end", -3), ("last_digit", -4)):
        xc, xr = _features(rm, [p.chosen for p in tr], where), _features(rm, [p.rejected for p in tr], where)
        x = torch.cat([xc - xr, xr - xc])
        y = torch.cat([torch.ones(len(tr)), torch.zeros(len(tr))])
        w = _fit_probe(x, y)
        train_acc = float(((x @ w > 0).float() == y).float().mean())
        hc, hr = _features(rm, [p.chosen for p in ho], where), _features(rm, [p.rejected for p in ho], where)
        res[name] = {"train": round(train_acc, 3), "held_out": round(float(((hc - hr) @ w > 0).float().mean()), 3)}
    # the LM's own preference: drop the reward token and the newline after <|im_end|>
    lc, lr_ = _reply_logprob(lm, [p.chosen for p in ho], 2), _reply_logprob(lm, [p.rejected for p in ho], 2)
    res["lm_logprob_prefers_right"] = round(sum(a > b for a, b in zip(lc, lr_)) / len(ho), 3)
    res["n_train_pairs"], res["n_held_out_pairs"] = len(tr), len(ho)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
