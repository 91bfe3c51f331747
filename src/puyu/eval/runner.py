"""Run tasks on a backend with resumable, append-only predictions, then score and report.

Layout of `--out DIR`: `DIR/<task>[+interpreter]/predictions.jsonl` (one line per finished generation:
id, repeat, prompt, output, extracted answer, score, details, tokens, seconds; appended and flushed as
each arrives, so a crash or Ctrl-C loses nothing finished), `DIR/<task>/run.json` (task options, the
sampling settings, backend and model, chat template, puyu version), and the report files written by
`puyu.eval.report`. A rerun skips (id, repeat) pairs already in predictions.jsonl; `rescore` re-scores
every line from its raw output without generating (after a scorer fix).
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

from puyu import __version__
from puyu.eval.task import Context, EvalError, Sample, Task
from puyu.tasks.jsonl import read_jsonl, write_jsonl


def task_dir(out: Path, task: Task, interpreter: bool, label: str | None = None) -> Path:
    """`<task>[+interpreter][@label]`: a label keeps variants apart (e.g. needle@dynamic-ntk). A label
    is one folder-name word (letters, digits, `.`, `_`, `-`): `a/b` would nest a folder the report skips."""
    if label is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", label):
        raise EvalError(f"--label {label!r}: use letters, digits, '.', '_' and '-' only (it names a folder)")
    return out / (task.name + ("+interpreter" if interpreter else "") + (f"@{label}" if label else ""))


def read_predictions(path: Path) -> list[dict]:
    """Lines of predictions.jsonl; a torn last line (killed mid-write) is dropped, any other bad line
    is an error naming it."""
    return read_jsonl(path, EvalError, torn_tail=True, missing_ok=True)


def score_row(task: Task, output: str, record: dict) -> dict:
    return {"extracted": task.extract(output, record), "score": float(task.score(output, record)),
            "details": task.details(output, record)}


def generation_settings(task: Task, repeats: int, temperature: float | None, seed: int,
                        max_new_tokens: int | None) -> dict:
    g = task.generation
    if temperature is not None and temperature < 0:
        raise EvalError(f"--temperature must be at least 0 (0 = greedy), got {temperature:g}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise EvalError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    temp = (g.temperature if temperature is None else temperature) if repeats > 1 else (temperature or 0.0)
    if repeats > 1 and temp <= 0:
        raise EvalError("--repeats K > 1 with greedy decoding gives K identical answers; use a temperature > 0")
    return {"max_new_tokens": g.max_new_tokens if max_new_tokens is None else max_new_tokens, "temperature": temp,
            "top_p": g.top_p if temp > 0 else 1.0, "stop": list(g.stop), "seed": seed, "repeats": repeats}


def run_task(task: Task, backend, out: Path, ctx: Context, *, repeats: int = 1, temperature: float | None = None,
             max_new_tokens: int | None = None, rescore: bool = False, progress: bool = True,
             agent: dict | None = None, label: str | None = None, fresh: bool = False,
             samples: list[Sample] | None = None) -> Path:
    """Generate what is missing, score, and write run.json; returns the task's folder.

    Resuming is only for the same run: when the folder holds predictions made with another model,
    backend, sampling settings, seed, options, data, interpreter settings or prompt, `EvalError` names
    what differs (use another `--out`/`--label`, or `fresh=True` to delete the old predictions first)."""
    if backend is not None and backend.name not in task.backends:
        raise EvalError(f"{task.name} runs on the {' or '.join(task.backends)} backend only")
    interpreter = bool(agent)
    if interpreter and not task.interpreter_ok:
        raise EvalError(f"--interpreter does not apply to {task.name}")
    if ctx.limit is not None and ctx.limit < 1:
        raise EvalError(f"--limit must be at least 1, got {ctx.limit}")
    d = task_dir(out, task, interpreter, label)
    pred_path = d / "predictions.jsonl"
    gen = generation_settings(task, repeats, temperature, ctx.seed, max_new_tokens)
    if samples is None:  # `samples`: task.samples(ctx) already built (puyu eval run checks every task first)
        samples = task.samples(ctx)
    by_id = {s.id: s for s in samples}
    if len(by_id) != len(samples):
        raise EvalError(f"{task.name}: sample ids are not unique")
    if not samples:
        raise EvalError(f"{task.name}: no samples to run")
    if rescore and not (pred_path.is_file() and read_predictions(pred_path)):
        raise EvalError(f"{task.name}: nothing to rescore in {d} (no predictions.jsonl or it is empty)")
    if fresh and not rescore:
        for f in (pred_path, d / "run.json"):
            f.unlink(missing_ok=True)
    created = not d.exists()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # --out is a file, or DIR/<task> is one
        raise EvalError(f"cannot create the output folder {d}: {e.strerror or e}"
                        + (f" ({e.filename} is a file)" if isinstance(e, (FileExistsError, NotADirectoryError))
                           else "")) from e
    rows = read_predictions(pred_path)
    if rescore:
        _rescore(task, pred_path, rows)
        try:  # the report covers this call's samples (its --limit), as after a generating run
            info = json.loads((d / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict):
            info.update(limit=ctx.limit, n_samples=len(samples), ids=list(by_id))
            (d / "run.json").write_text(json.dumps(info, indent=2, ensure_ascii=False, default=str))
    else:
        done = {(r["id"], r["repeat"]) for r in rows}
        todo = [(s, k) for s in samples for k in range(repeats) if (s.id, k) not in done]
        run_info = _run_info(task, backend, ctx, gen, agent, samples)
        if rows:
            _check_same_run(d, run_info, rows, by_id, interpreter, bool(getattr(task, "loglik", False)))
        (d / "run.json").write_text(json.dumps(run_info, indent=2, ensure_ascii=False, default=str))
        if todo:
            try:
                _generate(task, backend, todo, gen, pred_path, progress, agent, ctx)
            except BaseException:
                if created and not read_predictions(pred_path):  # nothing finished: leave no empty folder
                    for f in (pred_path, d / "run.json"):
                        f.unlink(missing_ok=True)
                    try:
                        d.rmdir()
                    except OSError:
                        pass
                raise
    return d


def _run_info(task: Task, backend, ctx: Context, gen: dict, agent: dict | None, samples: list[Sample]) -> dict:
    info = {"task": task.name, "description": task.description, "options": ctx.options,
            "data": ctx.data, "limit": ctx.limit, "seed": ctx.seed, "generation": gen,
            "interpreter": agent, "n_samples": len(samples), "ids": [s.id for s in samples],
            "puyu_version": __version__,
            "backend": backend.describe() if backend is not None else None,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if samples and samples[0].messages is not None:
        info["system_prompt"] = next((m["content"] for m in samples[0].messages if m["role"] == "system"), None)
    return info


def check_resume(task: Task, backend, out: Path, ctx: Context, samples: list[Sample], *, repeats: int = 1,
                 temperature: float | None = None, max_new_tokens: int | None = None,
                 agent: dict | None = None, label: str | None = None, fresh: bool = False,
                 rescore: bool = False) -> None:
    """The checks `run_task` makes before it generates, without writing anything: `puyu eval run` calls
    this for every task first, so a settings mismatch of the second task stops the run before the first
    one generates. Raises EvalError naming the field that differs (e.g. generation.max_new_tokens), or
    when `rescore` finds no predictions to re-score."""
    d = task_dir(out, task, bool(agent), label)
    if d.exists() and not d.is_dir():
        raise EvalError(f"cannot create the output folder {d}: it is a file")
    rows = read_predictions(d / "predictions.jsonl") if d.is_dir() else []
    if rescore:
        if not rows:
            raise EvalError(f"{task.name}: nothing to rescore in {d} (no predictions.jsonl or it is empty)")
        return
    if fresh or not rows:
        return
    gen = generation_settings(task, repeats, temperature, ctx.seed, max_new_tokens)
    _check_same_run(d, _run_info(task, backend, ctx, gen, agent, samples), rows, {s.id: s for s in samples},
                    bool(agent), bool(getattr(task, "loglik", False)))


_SAME = ("options", "data", "seed", "generation", "interpreter", "system_prompt")
_SAME_BACKEND = ("backend", "model", "api_base", "config", "chat_template", "weights")


def _check_same_run(d: Path, new: dict, rows: list[dict], by_id: dict, interpreter: bool, loglik: bool) -> None:
    """Refuse to append to predictions made by a different run (they would be reported under this one)."""
    hint = (f"; {d} holds predictions of another run: use a new --out (or --label), or --fresh to delete "
            "them and start over")
    try:
        old = json.loads((d / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EvalError(f"{d}/run.json is missing or unreadable ({e}), so the predictions there cannot be "
                        f"checked against this run{hint}") from e
    diffs = []
    for k in _SAME:
        a, b = _norm(old.get(k)), _norm(new.get(k))
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):  # name the field: generation.max_new_tokens (8 -> 16)
            diffs += [f"{k}.{f} ({a.get(f)!r} -> {b.get(f)!r})" for f in sorted(set(a) | set(b))
                      if a.get(f) != b.get(f)]
        else:
            diffs.append(k)
    ob, nb = old.get("backend") or {}, new.get("backend") or {}
    diffs += [f"backend.{k}" for k in _SAME_BACKEND if _norm(ob.get(k)) != _norm(nb.get(k))]
    if not interpreter and not loglik:  # a finished sample's recorded prompt must be the one this run sends
        from puyu.model.chat_format import render_chat

        for r in rows:
            s = by_id.get(r.get("id"))
            if s is None:
                continue
            want = s.prompt if s.prompt is not None else (
                render_chat(s.messages, tools=s.tools) if s.messages is not None else None)
            if want is not None and r.get("prompt") is not None and r["prompt"] != want:
                diffs.append(f"prompt (sample {s.id})")
            break
    if diffs:
        raise EvalError(f"{new['task']}: this run differs from the one in {d} in {', '.join(diffs)}{hint}")


def _norm(x):
    return json.loads(json.dumps(x, default=str))


def _drop_torn_tail(path: Path) -> None:
    """Cut a partial last line (a run killed mid-write) so appended lines start on a line of their own."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def _rescore(task: Task, path: Path, rows: list[dict]) -> None:
    for r in rows:
        r.update(score_row(task, r["output"], r["record"]))
    write_jsonl(path.with_suffix(".jsonl.tmp"), rows).replace(path)


