"""`puyu eval`: run tasks, list them, rebuild a report.

    puyu eval run TASK [TASK...] --model PATH_OR_PRESET | --api-base URL [--api-key K --model-name N]
                  [--interpreter] [--limit N] [--repeats K] [--seed S] [--out DIR] [--data [TASK=]PATH ...]
                  [--option KEY=VALUE ...] [--rope-scaling dynamic:F] [--rescore] [--fresh]
    puyu eval tasks
    puyu eval report DIR
"""

from __future__ import annotations

import argparse
import os

from puyu.engine.generate import add_kv_argument
from puyu.eval.task import EvalError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="eval_command", metavar="{run,tasks,report}")
    r = sub.add_parser("run", help="generate, score and report")
    r.add_argument("tasks", nargs="+", help="task names (puyu eval tasks)")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--model", help="checkpoint folder or preset (local engine)")
    src.add_argument("--api-base", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    r.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer token (default $OPENAI_API_KEY)")
    r.add_argument("--model-name", help="model id at the endpoint (default: the first of /v1/models)")
    r.add_argument("--tokenizer", help="the endpoint's tokenizer folder, with --api-base: tasks that count tokens (needle) "
                   "need it, and --interpreter then sends each turn as token ids (exactly the local prompt)")
    r.add_argument("--interpreter", action="store_true", help="generate through puyu.Agent with the sandboxed interpreter")
    r.add_argument("--max-steps", type=int, default=4, help="interpreter actions per sample (default 4)")
    r.add_argument("--call-timeout", type=float, default=10.0, help="seconds per interpreter call (default 10)")
    r.add_argument("--workers", type=int, default=2, help="agent worker threads = pooled kernels (default 2)")
    r.add_argument("--limit", type=int, help="first N samples of each task")
    r.add_argument("--repeats", type=int, default=1, help="K samples per prompt at the task's temperature (pass@K, maj@K)")
    r.add_argument("--temperature", type=float, help="override the task's sampling temperature")
    r.add_argument("--max-new-tokens", type=int, help="override the task's generation budget")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", default="runs/eval", help="output folder (default runs/eval)")
    r.add_argument("--data", action="append", default=[], metavar="[TASK=]PATH",
                   help="dataset path, repeatable: TASK=PATH for one task (e.g. --data gsm8k=test.jsonl "
                        "--data math=MATH/test); a bare PATH serves every task that needs data "
                        "(gsm8k, math, perplexity), or tools when none of those is run")
    r.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="task option, repeatable (e.g. prompt=fewshot, max_factor=8, haystack=DIR)")
    r.add_argument("--haystack", metavar="DIR", help="needle haystack folder of .txt/.md files (= --option haystack=DIR)")
    r.add_argument("--rope-scaling", help="override RoPE scaling at inference: dynamic:F, linear:F or none")
    r.add_argument("--batch-size", type=int, default=64, help="local engine max batch size (default 64)")
    r.add_argument("--cache-tokens", type=int, help="local engine KV cache size in tokens (long needle prompts)")
    add_kv_argument(r)
    r.add_argument("--concurrency", type=int, default=8, help="API requests in flight (default 8)")
    r.add_argument("--timeout", type=float, default=120.0, help="API request timeout in seconds")
    r.add_argument("--rescore", action="store_true", help="re-score existing predictions without generating")
    r.add_argument("--fresh", action="store_true",
                   help="delete the task folder's earlier predictions first (a rerun otherwise resumes them, "
                        "and refuses when model, settings, options or prompt differ)")
    r.add_argument("--label", help="folder suffix TASK@LABEL, to keep variants side by side (e.g. dynamic-ntk)")
    r.add_argument("--no-progress", action="store_true")
    sub.add_parser("tasks", help="list tasks")
    rep = sub.add_parser("report", help="rebuild report.json/report.md/PNGs of a run folder")
    rep.add_argument("dir")


def _options(items: list[str], args=None, tasks=()) -> dict:
    """`--option KEY=VALUE` items (and `--haystack DIR`) -> dict; a key that none of `tasks` reads is an
    error naming each task's options."""
    out = {}
    for it in items:
        key, eq, val = it.partition("=")
        if not eq or not key:
            raise EvalError(f"--option takes KEY=VALUE, got {it!r}")
        out[key] = val
    if args is not None and getattr(args, "haystack", None):
        if out.get("haystack", args.haystack) != args.haystack:
            raise EvalError("--haystack and --option haystack= name different folders")
        out["haystack"] = args.haystack
    if tasks:
        known = {k for t in tasks for k in t.options}
        for key in out:
            if key not in known:
                valid = "; ".join(f"{t.name}: {', '.join(t.options) or 'none'}" for t in tasks)
                raise EvalError(f"--option {key}: no such option ({valid})")
    return out


