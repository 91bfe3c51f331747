"""`puyu train rm RECIPE.yaml`: train the conditional reward model on preference pairs.

Pairs come from JSONL files (`rm.pairs`, the format of `puyu.rl.judge`) and/or from the judge over the
policy's own samples (`rm.judge_prompts` prompts x `rm.samples` replies, sampled through the engine).
A seeded `rm.held_out` fraction of the pairs is kept out of training; the report gives the pairwise
accuracy (chosen scored above rejected) per domain on it, and the score distributions as a PNG.

Outputs in `<out_dir>/rm/`: pairs.jsonl (all pairs, with `split`), hf/ (the reward model in the released
layout), report.json, scores.png, metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch

from puyu.rl import common as C
from puyu.rl.judge import (
    Reply,
    build_domain_pairs,
    build_pairs,
    pair_domain,
    pair_ids,
    read_pairs,
    write_pairs,
)
from puyu.rl.losses import bradley_terry_loss
from puyu.rl.recipe import AlignRecipe
from puyu.rl.reward_model import RewardModel, pad_batch, save_reward_model
from puyu.train.optim import build_optimizer


def judge_pairs(actor, tok, samples: list[dict], k: int, max_new_tokens: int, temperature: float, seed: int,
                engine=None, max_turns: int = 1, per_domain: bool = False, group: str = "") -> list[dict]:
    """K sampled replies per prompt from `actor` through the engine, turned into pairs by the judge: one
    pair per prompt (`build_pairs`), or with `per_domain` one per domain of its kind (`build_domain_pairs`)."""
    from puyu.engine.sampling import SamplingParams
    from puyu.rl.rollout import generate_rollouts, make_engine

    own = engine is None
    engine = engine or make_engine(actor, tok)
    try:
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
        flat = [s for s in samples for _ in range(k)]
        ros = generate_rollouts(engine, tok, flat, params, seed=seed, max_turns=max_turns)
    finally:
        if own:
            engine.close()
    replies: list[list[Reply]] = [[ro.first_reply for ro in ros[i * k:(i + 1) * k]] for i in range(len(samples))]
    if per_domain:
        return build_domain_pairs(samples, replies, seed, group)
    return build_pairs(samples, replies, seed)


def split_pairs(pairs: list[dict], held_out: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded split: (train, held-out), by prompt: pairs sharing a `prompt_id` (the domains of one
    prompt's replies) fall on the same side; pairs without one are split one by one."""
    groups: dict = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.get("prompt_id", f"#{i}"), []).append(i)
    keys = list(groups)
    random.Random(f"puyu-rm-split-{seed}").shuffle(keys)
    n_out = int(round(len(keys) * held_out))
    out = {i for k in keys[:n_out] for i in groups[k]}
    return [p for i, p in enumerate(pairs) if i not in out], [p for i, p in enumerate(pairs) if i in out]


def encode_pairs(tok, pairs: list[dict], reward_token_id: int) -> list[tuple[list[int], list[int], str]]:
    return [(*pair_ids(tok, p, reward_token_id)[:2], pair_domain(p)) for p in pairs]


def rm_step(rm: RewardModel, optimizer, batch: list[tuple], focal: bool, barrier: float, bound: float,
            grad_clip: float = 1.0) -> dict:
    dev = next(rm.parameters()).device
    ids, attn = pad_batch([c for c, _, _ in batch] + [r for _, r, _ in batch], rm.pad_id, "right", dev)
    s = rm(ids, attn)
    n = len(batch)
    loss = bradley_terry_loss(s[:n], s[n:], focal=focal, barrier_weight=barrier, bound=bound)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(rm.parameters(), grad_clip)
    optimizer.step()
    return {"loss": float(loss.detach()), "acc": float((s[:n] > s[n:]).float().mean()), "grad_norm": float(gn)}


def train_rm_steps(rm: RewardModel, optimizer, data: list[tuple], steps: int, batch_size: int, seed: int,
                   focal: bool = True, barrier: float = 0.02, bound: float = 5.0, on_step=None) -> list[dict]:
    """`steps` optimizer steps over `data` (encoded pairs) in seeded epochs of shuffled batches."""
    rng = random.Random(f"puyu-rm-order-{seed}")
    order: list[int] = []
    logs = []
    rm.train()
    for step in range(steps):
        if len(order) < batch_size:
            perm = list(range(len(data)))
            rng.shuffle(perm)
            order += perm
        idx, order = order[:batch_size], order[batch_size:]
        rec = rm_step(rm, optimizer, [data[i] for i in idx], focal, barrier, bound)
        logs.append(rec)
        if on_step:
            on_step(step + 1, rec)
    rm.eval()
    return logs


