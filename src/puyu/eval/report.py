"""Build `report.json`, `report.md` and PNGs from the predictions of every task under a run folder.

Figures per task folder (`<task>` or `<task>+interpreter`): pass@1 (the mean score; with K repeats the
mean over samples of c/K) with its 95% Wilson interval; with K > 1 also pass@K (unbiased, Chen et al.
2021) and maj@K, each with a Wilson interval; breakdowns by the samples' groups (size, level, type,
length, depth...); task details averaged (gsm8k strict/flexible, tools valid-JSON/name/argument rates);
agent figures with the interpreter (share of samples that called it, share of calls that ran without
error, turns used); perplexity totals (perplexity and bits per byte only: no pass@1, interval, failures
or bar); the needle heatmap (`needle_heatmap.png`) and effective length.
A task run with and without the interpreter appears as two rows side by side in the summary table.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from puyu.eval.runner import read_predictions
from puyu.eval.stats import accuracy, majority, pass_at_k
from puyu.eval.task import EvalError


def _task_name(folder: str) -> str:
    return folder.split("+", 1)[0].split("@", 1)[0]


def summarise(d: Path) -> dict:
    rows = read_predictions(d / "predictions.jsonl")
    run = json.loads((d / "run.json").read_text()) if (d / "run.json").exists() else {}
    if isinstance(run.get("ids"), list):  # the last run's samples: predictions past a smaller --limit stay
        keep = set(run["ids"])             # in the file but out of the figures
        rows = [r for r in rows if r.get("id") in keep]
    by_id: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_id[r["id"]].append(r)
    k = int((run.get("generation") or {}).get("repeats", 1))
    if _task_name(d.name) == "perplexity":  # not an accuracy: totals only
        from puyu.eval.perplexity import totals

        return {"task": "perplexity", "folder": d.name, "n_samples": len(by_id), "n_generations": len(rows),
                "expected_samples": run.get("n_samples"), "repeats": 1,
                "complete": run.get("n_samples") == len(by_id), "pass@1": None, "empty_outputs": 0, "by": {},
                "details": {}, "completion_tokens": None, "failures": [],
                "perplexity": totals([json.loads(r["output"]) for r in rows]) if rows else None}
    per_id = {i: sum(r["score"] for r in rs) / len(rs) for i, rs in by_id.items()}
    out: dict = {"task": _task_name(d.name), "folder": d.name, "n_samples": len(by_id), "n_generations": len(rows),
                 "expected_samples": run.get("n_samples"), "repeats": k,
                 "complete": run.get("n_samples") == len(by_id) and all(len(v) >= k for v in by_id.values()),
                 "pass@1": accuracy(list(per_id.values())),
                 "empty_outputs": sum(not (r.get("output") or "").strip() and not r.get("error") for r in rows),
                 "context_errors": sum(bool(r.get("error")) for r in rows),
                 "capped": sum(r.get("capped_max_new_tokens") is not None for r in rows)}
    if k > 1:
        full = {i: rs for i, rs in by_id.items() if len(rs) >= k}
        out[f"pass@{k}"] = accuracy([pass_at_k(len(rs), sum(r["score"] >= 1 for r in rs), k) for rs in full.values()])
        maj = []
        for rs in full.values():
            m = majority([r.get("extracted") for r in rs])
            maj.append(next((r["score"] for r in rs if m is not None and r.get("extracted") == m), 0.0))
        out[f"maj@{k}"] = accuracy(maj)
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i, rs in by_id.items():
        for key, val in (rs[0].get("groups") or {}).items():
            groups[key][str(val)].append(per_id[i])
    out["by"] = {key: {v: accuracy(s) for v, s in sorted(vals.items(), key=lambda kv: _sort_key(kv[0]))}
                 for key, vals in groups.items()}
    details: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        for key, v in (r.get("details") or {}).items():
            if isinstance(v, (bool, int, float)) and v is not None:
                details[key].append(float(v))
    out["details"] = {key: {"mean": sum(v) / len(v), "n": len(v)} for key, v in details.items()}
    agents = [r["agent"] for r in rows if r.get("agent")]
    if agents:
        calls = sum(a["interpreter_calls"] for a in agents)
        out["agent"] = {"called_interpreter": sum(a["interpreter_calls"] > 0 for a in agents) / len(agents),
                        "calls_without_error": (sum(a["ok_calls"] for a in agents) / calls) if calls else None,
                        "mean_turns": sum(a["turns"] for a in agents) / len(agents), "calls": calls}
    toks = [r.get("completion_tokens") for r in rows if r.get("completion_tokens") is not None]
    out["completion_tokens"] = sum(toks) if toks else None
    if out["task"] == "needle" and rows:
        out["needle"] = _needle(d, rows, run)
    out["failures"] = [{"id": r["id"], "output": (r.get("output") or "")[:300], "extracted": r.get("extracted"),
                        "reference": _reference(r.get("record") or {}), **({"error": r["error"]} if r.get("error") else {})}
                       for r in rows if r["score"] < 1][:5]
    return out


def _sort_key(v: str):
    try:
        return (0, float(v.lstrip("< ")), v)
    except ValueError:
        return (1, 0.0, v)


def _reference(record: dict) -> str:
    """The reference answer as the scorer compares it: gsm8k's number after `####`, MATH's last
    `\\boxed{}`, else the record's answer field."""
    ans, sol = record.get("answer"), record.get("solution")
    if isinstance(ans, str) and "####" in ans:
        return ans.rsplit("####", 1)[-1].strip()
    if isinstance(sol, str):
        from puyu.eval.competition_math import last_boxed

        boxed = last_boxed(sol)
        if boxed is not None:
            return boxed
    for key in ("answer", "answers", "expected", "solution"):
        if key in record:
            v = record[key]
            return (v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))[-200:]
    return ""


