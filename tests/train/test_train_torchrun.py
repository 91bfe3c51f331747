"""Two processes under real `torchrun --nproc_per_node=2` (gloo on CPU) with the same global batch
match one process: the same loss at every step within 1e-5, for DDP and for FSDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import write_recipe

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _losses(out: Path, kind: str = "train") -> list[tuple[int, float]]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in recs if r["kind"] == kind]


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    if exe.exists():
        return [str(exe)]
    if shutil.which("torchrun"):
        return ["torchrun"]
    return [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, tiny_shards, strategy):
    sections = dict(train={"steps": 12, "batch_size": 8, "grad_accum": 2, "eval_every": 6, "save_every": 6,
                           "save_hf": True},
                    dist={"strategy": strategy, "backend": "gloo"})
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = write_recipe(tmp_path / "one" / "r.yaml", tiny_shards, **sections)
    two = write_recipe(tmp_path / "two" / "r.yaml", tiny_shards, **sections)
    res = subprocess.run([sys.executable, "-m", "puyu.cli", "train", "pretrain", str(one)], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    res = subprocess.run(_torchrun() + ["--standalone", "--nproc_per_node=2", "-m", "puyu.cli", "train",
                                        "pretrain", str(two)], env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es)" in res.stderr
    a, b = _losses(tmp_path / "one" / "out"), _losses(tmp_path / "two" / "out")
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 13))
    for (step, la), (_, lb) in zip(a, b):
        assert abs(la - lb) < 1e-5, f"step {step}: one process {la}, two processes {lb}"
    for (step, la), (_, lb) in zip(_losses(tmp_path / "one" / "out", "val"), _losses(tmp_path / "two" / "out", "val")):
        assert abs(la - lb) < 1e-5, f"validation at step {step}: {la} vs {lb}"
    # The final weights were gathered and written once, loadable like any Hugging Face directory.
    from puyu.model.checkpoint import load_model

    m1 = load_model(tmp_path / "one" / "out" / "hf")
    m2 = load_model(tmp_path / "two" / "out" / "hf")
    for (n, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert (p1 - p2).abs().max() < 1e-4, n


@pytest.mark.slow
def test_failed_run_exits_with_its_error_and_does_not_hang(tmp_path, tiny_shards):
    """A loss that diverges on every rank ends the torchrun job with the training error and a non-zero
    status, promptly (the process group is aborted, not torn down collectively)."""
    sections = dict(train={"steps": 30, "batch_size": 8, "eval_every": 30, "save_every": 30},
                    optim={"lr": 1e6, "warmup_steps": 1, "grad_clip": 0.0},
                    dist={"strategy": "ddp", "backend": "gloo"})
    recipe = write_recipe(tmp_path / "r.yaml", tiny_shards, **sections)
    res = subprocess.run(_torchrun() + ["--standalone", "--nproc_per_node=2", "-m", "puyu.cli", "train",
                                        "pretrain", str(recipe)], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0
    assert "loss became" in res.stderr, res.stderr[-3000:]
