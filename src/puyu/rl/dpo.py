"""`puyu train dpo RECIPE.yaml`: Direct Preference Optimization on pair files (the offline baseline).

Pairs: `dpo.pairs` JSONL files (the format of `puyu.rl.judge`; the domain rubric is not shown to the
policy, only to a reward model), or, when none are listed, `<out_dir>/rm/pairs.jsonl` written by
`puyu train rm`. A seeded `dpo.held_out` fraction is kept out; the report gives the held-out preference
accuracy (the implicit reward of chosen above rejected) per domain before and after, and the greedy
held-out task scores. Loss: -log sigmoid(beta * margin) on summed reply log-probabilities against the
frozen SFT reference (Rafailov et al. 2023, beta 0.1). Outputs in `<out_dir>/dpo/`.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch

from puyu.rl import common as C
from puyu.rl.judge import pair_domain, pair_ids, read_pairs
from puyu.rl.losses import dpo_loss
from puyu.rl.recipe import AlignRecipe
from puyu.rl.rollout import seq_batch, sequence_logprob
from puyu.train.optim import build_optimizer


def encode_dpo(tok, pairs: list[dict]) -> list[tuple]:
    out = []
    for p in pairs:
        c, r, n = pair_ids(tok, p)
        out.append((c[:n], c[n:], r[n:], pair_domain(p)))
    return out


def _logps(model, tok, data: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    prompts = [d[0] for d in data] * 2
    resp = [d[1] for d in data] + [d[2] for d in data]
    b = seq_batch(prompts, resp, [[1] * len(x) for x in resp], tok.pad_id).to(next(model.parameters()).device)
    lp = sequence_logprob(model, b)
    return lp[: len(data)], lp[len(data):]


@torch.no_grad()
def preference_accuracy(actor, ref, tok, data: list[tuple], beta: float, batch: int = 16) -> dict:
    """Per-domain fraction of pairs whose implicit reward margin is positive."""
    by: dict[str, list[float]] = {}
    for i in range(0, len(data), batch):
        chunk = data[i:i + batch]
        pc, pr = _logps(actor, tok, chunk)
        rc, rr = _logps(ref, tok, chunk)
        _, margin = dpo_loss(pc, pr, rc, rr, beta)
        for d, m in zip(chunk, margin.tolist()):
            by.setdefault(d[3], []).append(m)
    allm = [m for v in by.values() for m in v]
    return {"overall": sum(m > 0 for m in allm) / max(len(allm), 1),
            "domains": {d: sum(m > 0 for m in v) / len(v) for d, v in sorted(by.items())}}


def run_dpo(r: AlignRecipe) -> dict:
    from puyu.model.checkpoint import save_pretrained
    from puyu.rl.rm_train import split_pairs
    from puyu.rl.rollout import make_engine
    from puyu.train.metrics import MetricsLog

    r.validate()
    out = C.start_stage(r, "dpo")
    t0 = time.perf_counter()
    tok, actor = C.load_policy(r)
    ref = C.frozen_copy(actor, C.frozen_dtype(C.device_of(r)))
    actor = C.trainable(actor, r)
    files = r.dpo.pairs or [str(Path(r.out_dir) / "rm" / "pairs.jsonl")]
    pairs = [p for f in files for p in read_pairs(f)]
    train, held = split_pairs(pairs, r.dpo.held_out, r.seed)
    tr, ho = encode_dpo(tok, train), encode_dpo(tok, held)
    d = r.dpo
    steps = max(1, math.ceil(len(tr) * d.epochs / d.batch_size))
    opt = build_optimizer(actor, d.lr, weight_decay=0.0)
    metrics = MetricsLog(out / "metrics.jsonl")
    metrics.reset()
    actor.eval()
    before = preference_accuracy(actor, ref, tok, ho, d.beta) if ho else None
    rng = random.Random(f"puyu-dpo-{r.seed}")
    order: list[int] = []
    for step in range(steps):
        if len(order) < d.batch_size:
            perm = list(range(len(tr)))
            rng.shuffle(perm)
            order += perm
        idx, order = order[:d.batch_size], order[d.batch_size:]
        chunk = [tr[i] for i in idx]
        with torch.no_grad():
            rc, rr = _logps(ref, tok, chunk)
        pc, pr = _logps(actor, tok, chunk)
        loss, margin = dpo_loss(pc, pr, rc.float(), rr.float(), d.beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(actor.parameters(), 1.0)
        opt.step()
        metrics.log("train", step + 1, loss=float(loss.detach()), margin=float(margin.mean()),
                    acc=float((margin > 0).float().mean()), grad_norm=float(gn))
    after = preference_accuracy(actor, ref, tok, ho, d.beta) if ho else None
    engine = make_engine(actor, tok)
    try:
        ev = C.greedy_eval(engine, tok, C.eval_prompts(r), r.ppo.max_new_tokens, r.ppo.max_turns)
    finally:
        engine.close()
    save_pretrained(C.plain(actor), out / "hf", tokenizer=tok)
    report = {"pairs": len(pairs), "train": len(tr), "held_out": len(ho), "steps": steps,
              "preference_accuracy_before": before, "preference_accuracy_after": after, "eval": ev,
              "seconds": round(time.perf_counter() - t0, 1), "hf_dir": str(out / "hf")}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report
