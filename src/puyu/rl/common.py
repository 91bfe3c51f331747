"""Pieces every alignment stage shares: loading the policy, the reference and the reward model; the
prompt sets; reward-model scores of rollouts (conditional on each prompt's domains); greedy evaluation
on the held-out prompts; checkpoints of several models at once.

Domains read per prompt kind (the conditional RM is asked once per domain; the reward is the mean):
arithmetic -> arithmetic, format, concise; tool -> tool, format; chat -> format, concise.
"""

from __future__ import annotations

import copy
import json
import random
import sys
from pathlib import Path

import torch

from puyu.errors import ConfigError
from puyu.rl.recipe import AlignRecipe

DOMAINS_FOR_KIND = {"arithmetic": ("arithmetic", "format", "concise"), "tool": ("tool", "format"),
                    "interpreter": ("format",), "chat": ("format", "concise")}


def log(stage: str, msg: str) -> None:
    print(f"[{stage}] {msg}", file=sys.stderr, flush=True)


def start_stage(r: AlignRecipe, name: str, main: bool = True) -> Path:
    """Seed torch and `random` with the recipe's seed, set its thread count, and return (creating it on
    the main process) the stage's folder `out_dir/name`."""
    torch.manual_seed(r.seed)
    random.seed(r.seed)
    if r.threads:
        torch.set_num_threads(r.threads)
    out = Path(r.out_dir) / name
    if main:
        out.mkdir(parents=True, exist_ok=True)
    return out


def device_of(r: AlignRecipe) -> torch.device:
    return torch.device(r.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_policy(r: AlignRecipe):
    """(tokenizer, actor in fp32 train mode) from `policy.init`."""
    from puyu.model.checkpoint import load_model
    from puyu.model.tokenizer import load_tokenizer

    init = Path(r.policy.init)
    if not (init / "config.json").is_file():
        raise ConfigError(f"policy.init {init} is not a model directory (no config.json)")
    tok = load_tokenizer(r.policy.tokenizer or init)
    actor = load_model(init, dtype="float32", device=device_of(r)).train()
    return tok, actor


def trainable(model, r: AlignRecipe):
    """`model` with LoRA adapters injected when `lora.enabled` (only they, and a v_head, then train)."""
    if r.lora.enabled:
        from puyu.rl.lora import add_lora

        add_lora(model, r.lora)
    return model


def plain(model):
    """`model` with any LoRA adapters merged in (a copy): what checkpoints in the usual layout hold."""
    from puyu.rl.lora import merged

    return merged(model)


def frozen_copy(model, dtype: torch.dtype | None = None):
    """A frozen copy (the reference policy, the round's reward model). bf16 only where asked (GPUs)."""
    ref = copy.deepcopy(model).eval()
    if dtype is not None:
        ref = ref.to(dtype)
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def frozen_dtype(dev: torch.device) -> torch.dtype | None:
    """bf16 for the frozen models on CUDA with bf16; fp32 on the CPU (exactness of the nano runs)."""
    return torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else None


def exclude_set(r: AlignRecipe) -> set:
    from puyu.tasks.synthetic import Problem

    if not r.prompts.exclude_file:
        return set()
    t = json.loads(Path(r.prompts.exclude_file).read_text(encoding="utf-8"))
    return {Problem(*p) for k in ("small", "big") for p in t.get(k, [])}


def train_prompts(r: AlignRecipe, n: int, seed_tag) -> list[dict]:
    from puyu.tasks.verifiable import rl_prompts

    return rl_prompts(f"{r.seed}-{seed_tag}", n, r.prompts.weights, exclude_set(r), r.prompts.p_big)


def eval_prompts(r: AlignRecipe, n: int | None = None, tag: str = "") -> list[dict]:
    """`n` (default `prompts.eval_n`) held-out prompts, the kinds in turn: arithmetic from the excluded
    test problems when given (never trained on), tool and chat prompts from their own seed (`tag`
    gives another set)."""
    from puyu.tasks import verifiable as V
    from puyu.tasks.synthetic import Problem

    rng = random.Random(f"puyu-rl-eval-{r.seed}{tag}")
    out = []
    tests = sorted(exclude_set(r), key=lambda p: (p.op, p.a, p.b))
    kinds = [k for k, w in r.prompts.weights.items() if w > 0]
    for i in range(r.prompts.eval_n if n is None else n):
        kind = kinds[i % len(kinds)]
        if kind == "arithmetic":
            p = tests[(i * 7) % len(tests)] if tests else Problem(rng.randrange(100), rng.choice("+-"), rng.randrange(100))
            out.append(V.arithmetic_prompt(p))
        elif kind == "tool":
            out.append(V.tool_prompt(rng))
        elif kind == "interpreter":
            out.append(V.interpreter_prompt(rng))
        else:
            out.append(V.chat_prompt(rng))
    return out


@torch.no_grad()
def rm_scores(rm, tok, rollouts, batch_size: int = 32) -> torch.Tensor:
    """Conditional RM score of each rollout [B]: mean over its kind's domains of the score of
    domain rubric + prompt + response (+ newline when it ended) + reward token."""
    from puyu.rl.judge import prompt_ids
    from puyu.rl.reward_model import score_ids, with_domain

    nl = tok.encode("\n")
    seqs, owner = [], []
    for b, ro in enumerate(rollouts):
        s = ro.sample
        for d in DOMAINS_FOR_KIND[s["kind"]]:
            head = prompt_ids(tok, with_domain(s["messages"], d), s.get("tools"), s.get("interpreter"))
            seqs.append(head + ro.response + (nl if ro.end else []) + [rm.reward_token_id])
            owner.append(b)
    vals = torch.tensor(score_ids(rm, seqs, batch_size))
    out = torch.zeros(len(rollouts))
    cnt = torch.zeros(len(rollouts))
    out.index_add_(0, torch.tensor(owner), vals)
    cnt.index_add_(0, torch.tensor(owner), torch.ones_like(vals))
    return out / cnt


@torch.no_grad()
def greedy_eval(engine, tok, samples: list[dict], max_new_tokens: int, max_turns: int = 1,
                items: bool = False) -> dict:
    """Greedy replies to the held-out prompts scored by the judge: task score per kind, turn-ending,
    mean reply length (tokens); with `items`, also per prompt (correct, ended, length, reply) for
    paired comparisons."""
    from puyu.engine.sampling import SamplingParams
    from puyu.rl.judge import task_score
    from puyu.rl.rollout import generate_rollouts

    ros = generate_rollouts(engine, tok, samples, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0),
                            seed=0, max_turns=max_turns)
    by_kind: dict[str, list[float]] = {}
    for ro in ros:
        by_kind.setdefault(ro.sample["kind"], []).append(task_score(ro.sample, ro.first_reply))
    res = {f"eval_{k}": sum(v) / len(v) for k, v in by_kind.items()}
    res["eval_score"] = sum(sum(v) for v in by_kind.values()) / max(len(ros), 1)
    res["eval_ends"] = sum(ro.end for ro in ros) / max(len(ros), 1)
    res["eval_length"] = sum(ro.n_policy_tokens for ro in ros) / max(len(ros), 1)
    if items:
        from puyu.tasks.verifiable import score

        res["items"] = [{"kind": ro.sample["kind"], "correct": score(ro.replies[0], ro.sample) == 1.0,
                         "ended": ro.end, "length": ro.n_policy_tokens, "reply": ro.replies[0]} for ro in ros]
    return res


