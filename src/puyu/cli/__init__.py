"""The `puyu` console script. Each subcommand lives in its own module, which defines
`add_arguments(parser)` and `run(args) -> int | None`; this file only maps names to modules,
imported lazily so `puyu info` does not pay for FastAPI or Ray.

Layer rule (import-linter, pyproject.toml): the top, beside `puyu.recipes`; may import every layer.
`puyu.cli.train` dispatches `puyu train ...`, `puyu.cli.demo` is `puyu demo`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Idle OpenMP workers spin for a short while, then sleep. libgomp's default spin (300,000 rounds) lets
# idle workers steal a small shared CPU from other threads and processes (up to ~9x slower forwards
# measured); sleeping at once (OMP_WAIT_POLICY=PASSIVE) costs a 40-90 µs wake-up on every parallel op
# (a batch-16 nano decode step 2.2x slower). 1,000 rounds (tens of µs) keeps back-to-back ops warm.
# Must be set before torch is imported; it overrides OMP_WAIT_POLICY.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

# subcommand -> (module, one-line help). Keep in step with the README's command table.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("puyu.model.info", "parameters, weight bytes, KV-cache bytes and memory at a context length"),
    "convert": ("puyu.model.convert", "convert a checkpoint between InternLM2 and LLaMA layouts"),
    "quantize": ("puyu.model.quantize", "write a checkpoint with bf16 / int8 / int4 weights for the CPU kernel"),
    "tokenizer": ("puyu.model.tokenizer", "train or inspect a SentencePiece tokenizer"),
    "generate": ("puyu.engine.generate", "generate text for prompts with the engine"),
    "chat": ("puyu.agent.chat", "interactive terminal chat (optionally with tools and the interpreter)"),
    "train": ("puyu.cli.train", "training stages: pretrain, longctx, sft, tokenize; and recipes"),
    "serve": ("puyu.serve.app", "OpenAI-compatible HTTP server with a web chat"),
    "data": ("puyu.data.cli", "the pretraining data-cleaning pipeline"),
    "eval": ("puyu.eval.cli", "evaluate a model or an OpenAI-compatible endpoint (run, tasks, report)"),
    "demo": ("puyu.cli.demo", "run the main end-to-end job (what `make demo` runs)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="puyu", description="InternLM2 end to end.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (e.name == module or module.startswith(e.name + ".")):
                p.set_defaults(_missing=f"`puyu {name}` is not available in this build ({module} missing)")
                continue
            p.set_defaults(_missing=f"`puyu {name}` needs an optional dependency: {e.name} "
                                    f"(pip install 'puyu[all]')")
            continue
        mod.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "_missing", None):
        print(f"error: {args._missing}", file=sys.stderr)
        return 2
    from puyu.errors import PuyuError

    mod = importlib.import_module(args._module)
    try:
        rc = mod.run(args)
    except PuyuError as e:  # user-facing errors: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = "; rerun with --resume to continue from the last checkpoint" if hasattr(args, "resume") else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `puyu info --json | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    rc = int(rc or 0)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and argv is None:
        # A torchrun worker whose work is done and whose process group is destroyed leaves now: the
        # interpreter's teardown can meet gloo's C++ threads and abort (pytorch/pytorch#179291), turning a
        # finished run into a failed one.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