def _data_paths(items: list[str], tasks) -> dict[str, str | None]:
    """`--data` items -> {task name: path or None}. `TASK=PATH` names one task of this run; a bare PATH
    (at most one) goes to every task whose data is required, or, when none is, to those that read data
    optionally (tools); a TASK=PATH wins over it."""
    names = {t.name for t in tasks}
    tagged: dict[str, str] = {}
    bare: list[str] = []
    from puyu.eval import TASKS

    for it in items:
        key, eq, val = it.partition("=")
        if not (eq and key in TASKS):  # a path (which may itself hold "=")
            if eq and key and "/" not in key and "\\" not in key and not _exists(it):
                raise EvalError(f"--data {it}: {key} is not a task (puyu eval tasks lists them), "
                                f"and {it} is no file")
            bare.append(it)
            continue
        if key not in names:
            raise EvalError(f"--data {it}: {key} is not one of the tasks of this run ({', '.join(sorted(names))})")
        if key in tagged:
            raise EvalError(f"--data {key}= is given twice")
        if not val:
            raise EvalError(f"--data {key}= names no path")
        tagged[key] = val
    if len(bare) > 1:
        raise EvalError(f"--data: {len(bare)} paths without a task ({', '.join(bare)}); name each "
                        "one's task: --data TASK=PATH")
    required = [t for t in tasks if t.data == "required"]
    targets = required or [t for t in tasks if t.data == "optional"]
    if bare and not targets:
        raise EvalError(f"--data {bare[0]}: {', '.join(t.name for t in tasks)} "
                        f"read{'s' if len(tasks) == 1 else ''} no dataset")
    out: dict[str, str | None] = {t.name: None for t in tasks}
    for t in targets:
        if bare:
            out[t.name] = bare[0]
    for name, path in tagged.items():
        task = next(t for t in tasks if t.name == name)
        if not task.data:
            raise EvalError(f"--data {name}=: {name} reads no dataset")
        out[name] = path
    return out


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).exists()


def _check_out(out) -> None:
    """--out must be (or be creatable as) a folder, and the report files in it must not be folders: checked
    before anything generates. Names the path that is in the way (`afile` for --out afile/sub)."""
    for p in [out, *out.parents]:
        if p.exists():
            if not p.is_dir():
                raise EvalError(f"--out {out}: {p} is a file, not a folder")
            break
    for name in ("report.md", "report.json"):
        if (out / name).is_dir():
            raise EvalError(f"--out {out}: {out / name} is a folder; the report is written there as a file")


def run(args: argparse.Namespace) -> int:
    from puyu.eval import TASKS, get_task
    from puyu.eval import report as R

    cmd = getattr(args, "eval_command", None)
    if cmd == "tasks":
        for name in TASKS:
            t = get_task(name)
            print(f"{name:<12} {t.description}  [{', '.join(t.backends)}]")
        return 0
    if cmd == "report":
        rep = R.build(args.dir)
        print(f"wrote {args.dir}/report.md ({len(rep['tasks'])} task folders)")
        return 0
    if cmd != "run":
        print("usage: puyu eval {run,tasks,report} ...")
        return 2
    return _run(args)