@torch.no_grad()
def pairwise_accuracy(rm: RewardModel, data: list[tuple], batch_size: int = 32) -> dict:
    """Held-out accuracy per domain and overall, each with its 95% Wilson interval (`ci95`), and the
    chosen and rejected scores."""
    from puyu.eval.stats import wilson
    from puyu.rl.reward_model import score_ids

    rm.eval()
    sc = score_ids(rm, [c for c, _, _ in data], batch_size)
    sr = score_ids(rm, [r for _, r, _ in data], batch_size)
    by: dict[str, list] = {}
    for (_, _, d), a, b in zip(data, sc, sr):
        by.setdefault(d, []).append((a, b))
    wins = sum(a > b for a, b in zip(sc, sr))
    res = {"overall": wins / max(len(data), 1), "n": len(data), "ci95": list(wilson(wins, len(data))), "domains": {}}
    for d, v in sorted(by.items()):
        w = sum(a > b for a, b in v)
        res["domains"][d] = {"accuracy": w / len(v), "n": len(v), "ci95": list(wilson(w, len(v))),
                             "chosen_mean": sum(a for a, _ in v) / len(v), "rejected_mean": sum(b for _, b in v) / len(v)}
    res["scores"] = {d: {"chosen": [a for a, _ in v], "rejected": [b for _, b in v]} for d, v in by.items()}
    return res


def plot_scores(acc: dict, png: Path, title: str = "reward-model scores (held-out pairs)") -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    doms = sorted(acc["scores"])
    if not doms:
        return None
    fig, axes = plt.subplots(1, len(doms), figsize=(3.2 * len(doms), 3), dpi=110, squeeze=False)
    for ax, d in zip(axes[0], doms):
        s = acc["scores"][d]
        lo = min(s["chosen"] + s["rejected"])
        hi = max(s["chosen"] + s["rejected"])
        bins = [lo + (hi - lo + 1e-6) * i / 20 for i in range(21)]
        ax.hist(s["chosen"], bins=bins, alpha=0.6, label="chosen")
        ax.hist(s["rejected"], bins=bins, alpha=0.6, label="rejected")
        ax.set_title(f"{d}: acc {100 * acc['domains'][d]['accuracy']:.0f}% (n={acc['domains'][d]['n']})", fontsize=9)
        ax.set_xlabel("score")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png


def run_rm(r: AlignRecipe) -> dict:
    """The whole RM stage (see the module docstring); returns the report."""
    from puyu.train.metrics import MetricsLog

    r.validate()
    out = C.start_stage(r, "rm")
    t0 = time.perf_counter()
    tok, actor = C.load_policy(r)
    rm = C.trainable(C.reward_model_for(r, actor, tok), r)
    pairs: list[dict] = []
    for f in r.rm.pairs:
        pairs += read_pairs(f)
    n_file = len(pairs)
    if r.rm.judge_prompts > 0:
        samples = C.train_prompts(r, r.rm.judge_prompts, "rm")
        pairs += judge_pairs(actor.eval(), tok, samples, r.rm.samples, r.rm.max_new_tokens, r.rm.temperature, r.seed,
                             per_domain=r.rm.per_domain, group="train-")
    if len(pairs) < 2:
        raise C.ConfigError("the reward model needs pairs: list rm.pairs files or set rm.judge_prompts")
    if r.rm.held_out_prompts > 0:  # a held-out set of its own: prompts never trained on, kinds balanced
        train = pairs
        held = judge_pairs(actor.eval(), tok, C.eval_prompts(r, r.rm.held_out_prompts, "rm-held-out"), r.rm.samples,
                           r.rm.max_new_tokens, r.rm.temperature, r.seed + 1, per_domain=r.rm.per_domain,
                           group="held-")
    else:
        train, held = split_pairs(pairs, r.rm.held_out, r.seed)
    write_pairs(out / "pairs.jsonl", [{**p, "split": "train"} for p in train] + [{**p, "split": "held_out"} for p in held])
    tr_data = encode_pairs(tok, train, rm.reward_token_id)
    ho_data = encode_pairs(tok, held, rm.reward_token_id)
    steps = max(1, math.ceil(len(tr_data) * r.rm.epochs / r.rm.batch_size))
    opt = build_optimizer(rm, r.rm.lr, weight_decay=r.rm.weight_decay)
    metrics = MetricsLog(out / "metrics.jsonl")
    metrics.reset()
    C.log("rm", f"{len(pairs)} pairs ({n_file} from files), {len(train)} train / {len(held)} held out; "
               f"{steps} steps of {r.rm.batch_size}; reward token {rm.reward_token_id}")
    before = pairwise_accuracy(rm, ho_data) if ho_data else None
    train_rm_steps(rm, opt, tr_data, steps, r.rm.batch_size, r.seed, r.rm.focal, r.rm.barrier_weight, r.rm.bound,
                   on_step=lambda s, rec: metrics.log("train", s, **rec))
    acc = pairwise_accuracy(rm, ho_data) if ho_data else pairwise_accuracy(rm, tr_data)
    save_reward_model(C.plain(rm), out / "hf", tok)
    plot_scores(acc, out / "scores.png")
    src = {}
    for p in pairs:
        key = f"{pair_domain(p)}/{p.get('source', 'file')}"
        src[key] = src.get(key, 0) + 1
    report = {"pairs": len(pairs), "train": len(train), "held_out": len(held), "sources": src, "steps": steps,
              "accuracy": {k: v for k, v in acc.items() if k != "scores"},
              "accuracy_before": ({k: v for k, v in before.items() if k != "scores"} if before else None),
              "seconds": round(time.perf_counter() - t0, 1), "hf_dir": str(out / "hf")}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    C.log("rm", "held-out pairwise accuracy: " + ", ".join(
        f"{d} {v['accuracy']:.3f} (n={v['n']})" for d, v in acc["domains"].items()))
    return report