def _needle(d: Path, rows: list[dict], run: dict) -> dict:
    from puyu.eval.needle import RULER_THRESHOLD, effective_length

    cells: dict[tuple[int, float], list[float]] = defaultdict(list)
    for r in rows:
        rec = r["record"]
        cells[(int(rec["length"]), float(rec["depth"]))].append(r["score"])
    lengths = sorted({c[0] for c in cells})
    depths = sorted({c[1] for c in cells})
    grid = [[(sum(cells[(L, p)]) / len(cells[(L, p)])) if cells.get((L, p)) else None for L in lengths] for p in depths]
    by_len = {L: sum(s for (LL, _), v in cells.items() if LL == L for s in v) /
              sum(len(v) for (LL, _), v in cells.items() if LL == L) for L in lengths}
    opts = run.get("options") or {}
    cfg = ((run.get("backend") or {}).get("config") or {})
    trained = int(opts.get("trained_length") or cfg.get("max_position_embeddings") or 0) or None
    eff = effective_length(by_len)
    title = f"needle ({d.name}); rope_scaling={cfg.get('rope_scaling')}"
    _heatmap(d / "needle_heatmap.png", grid, lengths, depths, trained, title)
    return {"lengths": lengths, "depths": depths, "grid": grid, "mean_by_length": by_len,
            "effective_length": eff, "threshold": RULER_THRESHOLD, "trained_length": trained,
            "heatmap": f"{d.name}/needle_heatmap.png"}