def _run(args) -> int:
    from pathlib import Path

    from puyu.eval import Context, get_task
    from puyu.eval import report as R
    from puyu.eval.backends import APIBackend, LocalBackend, parse_rope_scaling
    from puyu.eval.runner import check_resume, generation_settings, run_task, task_dir

    tasks = [get_task(n) for n in args.tasks]
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be at least 1, got {args.limit}")
    if args.repeats < 1:
        raise EvalError(f"--repeats must be at least 1, got {args.repeats}")
    options = _options(args.option, args, tasks)
    data = _data_paths(args.data or [], tasks)
    if args.api_base and not args.rescore and args.temperature is not None and args.temperature > 2:
        # OpenAI's API (and puyu serve, vLLM) accept 0..2; the local engine takes any, so refuse it here
        # rather than after the first task has started
        raise EvalError(f"--temperature {args.temperature:g}: an OpenAI-compatible endpoint accepts 0 to 2")
    if args.rescore and args.fresh:
        raise EvalError("--rescore re-scores the predictions that --fresh would delete; give one of them")
    out = Path(args.out)
    _check_out(out)
    for task in tasks:
        task_dir(out, task, args.interpreter, args.label)  # a bad --label, before anything runs
        generation_settings(task, args.repeats, args.temperature, args.seed, args.max_new_tokens)
        if args.interpreter and not task.interpreter_ok:
            raise EvalError(f"--interpreter does not apply to {task.name}")
    kind = "local" if args.model else "api" if args.api_base else None
    for task in tasks:
        if kind and not args.rescore and kind not in task.backends:
            raise EvalError(f"{task.name} runs on the {' or '.join(task.backends)} backend only"
                            + (" (give --model; an API endpoint returns no prompt logprobs)" if kind == "api" else ""))
    backend = None
    if not args.rescore:
        if args.model:
            backend = LocalBackend(args.model, max_batch_size=args.batch_size, cache_tokens=args.cache_tokens,
                                   rope_scaling=parse_rope_scaling(args.rope_scaling), kv=args.kv)
        elif args.api_base:
            tok = None
            if args.tokenizer:
                from puyu.model.tokenizer import load_tokenizer

                tok = load_tokenizer(args.tokenizer)
            backend = APIBackend(args.api_base, api_key=args.api_key, model_name=args.model_name,
                                 concurrency=args.concurrency, timeout=args.timeout, tokenizer=tok)
        else:
            raise EvalError("give --model PATH_OR_PRESET or --api-base URL (or --rescore)")
    agent = ({"workers": args.workers, "max_steps": args.max_steps, "timeout": args.call_timeout}
             if args.interpreter else None)
    failed, started = True, False
    try:
        # every task's data and samples first: a bad file of the third task stops the run before the
        # first one generates anything
        planned = []
        for task in tasks:
            ctx = Context(data=data[task.name], limit=args.limit, seed=args.seed,
                          tokenizer=getattr(backend, "tokenizer", None),
                          model_config=getattr(backend, "config", None), options=options,
                          interpreter=args.interpreter)
            samples = task.samples(ctx)
            if args.limit is not None and len(samples) < args.limit:
                import sys

                print(f"note: {task.name}: --limit {args.limit} is more than its {len(samples)} samples"
                      + (f" ({ctx.data})" if ctx.data else "") + f"; running all {len(samples)}", file=sys.stderr)
            planned.append((task, ctx, samples))
        for task, ctx, samples in planned:  # every task's earlier predictions are this run's, before any generates
            check_resume(task, backend, out, ctx, samples, repeats=args.repeats, temperature=args.temperature,
                         max_new_tokens=args.max_new_tokens, agent=agent, label=args.label, fresh=args.fresh,
                         rescore=args.rescore)
        for task, ctx, samples in planned:
            started = True
            d = run_task(task, backend, out, ctx, repeats=args.repeats, temperature=args.temperature,
                         max_new_tokens=args.max_new_tokens, rescore=args.rescore, progress=not args.no_progress,
                         agent=agent, label=args.label, fresh=args.fresh, samples=samples)
            print(f"{task.name}: predictions in {d}/predictions.jsonl")
        failed = False
    finally:
        if backend is not None:
            backend.close()
        if failed and started and any(out.glob("*/predictions.jsonl")):
            # a later task failed (or Ctrl-C): the report still covers the tasks that finished
            try:
                R.build(out)
                import sys

                print(f"report of the finished tasks: {out}/report.md", file=sys.stderr)
            except Exception:  # noqa: BLE001 - the original error is the one to show
                pass
    rep = R.build(out)
    for t in rep["tasks"]:
        a = t["pass@1"]
        if a is None:
            ppl = t.get("perplexity") or {}
            print(f"{t['folder']:<24} perplexity {ppl.get('perplexity', float('nan')):.3f}, "
                  f"{ppl.get('bits_per_byte', float('nan')):.4f} bits/byte (n={t['n_samples']})")
            continue
        print(f"{t['folder']:<24} pass@1 {100 * a['mean']:.1f}% [{100 * a['ci95'][0]:.1f}, "
              f"{100 * a['ci95'][1]:.1f}] (n={a['n']})")
    print(f"report: {out}/report.md")
    return 0
