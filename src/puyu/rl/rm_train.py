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
import os
import random
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

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
from puyu.rl.losses import bradley_terry_loss, dense_pair_loss
from puyu.rl.recipe import AlignRecipe
from puyu.rl.reward_model import RewardModel, RewardModelError, pad_batch, padded_hidden, save_reward_model
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


class EncodedPair(NamedTuple):
    """One pair as reward-model inputs: token ids of chosen and rejected (each ending with the reward
    token), its domain, and the prompt's length in tokens (rubric included; the replies start there)."""

    chosen: list[int]
    rejected: list[int]
    domain: str
    prompt_len: int


def encode_pairs(tok, pairs: list[dict], reward_token_id: int) -> list[EncodedPair]:
    out = []
    for p in pairs:
        c, r, n_head = pair_ids(tok, p, reward_token_id)
        out.append(EncodedPair(c, r, pair_domain(p), n_head))
    return out


def divergence(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists (the first position where they differ)."""
    return len(os.path.commonprefix([a, b]))  # element-wise on any sequences, not only paths


def span_positions(starts: list[int], ends: list[int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) [M] of the positions t in [max(starts[i], 1), ends[i]) of every row i."""
    rows, cols = [], []
    for i, (a, b) in enumerate(zip(starts, ends)):
        for t in range(max(a, 1), b):
            rows.append(i)
            cols.append(t)
    return torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(cols, dtype=torch.long, device=device)


def reply_lm_loss(lm_head: torch.nn.Module, h: torch.Tensor, ids: torch.Tensor, starts: list[int],
                  ends: list[int]) -> torch.Tensor:
    """Next-token cross-entropy (mean over tokens) of the reply tokens ids[i, starts[i]:ends[i]], read by
    `lm_head` from the final hidden states h [n, T, C] one position earlier (ids [n, T], right-padded)."""
    r, c = span_positions(starts, ends, h.device)
    if not len(r):
        return h.sum() * 0.0
    logits = lm_head(h[r, c - 1]).float()  # [M, V]
    return F.cross_entropy(logits, ids[r, c])


@torch.no_grad()
def token_logprobs(teacher, ids: torch.Tensor, attn: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                   ) -> torch.Tensor:
    """log p_teacher(ids[r, c] | ids[r, :c]) [M] at the given positions of a right-padded batch."""
    h = padded_hidden(teacher.model, teacher.config, ids, attn)
    logp = torch.log_softmax(teacher.output(h[rows, cols - 1]).float(), -1)
    return logp.gather(-1, ids[rows, cols][:, None]).squeeze(-1)


def rm_step(rm: RewardModel, optimizer, batch: list[EncodedPair], focal: bool, barrier: float, bound: float,
            grad_clip: float = 1.0, dense_weight: float = 0.0, lm_weight: float = 0.0, distill_weight: float = 0.0,
            teacher=None) -> dict:
    """One optimizer step on a batch of encoded pairs. Loss: Bradley-Terry on the scores at the reward
    token (focal weight and log barrier as set), plus `dense_weight` x `dense_pair_loss` (v_head read at
    every position where chosen and rejected differ), plus `lm_weight` x the next-token cross-entropy of
    the chosen replies (reward token excluded) through the frozen `teacher`'s LM head, plus
    `distill_weight` x the mean squared error between v_head at each reply token (both replies, reward
    token excluded) and the teacher's log-probability of that token, clamped to [-bound, 0]. `teacher`
    is a frozen causal LM (the policy the RM starts from); it is not part of the reward model and is not
    saved. The score stays `v_head` at the reward token (released layout)."""
    if (lm_weight > 0 or distill_weight > 0) and teacher is None:
        raise RewardModelError("rm lm_weight or distill_weight > 0 needs the policy as teacher")
    dev = next(rm.parameters()).device
    n = len(batch)
    ids, attn = pad_batch([p.chosen for p in batch] + [p.rejected for p in batch], rm.pad_id, "right", dev)
    last = rm.reward_positions(ids, attn)
    h = padded_hidden(rm.model, rm.config, ids, attn)  # [2n, T, C]
    v = rm.v_head(h).squeeze(-1).float()  # [2n, T]
    s = v[torch.arange(2 * n, device=dev), last]
    bt = bradley_terry_loss(s[:n], s[n:], focal=focal, barrier_weight=barrier, bound=bound)
    loss = bt
    rec = {}
    if dense_weight > 0:
        start = torch.tensor([divergence(p.chosen, p.rejected) for p in batch], device=dev)
        stop = torch.tensor([min(len(p.chosen), len(p.rejected)) for p in batch], device=dev)
        dl = dense_pair_loss(v[:n], v[n:], start, stop)
        loss = loss + dense_weight * dl
        rec["dense_loss"] = float(dl.detach())
    if lm_weight > 0:
        ll = reply_lm_loss(teacher.output, h[:n], ids[:n], [p.prompt_len for p in batch],
                           [len(p.chosen) - 1 for p in batch])
        loss = loss + lm_weight * ll
        rec["lm_loss"] = float(ll.detach())
    if distill_weight > 0:
        starts = [p.prompt_len for p in batch] * 2
        ends = [len(p.chosen) - 1 for p in batch] + [len(p.rejected) - 1 for p in batch]
        r, c = span_positions(starts, ends, dev)
        target = token_logprobs(teacher, ids, attn, r, c).clamp(min=-bound)
        dd = F.mse_loss(v[r, c], target)
        loss = loss + distill_weight * dd
        rec["distill_loss"] = float(dd.detach())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(rm.parameters(), grad_clip)
    optimizer.step()
    return {"loss": float(loss.detach()), "bt_loss": float(bt.detach()), **rec,
            "acc": float((s[:n] > s[n:]).float().mean()), "grad_norm": float(gn)}


def train_rm_steps(rm: RewardModel, optimizer, data: list[EncodedPair], steps: int, batch_size: int, seed: int,
                   focal: bool = True, barrier: float = 0.02, bound: float = 5.0, on_step=None,
                   dense_weight: float = 0.0, lm_weight: float = 0.0, distill_weight: float = 0.0,
                   teacher=None) -> list[dict]:
    """`steps` optimizer steps (`rm_step`) over `data` (encoded pairs) in seeded epochs of shuffled batches."""
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
        rec = rm_step(rm, optimizer, [data[i] for i in idx], focal, barrier, bound, dense_weight=dense_weight,
                      lm_weight=lm_weight, distill_weight=distill_weight, teacher=teacher)
        logs.append(rec)
        if on_step:
            on_step(step + 1, rec)
    rm.eval()
    return logs


@torch.no_grad()
def pairwise_accuracy(rm: RewardModel, data: list[EncodedPair], batch_size: int = 32) -> dict:
    """Held-out accuracy per domain and overall, each with its 95% Wilson interval (`ci95`), and the
    chosen and rejected scores."""
    from puyu.eval.stats import wilson
    from puyu.rl.reward_model import score_ids

    rm.eval()
    sc = score_ids(rm, [p.chosen for p in data], batch_size)
    sr = score_ids(rm, [p.rejected for p in data], batch_size)
    by: dict[str, list] = {}
    for p, a, b in zip(data, sc, sr):
        by.setdefault(p.domain, []).append((a, b))
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


def uses_teacher(rm_section) -> bool:
    """Whether the RM section's auxiliary losses read the policy (`lm_weight`, `distill_weight`)."""
    return rm_section.lm_weight > 0 or rm_section.distill_weight > 0


def frozen_teacher(lm):
    """A frozen fp32 eval-mode copy of a causal LM: the teacher of the reward model's auxiliary losses
    (`rm.lm_weight`, `rm.distill_weight`); the reward model trains in fp32."""
    import copy

    return copy.deepcopy(lm).float().eval().requires_grad_(False)


def programmatic_pairs(r: AlignRecipe) -> list[dict]:
    """`rm.tool_pairs` tool pairs and `rm.arithmetic_pairs` arithmetic pairs (`puyu.rl.judge`), the
    arithmetic problems of `prompts.exclude_file` left out (they are the held-out set)."""
    from puyu.rl.judge import arithmetic_pairs, tool_pairs

    exclude = C.exclude_set(r) if r.rm.arithmetic_pairs else set()
    return tool_pairs(r.rm.tool_pairs, r.seed) + arithmetic_pairs(r.rm.arithmetic_pairs, r.seed, exclude)


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
    drawn = programmatic_pairs(r)  # [] unless rm.tool_pairs / rm.arithmetic_pairs
    if len(pairs) + len(drawn) < 2:
        raise C.ConfigError("the reward model needs pairs: list rm.pairs files or set rm.judge_prompts, "
                            "rm.tool_pairs or rm.arithmetic_pairs")
    if r.rm.held_out_prompts > 0:  # a held-out set of its own: prompts never trained on, kinds balanced
        train, train_drawn = pairs, drawn
        held = judge_pairs(actor.eval(), tok, C.eval_prompts(r, r.rm.held_out_prompts, "rm-held-out"), r.rm.samples,
                           r.rm.max_new_tokens, r.rm.temperature, r.seed + 1, per_domain=r.rm.per_domain,
                           group="held-")
    else:  # the file/judge pairs and the programmatic ones split by prompt each on their own
        train, held = split_pairs(pairs, r.rm.held_out, r.seed)
        train_drawn, held_drawn = split_pairs(drawn, r.rm.held_out, r.seed)
        held = held + held_drawn
    write_pairs(out / "pairs.jsonl", [{**p, "split": "train"} for p in train + train_drawn] +
                [{**p, "split": "held_out"} for p in held])
    # rm.epochs passes over the file and judge pairs; programmatic pairs (drawn fresh, as many as asked) once
    # each, so adding them leaves the other domains' passes as they were (epochs rounded up to whole passes then;
    # without them, the data and its order stay as they were before the option existed)
    epochs = max(1, math.ceil(r.rm.epochs)) if train_drawn else r.rm.epochs
    enc_train = encode_pairs(tok, train, rm.reward_token_id)
    enc_drawn = encode_pairs(tok, train_drawn, rm.reward_token_id)
    tr_data = enc_train * epochs + enc_drawn if enc_drawn else enc_train
    ho_data = encode_pairs(tok, held, rm.reward_token_id)
    steps = max(1, math.ceil((len(train) * epochs + len(train_drawn)) / r.rm.batch_size))
    opt = build_optimizer(rm, r.rm.lr, weight_decay=r.rm.weight_decay)
    metrics = MetricsLog(out / "metrics.jsonl")
    metrics.reset()
    pairs, train = pairs + drawn, train + train_drawn
    C.log("rm", f"{len(pairs)} pairs ({n_file} from files, {len(drawn)} programmatic), {len(train)} train / "
               f"{len(held)} held out; {steps} steps of {r.rm.batch_size}; reward token {rm.reward_token_id}")
    before = pairwise_accuracy(rm, ho_data) if ho_data else None
    train_rm_steps(rm, opt, tr_data, steps, r.rm.batch_size, r.seed, r.rm.focal, r.rm.barrier_weight, r.rm.bound,
                   on_step=lambda s, rec: metrics.log("train", s, **rec), dense_weight=r.rm.dense_weight,
                   lm_weight=r.rm.lm_weight, distill_weight=r.rm.distill_weight,
                   teacher=frozen_teacher(actor) if uses_teacher(r.rm) else None)
    acc = pairwise_accuracy(rm, ho_data) if ho_data else pairwise_accuracy(rm, enc_train + enc_drawn)
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