def _heatmap(path: Path, grid, lengths, depths, trained, title) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(lengths), 1.2 + 0.35 * len(depths)))
    im = ax.imshow(data, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(L) for L in lengths], rotation=45)
    ax.set_yticks(range(len(depths)), [f"{p:g}" for p in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth (%)")
    if trained:
        x = trained_x(lengths, trained)
        ax.axvline(x, color="black", linestyle="--", linewidth=1.5)
        ax.text(x, -0.5, f" {trained}", ha="left", va="bottom", fontsize=7)
        title += f"\ndashed: trained length {trained}"
    for yi, row in enumerate(data):
        for xi, v in enumerate(row):
            if v == v:  # not NaN
                ax.text(xi, yi, f"{v:.1f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="recall")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trained_x(lengths: list[int], trained: int) -> float:
    """Where the trained length falls on the heatmap's categorical length axis (column i at x = i): at
    its column, else between its neighbours by log length (the grid is geometric, so a length halfway
    in ratio sits on the boundary), or half a column past either end."""
    import bisect
    import math

    i = bisect.bisect_left(lengths, trained)
    if i < len(lengths) and lengths[i] == trained:
        return float(i)
    if i == 0:
        return -0.5
    if i >= len(lengths):
        return len(lengths) - 0.5
    return i - 1 + math.log(trained / lengths[i - 1]) / math.log(lengths[i] / lengths[i - 1])


def _fmt(a: dict | None) -> str:
    if not a:
        return ""
    lo, hi = a["ci95"]
    return f"{100 * a['mean']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def build(out: str | Path) -> dict:
    """Summarise every task folder under `out`; write report.json, report.md and PNGs; return the dict."""
    out = Path(out)
    folders = sorted(p.parent for p in out.glob("*/predictions.jsonl"))
    if not folders:
        raise EvalError(f"{out}: no <task>/predictions.jsonl to report on")
    tasks = [summarise(d) for d in folders]
    report = {"tasks": tasks}
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    scored = [t for t in tasks if t["pass@1"] is not None]
    if scored:
        _bars(out / "accuracy.png", scored)
    (out / "report.md").write_text(markdown(tasks, bars=bool(scored)))
    return report


def _bars(path: Path, tasks: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(tasks)), 3.2))
    means = [t["pass@1"]["mean"] for t in tasks]
    err = [[max(0.0, m - t["pass@1"]["ci95"][0]) for m, t in zip(means, tasks)],
           [max(0.0, t["pass@1"]["ci95"][1] - m) for m, t in zip(means, tasks)]]
    ax.bar(range(len(tasks)), means, yerr=err, capsize=4, color="#4a7fb5")
    ax.set_xticks(range(len(tasks)), [t["folder"] for t in tasks], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("pass@1 (95% Wilson)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(tasks: list[dict], bars: bool = True) -> str:
    ks = sorted({t["repeats"] for t in tasks if t["repeats"] > 1})
    kk = str(ks[0]) if len(ks) == 1 else "k"  # one K for every row: in the header; several: in each cell
    lines = ["# Evaluation report", "", "pass@1 etc. in percent with 95% Wilson intervals.", "",
             f"| task | samples | pass@1 | pass@{kk} | maj@{kk} | notes |", "|---|---|---|---|---|---|"]
    for t in tasks:
        k = t["repeats"]
        if k > 1 and len(ks) > 1:
            notes_k = f" (k={k})"
        else:
            notes_k = ""
        notes = []
        if t.get("expected_samples", 0) is None:  # predictions without their run.json
            notes.append(f"no run.json: sample count and settings unknown ({t['n_samples']} samples found)")
        elif not t["complete"]:
            notes.append(f"incomplete ({t['n_samples']}/{t['expected_samples']})")
        if t["empty_outputs"]:
            notes.append(f"{t['empty_outputs']} empty outputs")
        if t.get("context_errors"):
            notes.append(f"{t['context_errors']} prompts longer than the context (scored 0)")
        if t.get("capped"):
            notes.append(f"{t['capped']} completions capped at the room left in the context")
        if "agent" in t:
            a = t["agent"]
            ok = "n/a" if a["calls_without_error"] is None else f"{100 * a['calls_without_error']:.0f}%"
            notes.append(f"called interpreter {100 * a['called_interpreter']:.0f}%, calls ok {ok}, "
                         f"turns {a['mean_turns']:.1f}")
        if t.get("perplexity"):
            notes.append(f"ppl {t['perplexity']['perplexity']:.2f}, {t['perplexity']['bits_per_byte']:.3f} bits/byte")
        if "needle" in t:
            n = t["needle"]
            eff = n["effective_length"]
            eff = (f"effective length {eff}" if eff is not None
                   else f"no length reaches {100 * n['threshold']:.1f}% recall")
            notes.append(f"{eff} (trained {n['trained_length']})")
        for key, v in t["details"].items():
            notes.append(f"{key} {100 * v['mean']:.1f}%")
        pk = _fmt(t.get(f"pass@{k}") if k > 1 else None)
        mk = _fmt(t.get(f"maj@{k}") if k > 1 else None)
        lines.append(f"| {t['folder']} | {t['n_samples']} | {_fmt(t['pass@1'])} | {pk + notes_k if pk else ''} | "
                     f"{mk + notes_k if mk else ''} | {'; '.join(notes)} |")
    lines += ["", "![accuracy](accuracy.png)", ""] if bars else [""]
    for t in tasks:
        lines += [f"## {t['folder']}", ""]
        for key, vals in t["by"].items():
            if len(vals) > 1:
                lines += [f"by {key}: " + ", ".join(f"{v} {_fmt(a)} (n={a['n']})" for v, a in vals.items()), ""]
        if "needle" in t:
            lines += [f"![needle heatmap]({t['needle']['heatmap']})", ""]
        if t["failures"]:
            lines += ["Failures (first few):", ""]
            for f in t["failures"]:
                if f.get("error"):
                    lines.append(f"- `{f['id']}`: error: {f['error'][:200]}")
                    continue
                lines.append(f"- `{f['id']}`: output {json.dumps(f['output'][:160], ensure_ascii=False)}, "
                             f"extracted {f['extracted']!r}, reference {json.dumps(f['reference'][-80:], ensure_ascii=False)}")
            lines.append("")
    return "\n".join(lines) + "\n"