def reward_model_for(r: AlignRecipe, actor, tok):
    """The reward model to start from: `rm.init` when set, else the policy body with a zero v_head."""
    from puyu.rl.reward_model import RewardModel, default_reward_token, load_reward_model

    if r.rm.init:
        rm = load_reward_model(r.rm.init, dtype=torch.float32, device=device_of(r), tokenizer=tok)
        return rm.train()
    tid = r.rm.reward_token_id if r.rm.reward_token_id is not None else default_reward_token(tok, actor.config.vocab_size)
    return RewardModel.from_causal_lm(actor, tid, pad_id=tok.pad_id, tokenizer=tok).float().train()


# ---- several processes (torchrun) ----------------------------------------------------------------
# The alignment loops run the same way as one process or under `torchrun --nproc_per_node=N`. Rollouts,
# scores and advantages are computed on every process for the whole batch (sampling is seeded per
# request, so every process draws the same replies from the same weights); the gradient work of each
# minibatch is split by rows (row i on process i mod N), every process's loss is its rows' share of the
# global token mean, and the gradients are summed across processes before the optimizer step, so every
# process takes the same step as one process would. Checkpoints, metrics and evaluation are rank 0's.
def local_rows(n: int, info) -> list[int]:
    """The rows of an n-row minibatch this process computes gradients for."""
    return list(range(info.rank, n, info.world_size)) if info is not None else list(range(n))


def allreduce_grads(model, info) -> None:
    """Sum every parameter's gradient across processes (a missing gradient counts as zero)."""
    if info is None or not info.distributed:
        return
    import torch.distributed as dist

    for p in model.parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
