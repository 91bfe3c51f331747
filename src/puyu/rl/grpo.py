"""`puyu train grpo RECIPE.yaml`: critic-free RL with verifiable rewards (GRPO / RLOO group baselines).

Each iteration samples `group_size` replies for each of `prompts_per_iter` prompts through the engine
(seeded), scores every reply with `score(prediction, sample) -> float` (no reward model), turns the
scores into group-relative advantages (`puyu.rl.losses.group_advantages`), spreads each reply's
advantage over its policy tokens, and takes one step on the clipped surrogate plus `kl_coef` x the k3
KL estimate against the frozen reference (Shao et al. 2024: beta 0.04).

The score function: `grpo.task` names an evaluation task, resolved lazily through
`puyu.eval.get_task(name).score` when that package provides it, or "verifiable" for the local scorers of
`puyu.tasks.verifiable` (by each sample's kind: arithmetic, tool, chat). `run_grpo(recipe, score_fn=...)`
takes any function directly. A reply that did not end its turn with `<|im_end|>` scores 0.

Resume: a checkpoint every `save_every` iterations holds actor, optimizer, RNG and iteration; rollouts
are seeded by iteration, so a resumed run repeats the same curve.
"""

from __future__ import annotations

import time

import torch

from puyu.rl import common as C
from puyu.rl import losses as L
from puyu.rl.recipe import AlignRecipe
from puyu.rl.rollout import SeqBatch, seq_batch, token_logprobs
from puyu.train import distributed as D
from puyu.train.optim import build_optimizer


def resolve_scorer(name: str):
    """`score(prediction, sample)` for a task name (see the module docstring)."""
    if name == "verifiable":
        from puyu.tasks.verifiable import score

        return score
    from puyu.eval import get_task

    return get_task(name).score


def grpo_step(actor, ref, opt, batch, advantages: torch.Tensor, kl_coef: float, clip: float,
              grad_clip: float = 1.0, info=None) -> dict:
    """One update: advantages [B] per reply, spread over its policy tokens. Under torchrun each process
    takes its rows' share of the global token mean and the gradients are summed (`puyu.rl.common`)."""
    dev = next(actor.parameters()).device
    batch = batch.to(dev)
    with torch.no_grad():
        actor.eval()
        old = token_logprobs(actor, batch)
        ref_lp = token_logprobs(ref, batch).float()
    actor.train()
    B = batch.ids.shape[0]
    mine = C.local_rows(B, info)
    share = float(batch.mask[mine].sum()) / max(float(batch.mask.sum()), 1.0) if mine else 0.0
    opt.zero_grad(set_to_none=True)
    parts = [0.0, 0.0, 0.0, 0.0]
    if mine:
        idx = torch.tensor(mine, device=dev)
        mb = SeqBatch(batch.ids[idx], batch.attn[idx], batch.resp_index[idx], batch.resp_ids[idx], batch.mask[idx])
        logp, ent = token_logprobs(actor, mb, with_entropy=True)
        adv = advantages.to(dev)[idx][:, None].expand_as(logp)
        pl, frac = L.ppo_policy_loss(logp, old[idx], adv, mb.mask, clip)
        kl = L.masked_mean(L.kl_estimate(logp, ref_lp[idx], "k3"), mb.mask)
        ((pl + kl_coef * kl) * share).backward()
        parts = [float(pl.detach()) * share, float(kl.detach()) * share, float(frac) * share,
                 float(L.masked_mean(ent.detach(), mb.mask)) * share]
    C.allreduce_grads(actor, info)
    gn = torch.nn.utils.clip_grad_norm_(actor.parameters(), grad_clip)
    opt.step()
    actor.eval()
    pl_, kl_, frac_, ent_ = D.all_reduce_sum(torch.tensor(parts, dtype=torch.float64, device=dev), info).tolist()
    return {"policy_loss": pl_, "kl_k3_per_token": kl_, "clip_frac": frac_, "entropy": ent_, "grad_norm": float(gn),
            "kl": float((L.kl_estimate(old, ref_lp, "k1") * batch.mask).sum(1).mean())}


def turn_reward(score_fn):
    """A rollout's GRPO reward: `score_fn(first reply, sample)`, times 0 when the reply did not end its turn."""
    return lambda ro: float(score_fn(ro.replies[0], ro.sample)) * float(ro.end)


def sample_groups(r: AlignRecipe, it: int, engine, tok, params, reward_fn):
    """Iteration `it`'s groups: `group_size` replies for each of `prompts_per_iter` prompts, seeded by the
    iteration; `reward_fn(rollout) -> float` (`turn_reward`). With `dynamic_sampling`, groups whose rewards are all equal are dropped and further batches
    of prompts drawn (at most `max_draws` in all) until `prompts_per_iter` groups differ; fewer may remain.
    -> (rollouts of the kept groups, their rewards [kept * group_size], prompts drawn, every sampled
    reward: the task score of the policy as sampled)."""
    from puyu.rl.rollout import generate_rollouts

    g = r.grpo
    kept, rewards, sampled, drawn = [], [], [], 0
    for d in range(g.max_draws if g.dynamic_sampling else 1):
        prompts = C.train_prompts(r, g.prompts_per_iter, f"grpo-{it}" if d == 0 else f"grpo-{it}-draw{d}")
        flat = [s for s in prompts for _ in range(g.group_size)]
        seed = r.seed * 100_003 + it if d == 0 else (r.seed * 100_003 + it) * 64 + d + 10**9
        ros = generate_rollouts(engine, tok, flat, params, seed=seed)
        rw = torch.tensor([reward_fn(ro) for ro in ros])
        drawn += len(prompts)
        sampled.append(rw)
        for i in range(len(prompts)):
            grp = rw[i * g.group_size:(i + 1) * g.group_size]
            if len(kept) < g.prompts_per_iter * g.group_size and (not g.dynamic_sampling or bool(grp.max() > grp.min())):
                kept += ros[i * g.group_size:(i + 1) * g.group_size]
                rewards.append(grp)
        if len(kept) >= g.prompts_per_iter * g.group_size:
            break
    return kept, torch.cat(rewards) if rewards else torch.zeros(0), drawn, torch.cat(sampled)


