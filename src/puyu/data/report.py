"""The run report: Markdown plus PNG charts, from the shard markers a run leaves in its workdir.

    counts per step      documents in, dropped, modified, added (top-up copies), top drop reasons
    precision / recall   per step, when documents carry synthetic labels: a drop is correct when the
                         document's label lists this step among those that should drop it
                         (synthetic.LABELS); recall counts only documents that reached the step.
                         Repair steps (normalise, c4 line removal) are scored the same way on
                         "modified"
    outcome per label    what happened to each kind of planted defect
    score distributions  sampled values of each score (value, fluency, unsafe probability, ...),
                         clean-like vs dirty documents
    domain mixture       before the top-up (the domain step's predictions) and in the final output

`puyu data report WORKDIR` regenerates it; `write_report` is what `run_recipe` calls.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections import Counter

from puyu.data.executor import load_stats
from puyu.errors import PuyuError


def _merge_values(dst: dict, src: dict) -> None:
    for key, groups in src.items():
        for g, vals in groups.items():
            dst.setdefault(key, {}).setdefault(g, []).extend(vals)


def aggregate(workdir: str) -> dict:
    """Sum the per-shard stats of a run: {"info", "steps": {label: totals}, "order", "summaries",
    "output_domains", "manifest"}."""
    run_file = os.path.join(workdir, "run.json")
    if not os.path.exists(run_file):
        raise PuyuError(f"{workdir} has no run.json: not a puyu data run directory")
    with open(run_file) as f:
        info = json.load(f)
    stats = load_stats(workdir)
    if not stats:
        raise PuyuError(f"{workdir}: no finished shards to report on")
    order = ["reader"] + [s["label"] for s in info["steps"]]
    steps: dict[str, dict] = {}
    last_stage = max(s["stage"] for s in stats)
    output_domains: Counter[str] = Counter()
    n_out = 0
    for shard in stats:
        for label, st in shard["steps"].items():
            t = steps.setdefault(label, {"in": 0, "dropped": 0, "modified": 0, "added": 0, "reasons": Counter(),
                                         "labels": {}, "langs": {}, "values": {}, "categories": {}})
            for k in ("in", "dropped", "modified", "added"):
                t[k] += st[k]
            t["reasons"].update(st["reasons"])
            for lab, row in st["labels"].items():
                acc = t["labels"].setdefault(lab, [0, 0, 0])
                for i in range(3):
                    acc[i] += row[i]
            for lang, table in st.get("langs", {}).items():
                dst = t["langs"].setdefault(lang, {})
                for lab, row in table.items():
                    acc = dst.setdefault(lab, [0, 0, 0])
                    for i in range(3):
                        acc[i] += row[i]
            _merge_values(t["values"], st["values"])
            for key, cnt in st["categories"].items():
                t["categories"].setdefault(key, Counter()).update(cnt)
        if shard["stage"] == last_stage:
            output_domains.update(shard.get("output_domains", {}))
            n_out += shard["out"]
    summaries = []
    for path in sorted(glob.glob(os.path.join(workdir, "stages", "*", "decisions.json"))):
        with open(path) as f:
            summaries.append(json.load(f))
    manifest = None
    if info.get("synthetic_manifest") and os.path.exists(info["synthetic_manifest"]):
        with open(info["synthetic_manifest"]) as f:
            manifest = json.load(f)
    return {"info": info, "steps": steps, "order": [o for o in order if o in steps], "summaries": summaries,
            "output_domains": dict(output_domains), "documents_out": n_out, "manifest": manifest}


def languages(agg: dict) -> list[str]:
    """The synthetic languages seen in a run (en, mixed, zh), sorted."""
    return sorted({lang for t in agg["steps"].values() for lang in t.get("langs", {})})


def precision_recall(agg: dict, lang: str | None = None) -> list[dict]:
    """Per step and action ("drop" / "modify"): tp, fp, fn, precision, recall, from synthetic labels;
    with `lang`, counting only documents of that synthetic language. Empty when the corpus has no
    labels."""
    from puyu.data.synthetic import LABELS

    rows = []
    if agg["manifest"] and "reader" in agg["steps"] and lang is None:
        # broken lines carry no label (they cannot be parsed): score the reader on the planted count
        planted, got = agg["manifest"]["reader_errors"], agg["steps"]["reader"]["dropped"]
        tp = min(planted, got)
        rows.append({"step": "reader", "action": "drop", "tp": tp, "fp": got - tp, "fn": planted - tp,
                     "precision": tp / got if got else None, "recall": tp / planted if planted else None})
    for label in agg["order"]:
        t = agg["steps"][label]
        if not t["labels"] or label == "reader" or label.split("#")[0] in ("enrich", "topup"):
            continue  # the reader is scored above; enrich and topup are judged by domain, below
        base = label.split("#")[0]
        if lang is not None:  # the same counts restricted to one language (all its documents are labelled)
            table = t.get("langs", {}).get(lang, {})
            t = {"labels": table, "dropped": sum(r[1] for r in table.values()),
                 "modified": sum(r[2] for r in table.values())}
        for action, col, total in (("drop", 1, t["dropped"]), ("modify", 2, t["modified"])):
            targets = {lab for lab, spec in LABELS.items() if base in getattr(spec, action)}
            if not targets and total == 0:
                continue
            tp = sum(t["labels"].get(lab, [0, 0, 0])[col] for lab in targets)
            fn = sum(t["labels"].get(lab, [0, 0, 0])[0] - t["labels"].get(lab, [0, 0, 0])[col] for lab in targets)
            tolerated = sum(t["labels"].get(lab, [0, 0, 0])[col] for lab, spec in LABELS.items()
                            if action == "modify" and base in spec.may_modify)
            fp = total - tp - tolerated
            rows.append({"step": label, "action": action, "tp": tp, "fp": fp, "fn": fn,
                         "precision": tp / (tp + fp) if tp + fp else None,
                         "recall": tp / (tp + fn) if tp + fn else None})
    return rows


def label_outcomes(agg: dict) -> dict[str, dict]:
    """For each synthetic label: documents seen, and how many each step dropped."""
    out: dict[str, dict] = {}
    for label in agg["order"]:
        for lab, (n_in, dropped, _) in agg["steps"][label]["labels"].items():
            row = out.setdefault(lab, {"in": 0, "dropped_by": {}})
            row["in"] = max(row["in"], n_in)
            if dropped:
                row["dropped_by"][label] = dropped
    return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _charts(agg: dict, out_dir: str) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from puyu.data.synthetic import LABELS

    charts = []
    order, steps = agg["order"], agg["steps"]
    # 1. documents through the pipeline and drops per step
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ins = [steps[s]["in"] for s in order]
    drops = [steps[s]["dropped"] for s in order]
    ax.bar(order, ins, color="#9ecae1", label="documents in")
    ax.bar(order, drops, color="#de2d26", label="dropped")
    ax.set_ylabel("documents")
    ax.set_title("Documents in and dropped per step")
    plt.setp(ax.get_xticklabels(), rotation=40, ha="right")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "counts.png"), dpi=110)
    plt.close(fig)
    charts.append(("Documents in and dropped per step", "counts.png"))
    # 2. drop reasons
    reasons = Counter()
    for s in order:
        reasons.update(steps[s]["reasons"])
    if reasons:
        top = reasons.most_common(25)[::-1]
        fig, ax = plt.subplots(figsize=(10, 0.32 * len(top) + 1.2))
        ax.barh([r for r, _ in top], [n for _, n in top], color="#fc9272")
        ax.set_xlabel("documents dropped")
        ax.set_title("Drop reasons")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "reasons.png"), dpi=110)
        plt.close(fig)
        charts.append(("Drop reasons", "reasons.png"))
    # 3. score distributions, clean-like vs dirty when labels exist
    series = [(s, key, groups) for s in order for key, groups in steps[s]["values"].items()]
    if series:
        cols = 3
        rows_n = (len(series) + cols - 1) // cols
        fig, axes = plt.subplots(rows_n, cols, figsize=(12, 3.1 * rows_n), squeeze=False)
        for ax, (s, key, groups) in zip(axes.flat, series):
            buckets: dict[str, list[float]] = {}
            for g, vals in groups.items():
                spec = LABELS.get(g)
                name = "all" if spec is None else ("dirty" if spec.drop else "clean-like")
                buckets.setdefault(name, []).extend(vals)
            log = "perplexity" in key  # spans orders of magnitude
            for name, vals in sorted(buckets.items()):
                vals = [math.log10(max(v, 1e-9)) for v in vals] if log else vals
                ax.hist(vals, bins=40, alpha=0.6, label=f"{name} ({len(vals)})")
            ax.set_title(f"{s}: {'log10 ' if log else ''}{key}", fontsize=9)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(series):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "scores.png"), dpi=100)
        plt.close(fig)
        charts.append(("Score distributions", "scores.png"))
    # 4. domain mixture before / after
    before = next((steps[s]["categories"]["domain"] for s in order if "domain" in steps[s]["categories"]), None)
    after = agg["output_domains"]
    if before and after:
        doms = sorted(set(before) | set(after))
        nb, na = sum(before.values()) or 1, sum(after.values()) or 1
        fig, ax = plt.subplots(figsize=(7, 4))
        x = range(len(doms))
        ax.bar([i - 0.2 for i in x], [before.get(d, 0) / nb for d in doms], 0.4, label="before top-up")
        ax.bar([i + 0.2 for i in x], [after.get(d, 0) / na for d in doms], 0.4, label="output")
        ax.set_xticks(list(x), doms)
        ax.set_ylabel("share of documents")
        ax.set_title("Domain mixture")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "domains.png"), dpi=110)
        plt.close(fig)
        charts.append(("Domain mixture", "domains.png"))
    return charts


def write_report(workdir: str) -> str:
    """Write workdir/report/report.md and its PNG charts; return the Markdown path."""
    agg = aggregate(workdir)
    out_dir = os.path.join(workdir, "report")
    os.makedirs(out_dir, exist_ok=True)
    info, steps, order = agg["info"], agg["steps"], agg["order"]
    n_in = steps["reader"]["in"] if "reader" in steps else 0
    lines = [f"# Data run: {info['recipe']['name']}", "",
             f"- workdir `{workdir}`, {info['shards']} shards, output `{info['output_dir']}`",
             f"- documents read: {n_in}; written: {agg['documents_out']}"
             + (f"; wall time {info['seconds']} s" if "seconds" in info else ""), "",
             "## Steps", "", "| step | in | dropped | dropped % | modified | added | top reasons |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for s in order:
        t = steps[s]
        top = "; ".join(f"{r} ({n})" for r, n in t["reasons"].most_common(3))
        pct = 100 * t["dropped"] / t["in"] if t["in"] else 0
        lines.append(f"| {s} | {t['in']} | {t['dropped']} | {pct:.1f} | {t['modified']} | {t['added']} | {top} |")
    if agg["summaries"]:
        lines += ["", "## Global steps", ""]
        for summ in agg["summaries"]:
            lines.append(f"- **{summ['step']}**: " + ", ".join(f"{k} {v}" for k, v in summ.items() if k != "step"))
    pr = precision_recall(agg)
    if pr:
        lines += ["", "## Precision and recall on the synthetic labels", "",
                  "| step | action | correct | wrong | missed | precision | recall |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in pr:
            lines.append(f"| {r['step']} | {r['action']} | {r['tp']} | {r['fp']} | {r['fn']} | "
                         f"{_fmt(r['precision'])} | {_fmt(r['recall'])} |")
        lines.append("\nA drop (or repair) is correct when the document's synthetic label names this step; "
                     "recall counts only documents that reached the step. The reader is scored on the "
                     "number of broken lines planted, which carry no label.")
        langs = languages(agg)
        if len(langs) > 1:
            lines += ["", "## Precision and recall per language", "",
                      "| step | action | " + " | ".join(f"{g} P | {g} R | {g} wrong/missed" for g in langs) + " |",
                      "|---|---|" + "---:|---:|---:|" * len(langs)]
            per = {g: {(r["step"], r["action"]): r for r in precision_recall(agg, g)} for g in langs}
            for r in pr:
                key = (r["step"], r["action"])
                if key[0] == "reader":
                    continue
                cells = []
                for g in langs:
                    x = per[g].get(key)
                    cells.append("- | - | -" if x is None else
                                 f"{_fmt(x['precision'])} | {_fmt(x['recall'])} | {x['fp']}/{x['fn']}")
                lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
            lines.append("\nLanguages are the synthetic corpus's: en, zh (Chinese written for this project from "
                         "templates) and mixed (Chinese with English terms, English with a Chinese sentence). "
                         "Text we wrote ourselves is weak evidence about real web text.")
        lines += ["", "## Outcome per label", "", "| label | documents | dropped | kept % | dropped by |",
                  "|---|---:|---:|---:|---|"]
        for lab, row in sorted(label_outcomes(agg).items()):
            dropped = sum(row["dropped_by"].values())
            by = ", ".join(f"{s} {n}" for s, n in row["dropped_by"].items())
            kept = 100 * (row["in"] - dropped) / row["in"] if row["in"] else 0
            lines.append(f"| {lab} | {row['in']} | {dropped} | {kept:.1f} | {by} |")
    for s in order:
        conf = steps[s]["categories"].get("domain_confusion")
        if conf:
            total = sum(conf.values())
            right = sum(n for k, n in conf.items() if k.split("->")[0] == k.split("->")[1])
            lines += ["", f"## Domain classifier ({s})", "", f"accuracy on synthetic domains: {right / total:.3f} "
                      f"({right}/{total}); confusions: "
                      + (", ".join(f"{k} {n}" for k, n in sorted(conf.items()) if k.split('->')[0] != k.split('->')[1])
                         or "none")]
        enr = steps[s]["categories"].get("enrich_truth")
        if enr:
            kept_hit, kept_miss = enr.get("seed_domain:kept", 0), enr.get("other:kept", 0)
            all_hit = kept_hit + enr.get("seed_domain:dropped", 0)
            lines += ["", f"## Enrichment ({s})", "",
                      f"pulled {kept_hit + kept_miss} documents; precision {_fmt(kept_hit / max(kept_hit + kept_miss, 1))}"
                      f" (seed domain among pulled), recall {_fmt(kept_hit / max(all_hit, 1))} (of the pool's "
                      f"{all_hit} seed-domain documents)"]
    before = next((steps[s]["categories"]["domain"] for s in order if "domain" in steps[s]["categories"]), None)
    if before and agg["output_domains"]:
        nb, na = sum(before.values()), sum(agg["output_domains"].values())
        lines += ["", "## Domain mixture", "", "| domain | before top-up | share | output | share |",
                  "|---|---:|---:|---:|---:|"]
        for d in sorted(set(before) | set(agg["output_domains"])):
            b, a = before.get(d, 0), agg["output_domains"].get(d, 0)
            lines.append(f"| {d} | {b} | {b / nb:.3f} | {a} | {a / na:.3f} |")
    charts = _charts(agg, out_dir)
    lines += ["", "## Charts", ""] + [f"![{title}]({png})" for title, png in charts]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
