"""`puyu demo`: the nano recipe end to end (what `make demo` runs).

Builds the corpus, trains the tokenizer, pretrains a nano InternLM2, runs the long-context stage and
SFT, evaluates (arithmetic, passkey, chat format) and writes `runs/nano/` with the chat model in
`runs/nano/chat/` and `report.md` / `report.json`. Same as `puyu train nano recipes/nano.yaml`; the
recipe's defaults live in `puyu.recipes.nano.NanoRecipe`, and `recipes/nano.yaml` spells them out.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=None,
                   help="nano recipe YAML (default: recipes/nano.yaml when present, else built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set pretrain.steps=500 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in out_dir: reuse the stages that finished, continue an interrupted one from its last checkpoint (refused, before any work, where the recipe's values changed)")


def run(args: argparse.Namespace) -> int:
    from puyu.recipes.nano import NanoRecipe, run_nano
    from puyu.train.recipe import load_recipe

    path = args.recipe
    if path is None and Path("recipes/nano.yaml").is_file():
        path = "recipes/nano.yaml"
    recipe = load_recipe(path, args.overrides, cls=NanoRecipe)
    run_nano(recipe, resume=args.resume)  # its summary ends with the report's and the chat model's paths
    return 0  # targets met or missed are printed and written to the report; the run itself succeeded