def run_grpo(r: AlignRecipe, resume: bool = False, score_fn=None, stop_after: int | None = None) -> dict:
    """The GRPO/RLOO loop (module docstring), as one process or under torchrun."""
    from puyu.train import distributed as D

    r.validate()
    with D.session(r.device) as info:
        return _run_grpo(r, info, resume, score_fn, stop_after)


def _run_grpo(r: AlignRecipe, info, resume: bool, score_fn, stop_after: int | None) -> dict:
    from puyu.engine.sampling import SamplingParams
    from puyu.model.checkpoint import save_pretrained
    from puyu.rl.ppo import plot_rl
    from puyu.rl.rollout import make_engine
    from puyu.train import distributed as D
    from puyu.train.metrics import MetricsLog, read_metrics
    from puyu.train.state import find_latest, load_checkpoint, rng_state, save_checkpoint, set_rng_state

    main = info.is_main
    g = r.grpo
    score_fn = score_fn or resolve_scorer(g.task)
    out = C.start_stage(r, "grpo", main)
    tok, actor = C.load_policy(r)
    ref = C.frozen_copy(actor, C.frozen_dtype(C.device_of(r)))
    actor = C.trainable(actor, r).eval()
    opt = build_optimizer(actor, g.lr, weight_decay=0.0)
    metrics = MetricsLog(out / "metrics.jsonl", enabled=main)
    ckpt_root = out / "checkpoints"
    start = 0
    latest = D.broadcast_object(str(find_latest(ckpt_root) or "") if (resume and main) else "", info)
    if latest:
        st = load_checkpoint(latest)
        actor.load_state_dict(st["actor"])
        opt.load_state_dict(st["opt_actor"])
        set_rng_state(st["rng"])
        start = int(st["step"])
        metrics.truncate_after(start)
    if start == 0:
        metrics.reset()
    engine = make_engine(actor, tok)
    evals = C.eval_prompts(r)
    params = SamplingParams(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p)
    t0 = time.perf_counter()
    try:
        if start == 0 and main:
            metrics.log("eval", 0, **C.greedy_eval(engine, tok, evals, g.max_new_tokens))
        for it in range(start, g.iterations):
            ros, rewards, drawn, sampled = sample_groups(r, it, engine, tok, params, turn_reward(score_fn))
            if ros:
                adv = L.group_advantages(rewards.view(-1, g.group_size), g.baseline).flatten()
                batch = seq_batch([ro.prompt for ro in ros], [ro.response for ro in ros],
                                  [ro.action_mask for ro in ros], tok.pad_id)
                fig = grpo_step(actor, ref, opt, batch, adv, g.kl_coef, g.clip, g.grad_clip, info)
                fig.update(reward_mean=float(rewards.mean()), reward_std=float(rewards.std()),
                           response_length=sum(ro.n_policy_tokens for ro in ros) / len(ros))
            else:  # dynamic sampling found no group with differing scores: no step this iteration
                fig = {"skipped": 1.0}
            fig.update(task_score=float(sampled.mean()), groups=len(ros) // g.group_size, prompts_drawn=drawn)
            done = it + 1
            metrics.log("train", done, elapsed_s=time.perf_counter() - t0, **fig)
            if main and (done % g.eval_every == 0 or done == g.iterations):
                metrics.log("eval", done, **C.greedy_eval(engine, tok, evals, g.max_new_tokens))
            if r.progress and main:
                C.log("grpo", f"it {done}/{g.iterations} score {fig['task_score']:.3f} kept {fig['groups']} of "
                              f"{drawn} groups" + (f" kl {fig['kl']:.3f} len {fig['response_length']:.1f}"
                                                   if "kl" in fig else " (no step: every group scored alike)"))
            if done % g.save_every == 0 or done == g.iterations:
                if main:
                    save_checkpoint(ckpt_root, done, {"actor": actor.state_dict(), "opt_actor": opt.state_dict(),
                                                      "rng": rng_state(), "step": done}, keep=2)
                D.barrier(info)
            if stop_after is not None and done >= stop_after:
                return {"stopped_at": done}
    finally:
        engine.close()
    if not main:
        return {"iterations": g.iterations, "world_size": info.world_size}
    save_pretrained(C.plain(actor), out / "hf", tokenizer=tok)
    plot_rl(out / "metrics.jsonl", out / "grpo.png", f"GRPO ({g.baseline})")
    recs = read_metrics(out / "metrics.jsonl")
    return {"iterations": g.iterations, "seconds": round(time.perf_counter() - t0, 1), "hf_dir": str(out / "hf"),
            "world_size": info.world_size,
            "eval_end": next((m for m in reversed(recs) if m["kind"] == "eval"), None)}
