"""`puyu train`: training stages run from YAML recipes.

    puyu train tokenize RECIPE.yaml            text / JSONL / Parquet -> packed token shards
    puyu train pretrain RECIPE.yaml            pretraining from a preset (or from weights)
    puyu train longctx  RECIPE.yaml            continue at a longer seq_len with a larger rope_theta
    puyu train sft      RECIPE.yaml            supervised fine-tuning on conversations
    puyu train nano     recipes/nano.yaml      the whole nano recipe (what `puyu demo` runs)

Every form takes `--set section.key=value` overrides (repeatable) and `--resume` (continue from the
newest valid checkpoint in `train.out_dir/checkpoints`; the nano recipe skips finished stages).
The stages run unchanged under `torchrun --nproc_per_node=N -m puyu.cli train pretrain ...`.

Files: recipe.py (typed YAML), shards.py (tokenizing), dataset.py (rows and their order), optim.py
(AdamW groups, schedule, clipping), state.py (checkpoints), distributed.py (torchrun, DDP/FSDP),
metrics.py (JSONL, PNG), pretrain.py (the loop), sft.py (chat masking), corpus.py and synthetic.py
(nano data), evaluate.py (greedy task accuracy), nano.py (the nano recipe).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

from puyu.errors import ConfigError

STAGES = ("tokenize", "pretrain", "longctx", "sft", "nano")


@dataclass
class TokenizeRecipe:
    """`puyu train tokenize`: `inputs` (.txt/.jsonl/.parquet files) -> shard directory `out_dir`."""

    inputs: list = field(default_factory=list)
    out_dir: str = "runs/shards/train"
    tokenizer: str = ""
    progress: bool = True

    def validate(self) -> None:
        if not self.inputs:
            raise ConfigError("tokenize: list the input files under 'inputs'")
        if not self.tokenizer:
            raise ConfigError("tokenize: set 'tokenizer' (a directory holding tokenizer.model)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=STAGES, help="what to run")
    p.add_argument("recipe", help="recipe YAML file (its header comment gives the command)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest valid checkpoint (nano: skip finished stages)")


def run(args: argparse.Namespace) -> int:
    from puyu.train.recipe import Recipe, load_recipe

    if args.stage == "tokenize":
        from puyu.tokenizer import load_tokenizer
        from puyu.train.shards import tokenize_to_shard

        r = load_recipe(args.recipe, args.overrides, cls=TokenizeRecipe)
        meta = tokenize_to_shard(r.inputs, r.out_dir, load_tokenizer(r.tokenizer), progress=r.progress)
        print(f"{meta['n_tokens']:,} tokens in {meta['n_docs']:,} documents -> {r.out_dir}")
        return 0
    if args.stage == "nano":
        from puyu.train.nano import NanoRecipe, run_nano

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


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
