"""`puyu train`: command dispatch for the training stages and the recipes that chain them.

    puyu train tokenize RECIPE.yaml            text / JSONL / Parquet -> packed token shards
    puyu train pretrain RECIPE.yaml            pretraining from a preset (or from weights)
    puyu train longctx  RECIPE.yaml            continue at a longer seq_len with a larger rope_theta
    puyu train sft      RECIPE.yaml            supervised fine-tuning on conversations
    puyu train nano     recipes/nano.yaml      the whole nano recipe (what `puyu demo` runs)
    puyu train rm       RECIPE.yaml            reward model on preference pairs (files and/or the judge)
    puyu train ppo      RECIPE.yaml            online RLHF: rounds of RM updates and PPO
    puyu train dpo      RECIPE.yaml            DPO on the same pair files
    puyu train grpo     RECIPE.yaml            critic-free RL (GRPO/RLOO) with a task's score function

Every form takes `--set section.key=value` overrides (repeatable) and `--resume` (continue from the
newest valid checkpoint in `train.out_dir/checkpoints`; the nano recipe skips finished stages).
The stages run unchanged under `torchrun --nproc_per_node=N -m puyu.cli train pretrain ...`.

The stages themselves live in `puyu.train` (see its docstring), the alignment stages in `puyu.rl`
(recipe: `puyu.rl.recipe.AlignRecipe`), the nano recipe in `puyu.recipes.nano`.
"""

from __future__ import annotations

import argparse
import json
import sys

STAGES = ("tokenize", "pretrain", "longctx", "sft", "nano", "rm", "ppo", "dpo", "grpo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=STAGES, help="what to run")
    p.add_argument("recipe", help="recipe YAML file (its header comment gives the command)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest valid checkpoint (nano: reuse finished stages, continue the interrupted one from its checkpoint)")


def run(args: argparse.Namespace) -> int:
    from puyu.train.recipe import Recipe, TokenizeRecipe, load_recipe

    if args.stage == "tokenize":
        from puyu.model.tokenizer import load_tokenizer
        from puyu.train.shards import tokenize_to_shard

        r = load_recipe(args.recipe, args.overrides, cls=TokenizeRecipe)
        meta = tokenize_to_shard(r.inputs, r.out_dir, load_tokenizer(r.tokenizer), progress=r.progress)
        print(f"{meta['n_tokens']:,} tokens in {meta['n_docs']:,} documents -> {r.out_dir}")
        return 0
    if args.stage in ("rm", "ppo", "dpo", "grpo"):
        return _run_align(args)
    if args.stage == "nano":
        from puyu.recipes.nano import NanoRecipe, run_nano

        r = load_recipe(args.recipe, args.overrides, cls=NanoRecipe)
        run_nano(r, resume=args.resume)
        return 0
    recipe = load_recipe(args.recipe, args.overrides, cls=Recipe)
    if args.stage == "pretrain":
        from puyu.train.pretrain import train

        summary = train(recipe, resume=args.resume, stage="pretrain")
    elif args.stage == "longctx":
        from puyu.train.pretrain import run_longctx

        summary = run_longctx(recipe, resume=args.resume)
    else:
        from puyu.train.sft import run_sft

        summary = run_sft(recipe, resume=args.resume)
    if summary.get("world_size", 1) == 1 or _is_rank0():
        print(json.dumps({k: v for k, v in summary.items()}, indent=1), file=sys.stdout)
    return 0


def _run_align(args: argparse.Namespace) -> int:
    from puyu.rl.recipe import load_align_recipe

    r = load_align_recipe(args.recipe, args.overrides)
    if args.stage == "rm":
        from puyu.rl.rm_train import run_rm

        rep = run_rm(r)
        summary = {"accuracy": rep["accuracy"], "pairs": rep["pairs"], "seconds": rep["seconds"],
                   "hf_dir": rep["hf_dir"]}
    elif args.stage == "ppo":
        from puyu.rl.ppo import run_ppo

        rep = run_ppo(r, resume=args.resume)
        summary = {k: rep.get(k) for k in ("iterations", "seconds", "eval_start", "eval_end", "hf_dir", "world_size")}
    elif args.stage == "dpo":
        from puyu.rl.dpo import run_dpo

        summary = run_dpo(r)
    else:
        from puyu.rl.grpo import run_grpo

        summary = run_grpo(r, resume=args.resume)
    if _is_rank0():
        print(json.dumps(summary, indent=1, default=str))
    return 0


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
