"""`puyu train ppo RECIPE.yaml`: online RLHF in rounds (COOL RLHF), PPO with actor, critic, reference and RM.

Read top to bottom, `run_ppo(recipe)` does:
  setup      tokenizer and actor from the SFT model; frozen reference (a copy; bf16 on GPUs); the reward
             model (`rm.init`, else `<out_dir>/rm/hf` from `puyu train rm`, else trained now by `run_rm`);
             the critic initialised from the RM (values read at every position); one engine over the
             live actor (no prefix cache, see `puyu.rl.rollout`)
  resume     with `resume=True`, the newest valid checkpoint restores actor, critic, RM, the three
             optimizers, the reward normaliser, the round log and the RNG states; rollouts are seeded
             by iteration, so the run continues exactly as if never stopped
  rounds     at the start of every round after the first, the last round is checked for reward hacking
             (detected: the RM reward rose from the round's first to its last quarter while the task score
             of the same samples did not, or the mean reply length grew by >= `hack_length_growth`
             without a task-score gain). Fast path when detected: pairs sampled on the current policy for
             the prompt kinds that hacked, kept where the RM prefers the judge's loser (up to `fast_pairs`,
             the report's 20-100), a short RM update. Slow path otherwise: broad pairs from the SFT
             (reference) and current policy, a longer RM update. Then `iterations` PPO iterations.
  iteration  rollouts (seeded) -> old log-probs, reference log-probs, values, conditional RM scores ->
             scores clipped to [-reward_clip, reward_clip] and normalised by running moments -> per-token
             reward (KL penalty on every policy token, score on the last) -> GAE -> whitened advantages ->
             `ppo_epochs` passes of minibatches: critic (clipped value loss) always, actor (clipped
             surrogate + `ptx_coef` x LM loss on SFT conversations) after `critic_warmup` iterations
  logging    metrics.jsonl per iteration (reward mean/std, KL to the reference, entropy, clip fraction,
             value loss, explained variance, reply length, task score; held-out greedy task score every
             `eval_every`), rounds.json, ppo.png; final actor as a Hugging Face directory (hf/) and the
             final RM (rm_hf/).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from puyu.errors import ConfigError
from puyu.rl import common as C
from puyu.rl import losses as L
from puyu.rl.recipe import AlignRecipe, PPOSection
from puyu.rl.rollout import SeqBatch, seq_batch, token_logprobs, token_values
from puyu.tasks.jsonl import read_jsonl
from puyu.train import distributed as D
from puyu.train.optim import build_optimizer


# ---- one PPO update on a batch of rollouts -------------------------------------------------------
def ppo_update(actor, critic, ref, opt_actor, opt_critic, batch: SeqBatch, scores: torch.Tensor,
               cfg: PPOSection, train_actor: bool, moments: L.RunningMoments | None = None,
               ptx_fn=None, seed: int = 0, info=None) -> dict:
    """Advantages from `scores` [B] (sequence rewards) and one PPO update of critic (and actor).
    Returns the iteration's figures. `ptx_fn(info)`, when given, returns this process's share of the
    pretraining LM loss to mix in. `info`: `puyu.train.distributed.DistInfo` under torchrun (see
    `puyu.rl.common`: gradient rows split, gradients summed)."""
    dev = next(actor.parameters()).device
    batch = batch.to(dev)
    mask = batch.mask
    with torch.no_grad():
        actor.eval()
        old_logp = token_logprobs(actor, batch)
        ref_logp = token_logprobs(ref, batch).float()
        old_values = token_values(critic, batch)
        raw = scores.to(dev).float()
        s = raw.clamp(-cfg.reward_clip, cfg.reward_clip)
        if moments is not None and cfg.normalize_reward:
            moments.update(s)
            s = (s - moments.mean) / moments.std
        kl_tok = L.kl_estimate(old_logp, ref_logp, "k1")
        rewards = L.token_rewards(s, kl_tok, mask, cfg.kl_coef)
        adv, ret = L.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        adv = L.masked_whiten(adv, mask)
    B = batch.ids.shape[0]
    order = list(range(B))
    rng = random.Random(f"puyu-ppo-mb-{seed}")
    stats = {"policy_loss": [], "value_loss": [], "clip_frac": [], "entropy": [], "ptx_loss": []}
    actor.train()
    critic.train()
    for _ in range(cfg.ppo_epochs):
        rng.shuffle(order)
        for i in range(0, B, cfg.minibatch):
            rows = sorted(order[i:i + cfg.minibatch])
            mine = [rows[j] for j in C.local_rows(len(rows), info)]  # this process's rows (all of them alone)
            share = float(mask[mine].sum()) / max(float(mask[rows].sum()), 1.0) if mine else 0.0
            mb = None
            if mine:
                idx = torch.tensor(mine, device=dev)
                mb = SeqBatch(batch.ids[idx], batch.attn[idx], batch.resp_index[idx], batch.resp_ids[idx], mask[idx])
            opt_critic.zero_grad(set_to_none=True)
            vl_part = 0.0
            if mb is not None:
                vl = L.value_loss(token_values(critic, mb), old_values[idx], ret[idx], mb.mask, cfg.value_clip) * share
                vl.backward()
                vl_part = float(vl.detach())
            C.allreduce_grads(critic, info)
            torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.grad_clip)
            opt_critic.step()
            stats["value_loss"].append(vl_part)
            if not train_actor:
                continue
            opt_actor.zero_grad(set_to_none=True)
            pl_part = frac_part = ent_part = 0.0
            if mb is not None:
                logp, ent = token_logprobs(actor, mb, with_entropy=True)
                pl, frac = L.ppo_policy_loss(logp, old_logp[idx], adv[idx], mb.mask, cfg.clip)
                (pl * share).backward()
                pl_part, frac_part = float(pl.detach()) * share, float(frac) * share
                ent_part = float(L.masked_mean(ent.detach(), mb.mask)) * share
            if ptx_fn is not None and cfg.ptx_coef > 0:
                ptx = ptx_fn(info)  # this process's share of the mean LM loss (None: no rows here)
                if ptx is not None:
                    (cfg.ptx_coef * ptx).backward()
                    stats["ptx_loss"].append(float(ptx.detach()))
                else:
                    stats["ptx_loss"].append(0.0)
            C.allreduce_grads(actor, info)
            torch.nn.utils.clip_grad_norm_(actor.parameters(), cfg.grad_clip)
            opt_actor.step()
            stats["policy_loss"].append(pl_part)
            stats["clip_frac"].append(frac_part)
            stats["entropy"].append(ent_part)
    keys = list(stats)
    flat = D.all_reduce_sum(torch.tensor([x for k in keys for x in stats[k]], dtype=torch.float64,
                                         device=next(actor.parameters()).device), info).tolist()  # shares summed
    pos = 0
    for k in keys:
        stats[k], pos = flat[pos:pos + len(stats[k])], pos + len(stats[k])
    actor.eval()
    seq_kl = (kl_tok * mask).sum(1)  # per-sequence KL estimate (sum of k1 over policy tokens)
    k3 = L.masked_mean(L.kl_estimate(old_logp, ref_logp, "k3"), mask)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731 (None: not computed this iteration)
    return {"reward_mean": float(raw.mean()), "reward_std": float(raw.std()) if B > 1 else 0.0,
            "reward_norm_mean": float(s.mean()), "kl": float(seq_kl.mean()), "kl_k3_per_token": float(k3),
            "entropy": mean(stats["entropy"]), "clip_frac": mean(stats["clip_frac"]),
            "policy_loss": mean(stats["policy_loss"]), "value_loss": mean(stats["value_loss"]),
            "ptx_loss": mean(stats["ptx_loss"]),
            "explained_variance": L.explained_variance(old_values, ret, mask),
            "response_length": float(mask.sum(1).mean())}


# ---- pretraining-loss mix ------------------------------------------------------------------------
def ptx_sampler(tok, files: list[str], batch: int, seed: int, device):
    """A function returning the mean LM loss of the actor on `batch` SFT conversations (assistant tokens
    only, `chat_tokens` masks), drawn in a seeded order; None when there are no files."""
    from puyu.model.chat_format import chat_tokens

    convs = []
    for f in files:
        for rec in read_jsonl(f, ConfigError):
            if isinstance(rec, dict) and "messages" in rec:
                convs.append(chat_tokens(tok, rec["messages"], rec.get("tools"), rec.get("interpreter")))
    if not convs:
        return None
    rng = random.Random(f"puyu-ptx-{seed}")

    def make(actor):
        def loss(info=None):
            picked = [convs[rng.randrange(len(convs))] for _ in range(batch)]  # the same draw on every process
            n_all = sum(sum(mk[1:]) for _, mk in picked)
            picked = [picked[j] for j in C.local_rows(batch, info)]
            if not picked:
                return None
            T = max(len(i) for i, _ in picked)
            ids = torch.full((len(picked), T), tok.pad_id, dtype=torch.long)
            m = torch.zeros((len(picked), T))
            for b, (i, mk) in enumerate(picked):
                ids[b, :len(i)] = torch.tensor(i)
                m[b, :len(mk)] = torch.tensor(mk, dtype=torch.float32)
            ids, m = ids.to(device), m.to(device)
            logits = actor(ids[:, :-1])
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            return (nll * m[:, 1:]).sum() / max(n_all, 1)  # this process's share of the global token mean
        return loss
    return make, rng


# ---- reward hacking --------------------------------------------------------------------------------
def detect_hacking(records: list[dict], growth: float = 0.2) -> dict:
    """Compare the first and last quarter of a round's iterations (`records`: metrics of the round).
    Returns {"detected", "reasons", "early", "late", "kinds"}; see the module docstring for the rule."""
    if len(records) < 2:
        return {"detected": False, "reasons": [], "early": None, "late": None, "kinds": []}
    q = max(1, len(records) // 4)
    def avg(rs, k):
        vals = [x[k] for x in rs if x.get(k) is not None]
        return sum(vals) / len(vals) if vals else 0.0
    keys = ("reward_mean", "task_score", "response_length")
    early = {k: avg(records[:q], k) for k in keys}
    late = {k: avg(records[-q:], k) for k in keys}
    reasons = []
    no_gain = late["task_score"] <= early["task_score"]
    if late["reward_mean"] > early["reward_mean"] and no_gain:
        reasons.append("reward rose, task score did not")
    if late["response_length"] >= (1 + growth) * max(early["response_length"], 1e-9) and no_gain:
        reasons.append(f"length grew >= {100 * growth:.0f}% without a score gain")
    kinds = []
    for kind in ("arithmetic", "tool", "chat"):
        ke, kl = avg(records[:q], f"task_{kind}"), avg(records[-q:], f"task_{kind}")
        re_, rl = avg(records[:q], f"reward_{kind}"), avg(records[-q:], f"reward_{kind}")
        if rl > re_ and kl <= ke:
            kinds.append(kind)
    return {"detected": bool(reasons), "reasons": reasons, "early": early, "late": late, "kinds": kinds}


# ---- the loop ------------------------------------------------------------------------------------
def _load_or_train_rm(r: AlignRecipe, actor, tok):
    from puyu.rl.reward_model import load_reward_model
    from puyu.rl.rm_train import run_rm

    if r.rm.init:
        return load_reward_model(r.rm.init, dtype=torch.float32, device=C.device_of(r), tokenizer=tok)
    own = Path(r.out_dir) / "rm" / "hf"
    if not (own / "config.json").is_file():
        C.log("ppo", f"no reward model at {own}: training one first (puyu train rm)")
        run_rm(r)
    return load_reward_model(own, dtype=torch.float32, device=C.device_of(r), tokenizer=tok)


def _round_rm_update(r: AlignRecipe, rnd: int, hack: dict, actor, ref, rm, opt_rm, tok, engine, ref_engine) -> dict:
    """Fast or slow path (module docstring). Returns what was done."""
    from puyu.rl.rm_train import (
        encode_pairs,
        frozen_teacher,
        judge_pairs,
        pairwise_accuracy,
        train_rm_steps,
        uses_teacher,
    )

    p = r.ppo
    k = r.rm.samples
    if hack["detected"]:
        weights = {kind: 1.0 for kind in (hack["kinds"] or [k2 for k2, w in r.prompts.weights.items() if w > 0])}
        from puyu.tasks.verifiable import rl_prompts

        samples = rl_prompts(f"{r.seed}-fast-{rnd}", max(8, p.fast_pairs), weights, C.exclude_set(r), r.prompts.p_big)
        pairs = judge_pairs(actor, tok, samples, k, p.max_new_tokens, p.temperature, r.seed + 7919 * rnd, engine,
                            p.max_turns)
        data = encode_pairs(tok, pairs, rm.reward_token_id)
        sc = [(acc_c - acc_r) for acc_c, acc_r in _pair_scores(rm, data)]
        wrong_first = sorted(range(len(data)), key=lambda i: sc[i])  # RM's worst disagreements first
        keep = [data[i] for i in wrong_first[: p.fast_pairs]]
        pairs = [pairs[i] for i in wrong_first[: p.fast_pairs]]
        steps, path = p.fast_steps, "fast"
    else:
        samples = C.train_prompts(r, p.slow_prompts, f"slow-{rnd}")
        pairs = judge_pairs(actor, tok, samples, k, p.max_new_tokens, p.temperature, r.seed + 7919 * rnd, engine,
                            p.max_turns)
        pairs += judge_pairs(ref, tok, samples, k, p.max_new_tokens, p.temperature, r.seed + 7919 * rnd + 1,
                             ref_engine, p.max_turns)
        keep = encode_pairs(tok, pairs, rm.reward_token_id)
        steps, path = p.slow_steps, "slow"
    if keep:
        train_rm_steps(rm, opt_rm, keep, steps, min(r.rm.batch_size, len(keep)), r.seed + rnd, r.rm.focal,
                       r.rm.barrier_weight, r.rm.bound, dense_weight=r.rm.dense_weight, lm_weight=r.rm.lm_weight,
                       distill_weight=r.rm.distill_weight, teacher=frozen_teacher(ref) if uses_teacher(r.rm) else None)
    after = pairwise_accuracy(rm, keep) if keep else None
    return {"path": path, "pairs": len(keep), "steps": steps if keep else 0,
            "train_acc_after": after["overall"] if after else None, "records": pairs}


@torch.no_grad()
def _pair_scores(rm, data):
    from puyu.rl.reward_model import score_ids

    sc = score_ids(rm, [p.chosen for p in data])
    sr = score_ids(rm, [p.rejected for p in data])
    return list(zip(sc, sr))


def run_ppo(r: AlignRecipe, resume: bool = False, stop_after: int | None = None) -> dict:
    """Online RLHF (module docstring), as one process or under torchrun (`puyu.rl.common`).
    `stop_after`: leave after that many iterations (tests)."""
    from puyu.train import distributed as D

    r.validate()
    p = r.ppo
    with D.session(r.device) as info:
        return _run_ppo(r, p, info, resume, stop_after)


def _run_ppo(r: AlignRecipe, p: PPOSection, info, resume: bool, stop_after: int | None) -> dict:
    from puyu.engine.sampling import SamplingParams
    from puyu.model.checkpoint import save_pretrained
    from puyu.rl.judge import task_score
    from puyu.rl.reward_model import save_reward_model
    from puyu.rl.rollout import generate_rollouts, make_engine
    from puyu.train import distributed as D
    from puyu.train.metrics import MetricsLog, read_metrics
    from puyu.train.state import find_latest, load_checkpoint, rng_state, save_checkpoint, set_rng_state

    main = info.is_main
    out = C.start_stage(r, "ppo", main)
    dev = info.device
    tok, actor = C.load_policy(r)
    ref = C.frozen_copy(actor, C.frozen_dtype(dev))
    if info.distributed and not r.rm.init and not (Path(r.out_dir) / "rm" / "hf" / "config.json").is_file():
        raise C.ConfigError("under torchrun, train the reward model first (puyu train rm) or set rm.init")
    rm = _load_or_train_rm(r, actor, tok).float()
    critic = C.frozen_copy(rm)  # a copy of the RM, then made trainable: the critic
    for prm in critic.parameters():
        prm.requires_grad_(True)
    actor, critic, rm = C.trainable(actor, r), C.trainable(critic, r), C.trainable(rm, r)
    critic.train()
    actor.eval()
    opt_a = build_optimizer(actor, p.actor_lr, weight_decay=0.0)
    opt_c = build_optimizer(critic, p.critic_lr, weight_decay=0.0)
    opt_rm = build_optimizer(rm, r.rm.lr, weight_decay=0.0)
    moments = L.RunningMoments()
    rounds: list[dict] = []
    metrics = MetricsLog(out / "metrics.jsonl", enabled=main)
    ckpt_root = out / "checkpoints"
    start = 0
    st = None
    latest = D.broadcast_object(str(find_latest(ckpt_root) or "") if (resume and main) else "", info)
    if latest:
        st = load_checkpoint(latest)
        actor.load_state_dict(st["actor"])
        critic.load_state_dict(st["critic"])
        rm.load_state_dict(st["rm"])
        opt_a.load_state_dict(st["opt_actor"])
        opt_c.load_state_dict(st["opt_critic"])
        opt_rm.load_state_dict(st["opt_rm"])
        moments.load_state_dict(st["moments"])
        rounds = json.loads(st["rounds"])
        set_rng_state(st["rng"])
        start = int(st["step"])
        metrics.truncate_after(start)
        if main:
            C.log("ppo", f"resumed from {latest} (iteration {start})")
    if start == 0:
        metrics.reset()
    ptx = ptx_sampler(tok, p.ptx_data, p.ptx_batch, r.seed, dev) if p.ptx_coef > 0 and p.ptx_data else None
    ptx_fn = ptx[0](actor) if ptx else None
    if ptx and st is not None:
        v, inner, gauss = st["ptx_rng"]
        ptx[1].setstate((v, tuple(inner), gauss))

    def checkpoint(step: int) -> None:
        if main:
            save_checkpoint(ckpt_root, step, {
                "actor": actor.state_dict(), "critic": critic.state_dict(), "rm": rm.state_dict(),
                "opt_actor": opt_a.state_dict(), "opt_critic": opt_c.state_dict(), "opt_rm": opt_rm.state_dict(),
                "moments": moments.state_dict(), "rounds": json.dumps(rounds), "rng": rng_state(), "step": step,
                "ptx_rng": ptx[1].getstate() if ptx else None, "world_size": info.world_size}, keep=2)
        D.barrier(info)

    engine = make_engine(actor, tok)
    ref_engine = make_engine(ref, tok) if p.rounds > 1 else None
    evals = C.eval_prompts(r)
    total = p.rounds * p.iterations
    params = SamplingParams(max_new_tokens=p.max_new_tokens, temperature=p.temperature, top_p=p.top_p)
    t0 = time.perf_counter()
    summary: dict = {}
    try:
        if start == 0 and main:
            ev = C.greedy_eval(engine, tok, evals, p.max_new_tokens, p.max_turns)
            metrics.log("eval", 0, **ev)
            summary["eval_start"] = ev
        for it in range(start, total):
            rnd, k = divmod(it, p.iterations)
            if k == 0 and rnd > 0 and len(rounds) < rnd + 1:
                hack = None
                if main:
                    recs = [m for m in read_metrics(out / "metrics.jsonl")
                            if m["kind"] == "train" and m.get("round") == rnd - 1]
                    hack = detect_hacking(recs, p.hack_length_growth)
                hack = D.broadcast_object(hack, info)
                upd = _round_rm_update(r, rnd, hack, actor, ref, rm, opt_rm, tok, engine, ref_engine)
                if main:
                    from puyu.rl.judge import write_pairs

                    write_pairs(out / f"round{rnd}_pairs.jsonl", upd["records"])
                del upd["records"]
                rounds.append({"round": rnd, "hacking": hack, "rm_update": upd})
                if main:
                    C.log("ppo", f"round {rnd}: hacking "
                                 f"{'DETECTED ' + '; '.join(hack['reasons']) if hack['detected'] else 'not detected'}"
                                 f" -> {upd['path']} path, {upd['pairs']} pairs, {upd['steps']} RM steps")
            elif k == 0 and rnd == 0 and not rounds:
                rounds.append({"round": 0, "hacking": None, "rm_update": {"path": "initial RM", "pairs": 0, "steps": 0}})
            samples = C.train_prompts(r, p.prompts_per_iter, f"ppo-{it}")
            ros = generate_rollouts(engine, tok, samples, params, seed=r.seed * 100_003 + it, max_turns=p.max_turns)
            batch = seq_batch([ro.prompt for ro in ros], [ro.response for ro in ros],
                              [ro.action_mask for ro in ros], tok.pad_id)
            scores = C.rm_scores(rm, tok, ros)
            fig = ppo_update(actor, critic, ref, opt_a, opt_c, batch, scores, p, train_actor=it >= p.critic_warmup,
                             moments=moments, ptx_fn=ptx_fn, seed=r.seed * 100_003 + it, info=info)
            ts = [task_score(ro.sample, ro.first_reply) for ro in ros]
            fig["task_score"] = sum(ts) / len(ts)
            for kind in ("arithmetic", "tool", "chat"):
                sel = [i for i, ro in enumerate(ros) if ro.sample["kind"] == kind]
                if sel:
                    fig[f"task_{kind}"] = sum(ts[i] for i in sel) / len(sel)
                    fig[f"reward_{kind}"] = float(scores[sel].mean())
            fig["ends"] = sum(ro.end for ro in ros) / len(ros)
            done = it + 1
            metrics.log("train", done, round=rnd, elapsed_s=time.perf_counter() - t0, **fig)
            if main and (done % p.eval_every == 0 or done == total or done % p.iterations == 0):
                ev = C.greedy_eval(engine, tok, evals, p.max_new_tokens, p.max_turns)
                metrics.log("eval", done, round=rnd, **ev)
            if r.progress and main:
                C.log("ppo", f"it {done}/{total} r{rnd} reward {fig['reward_mean']:+.3f} task {fig['task_score']:.2f} "
                             f"kl {fig['kl']:.3f} len {fig['response_length']:.1f} vloss {fig['value_loss']:.3f}")
            if done % p.save_every == 0 or done == total or done % p.iterations == 0:
                checkpoint(done)
            if stop_after is not None and done >= stop_after:
                return {"stopped_at": done}
    finally:
        engine.close()
        if ref_engine is not None:
            ref_engine.close()
    summary.update({"iterations": total, "seconds": round(time.perf_counter() - t0, 1), "rounds": rounds,
                    "hf_dir": str(out / "hf"), "world_size": info.world_size})
    if not main:
        return summary
    save_pretrained(C.plain(actor), out / "hf", tokenizer=tok)
    save_reward_model(C.plain(rm), out / "rm_hf", tok)
    (out / "rounds.json").write_text(json.dumps(rounds, indent=1) + "\n", encoding="utf-8")
    plot_rl(out / "metrics.jsonl", out / "ppo.png", "PPO")
    recs = read_metrics(out / "metrics.jsonl")
    summary.update({"eval_end": next((m for m in reversed(recs) if m["kind"] == "eval"), None),
                    "last": next((m for m in reversed(recs) if m["kind"] == "train"), None)})
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    return summary


def plot_rl(metrics_path: Path, png: Path, title: str) -> Path | None:
    """One panel per logged figure against iteration (train records), eval scores as markers."""
    from puyu.train.metrics import read_metrics

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    recs = read_metrics(metrics_path)
    tr = [m for m in recs if m["kind"] == "train"]
    ev = [m for m in recs if m["kind"] == "eval"]
    keys = [k for k in ("reward_mean", "reward_std", "kl", "entropy", "clip_frac", "value_loss",
                        "explained_variance", "response_length", "task_score") if any(k in m for m in tr)]
    if not tr or not keys:
        return None
    cols = 4
    rows = (len(keys) + 1 + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), dpi=100, squeeze=False)
    flat = [a for row in axes for a in row]
    for ax, key in zip(flat, keys):
        pts = [(m["step"], m[key]) for m in tr if m.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), linewidth=1)
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    ax = flat[len(keys)]
    if ev:
        ax.plot([m["step"] for m in ev], [m["eval_score"] for m in ev], "o-")
    ax.set_title("held-out task score (greedy)", fontsize=9)
    ax.grid(alpha=0.3)
    for a in flat[len(keys) + 1:]:
        a.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png
