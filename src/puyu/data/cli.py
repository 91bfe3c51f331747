"""`puyu data ...`: run a cleaning recipe, generate the synthetic corpus, rewrite a report, list steps.

    puyu data run recipes/data/synthetic.yaml [--workers 2] [--executor ray] [--fresh]
    puyu data synth runs/data/corpus --docs 2000 --shards 8 --seed 0 [--zh-share 0.3 --mixed-share 0.04]
    puyu data report runs/data/synthetic
    puyu data steps
"""

from __future__ import annotations

import argparse

from puyu.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    p = sub.add_parser("run", help="run a recipe (YAML) end to end, with a progress bar and a report")
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/data/synthetic.yaml")
    p.add_argument("--workers", type=int, default=None, help="processes (local) or CPUs (ray); default: recipe")
    p.add_argument("--executor", choices=["local", "ray"], default=None, help="default: the recipe's")
    p.add_argument("--fresh", action="store_true", help="discard a previous run in the workdir")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p = sub.add_parser("synth", help="write the synthetic dirty corpus with known labels")
    p.add_argument("out_dir")
    p.add_argument("--docs", type=int, default=2000)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    # the defaults are recipes/data/synthetic.yaml's, so `synth` and `run` of that recipe make one corpus
    p.add_argument("--zh-share", type=float, default=0.3,
                   help="fraction of Chinese documents (default 0.3, as recipes/data/synthetic.yaml)")
    p.add_argument("--mixed-share", type=float, default=0.04,
                   help="fraction of mixed Chinese-English documents (default 0.04, as the recipe)")
    p = sub.add_parser("report", help="(re)write the Markdown + PNG report of a run")
    p.add_argument("workdir")
    sub.add_parser("steps", help="list the available steps and their options")
    parser.set_defaults(_data_parser=parser)


def run(args: argparse.Namespace) -> int:
    cmd = getattr(args, "data_command", None)
    if cmd == "run":
        from puyu.data.pipeline import run_recipe

        res = run_recipe(args.recipe, workers=args.workers, executor=args.executor, fresh=args.fresh,
                         progress=not args.no_progress)
        print(f"{res.documents_in} documents read, {res.documents_out} written in {res.seconds:.1f} s "
              f"-> {res.output_files[0].rsplit('/', 1)[0] if res.output_files else '-'}")
        if res.report:
            print(f"report: {res.report}")
        return 0
    if cmd == "synth":
        from puyu.data.synthetic import write_corpus

        if not (0 <= args.zh_share and 0 <= args.mixed_share and args.zh_share + args.mixed_share <= 1):
            raise ConfigError("--zh-share and --mixed-share must be >= 0 and sum to at most 1")
        m = write_corpus(args.out_dir, args.docs, args.shards, args.seed, zh_share=args.zh_share,
                         mixed_share=args.mixed_share)
        print(f"{m['documents']} documents in {args.shards} shards -> {args.out_dir} "
              f"(+{m['reader_errors']} broken lines); labels: "
              + ", ".join(f"{k} {v}" for k, v in sorted(m["labels"].items())))
        return 0
    if cmd == "report":
        from puyu.data.report import write_report

        print(write_report(args.workdir))
        return 0
    if cmd == "steps":
        from puyu.data.base import GlobalStep
        from puyu.data.pipeline import STEPS, step_options

        for name, cls in STEPS.items():
            doc = (cls.__doc__ or "").strip().split("\n")[0]
            kind = "global" if issubclass(cls, GlobalStep) else "per-document"
            print(f"{name}  [{cls.category}, {kind}]  {doc}")
            for opt, default in step_options(cls).items():
                print(f"    {opt} = {default!r}")
        return 0
    args._data_parser.print_help()
    return 2