def _generate(task: Task, backend, todo: list[tuple[Sample, int]], gen: dict, path: Path, progress: bool,
              agent: dict | None, ctx: Context) -> None:
    from tqdm import tqdm

    _drop_torn_tail(path)
    lock = threading.Lock()
    bar = tqdm(total=len(todo), desc=task.name, disable=not progress, dynamic_ncols=True)
    empty, errors = [0], [0]
    with open(path, "a", encoding="utf-8") as f:
        def on_done(item, res):
            s, rep = item
            if res.get("error"):  # the prompt did not fit the context: recorded, scored 0
                scored = {"extracted": None, "score": 0.0, "details": {}}
            elif getattr(task, "loglik", False):
                scored = {"extracted": None, "score": task.score(res["output"], s.record), "details": {}}
            else:
                scored = score_row(task, res["output"], s.record)
            row = {"id": s.id, "repeat": rep, "groups": s.groups, "record": s.record, **res, **scored}
            with lock:
                if res.get("error"):
                    errors[0] += 1
                else:
                    empty[0] += not res["output"].strip()
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                f.flush()
                bar.update(1)

        try:
            if getattr(task, "loglik", False):
                window = int(ctx.options.get("window") or backend.config.max_position_embeddings)
                stride = int(ctx.options.get("stride") or max(1, window // 2))
                for s, rep in todo:
                    t0 = time.perf_counter()
                    tot = backend.loglik(s, window, stride)
                    on_done((s, rep), {"prompt": s.id, "output": json.dumps(tot), "prompt_tokens": tot["tokens"],
                                       "completion_tokens": 0, "finish_reason": None,
                                       "seconds": time.perf_counter() - t0})
            elif agent:
                from puyu.eval.backends import run_agent

                run_agent(backend, todo, gen, on_done, workers=agent["workers"], max_steps=agent["max_steps"],
                          call_timeout=agent["timeout"])
            else:
                backend.generate(todo, gen, on_done)
        finally:
            bar.close()
    import sys

    if errors[0]:
        print(f"warning: {task.name}: {errors[0]} of {len(todo)} prompts do not fit the model's context "
              "(recorded with their error, scored 0)", file=sys.stderr)
    if empty[0]:
        print(f"warning: {task.name}: {empty[0]} of {len(todo)} generations were empty (scored 0)", file=sys.stderr)
