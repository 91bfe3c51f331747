"""Training metrics: one JSON object per line in `metrics.jsonl`, and a loss-curve PNG.

Every record has `kind` ("train" or "val"), `step`, and its figures (loss, lr, grad_norm, tokens/s,
elapsed seconds...). On resume the file is cut back to the checkpoint's step, so the file always
describes one consistent run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsLog:
    """Append-only JSONL writer (rank 0 only; other ranks pass `enabled=False`)."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop records with step > `step` (used when resuming from checkpoint `step`)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        os.replace(tmp, self.path)

    def reset(self) -> None:
        if self.enabled and self.path.exists():
            self.path.unlink()

    def log(self, kind: str, step: int, **values) -> None:
        if not self.enabled:
            return
        rec = {"kind": kind, "step": step, **values}  # floats kept exact (JSON writes the shortest repr)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_losses(metrics_files: dict[str, str | Path], out_png: str | Path, title: str = "loss") -> Path | None:
    """Plot train (line) and validation (markers) loss against step for each named metrics file.
    Returns the PNG path, or None when matplotlib is missing (pip install 'puyu[train]')."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    offset = 0
    for name, path in metrics_files.items():
        recs = read_metrics(path)
        train = [(r["step"] + offset, r["loss"]) for r in recs if r["kind"] == "train" and "loss" in r]
        val = [(r["step"] + offset, r["loss"]) for r in recs if r["kind"] == "val" and "loss" in r]
        if train:
            line, = ax.plot(*zip(*train), label=f"{name} train", linewidth=1)
            if val:
                ax.plot(*zip(*val), "o", color=line.get_color(), markersize=4, label=f"{name} val")
            offset = max(s for s, _ in train)  # stages follow one another on the x axis
    ax.set_xlabel("step (stages laid end to end)" if len(metrics_files) > 1 else "step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
