"""Exact resume after SIGKILL, and refusal of corrupt or partial checkpoints.

The training runs are real subprocesses of `puyu train pretrain` (one thread each, so the float
arithmetic is the same in every run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import write_recipe

from puyu.errors import CheckpointError
from puyu.train import state as ST

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cmd(recipe: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "puyu.cli", "train", "pretrain", str(recipe), *extra]


def _losses(out: Path) -> list[tuple[int, float]]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in recs if r["kind"] == "train"]


def _val(out: Path) -> list[tuple[int, float]]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in recs if r["kind"] == "val"]


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_losses(tmp_path, tiny_shards):
    steps = 80
    sections = dict(train={"steps": steps, "save_every": 10, "eval_every": 20, "keep_checkpoints": 2})
    (tmp_path / "ref").mkdir()
    ref = write_recipe(tmp_path / "ref" / "r.yaml", tiny_shards, **sections)
    subprocess.run(_cmd(ref), check=True, env=ENV, capture_output=True, timeout=600)
    ref_losses = _losses(tmp_path / "ref" / "out")
    assert [s for s, _ in ref_losses] == list(range(1, steps + 1))

    (tmp_path / "run").mkdir()
    rec = write_recipe(tmp_path / "run" / "r.yaml", tiny_shards, **sections)
    out = tmp_path / "run" / "out"
    proc = subprocess.Popen(_cmd(rec), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists():
            done = _losses(out)
            if done and done[-1][0] >= 25:  # past the checkpoints at 10 and 20, before the end
                proc.send_signal(signal.SIGKILL)
                killed_at = done[-1][0]
                break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert killed_at < steps
    assert ST.find_latest(out / "checkpoints") is not None

    res = subprocess.run(_cmd(rec, "--resume"), env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "resumed from" in res.stderr
    got = _losses(out)
    assert [s for s, _ in got] == list(range(1, steps + 1))
    assert got == ref_losses  # bit-identical loss sequence
    assert _val(out) == _val(tmp_path / "ref" / "out")


def _tiny_payload(step: int) -> dict:
    import torch

    return {"model": {"w": torch.full((4,), float(step))}, "optimizer": {}, "step": step, "data": {},
            "rng": ST.rng_state()}


def test_corrupt_or_partial_checkpoint_is_refused_and_previous_stays_usable(tmp_path):
    root = tmp_path / "checkpoints"
    ST.save_checkpoint(root, 10, _tiny_payload(10), keep=3)
    good = ST.save_checkpoint(root, 20, _tiny_payload(20), keep=3)
    bad = ST.save_checkpoint(root, 30, _tiny_payload(30), keep=3)
    assert ST.load_checkpoint(bad)["step"] == 30

    # Corrupt one byte of the newest: refused by its hash, and resume falls back to step 20.
    data = bytearray((bad / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "state.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"step_000030 is corrupt: the SHA-256 of state.pt"):
        ST.load_checkpoint(bad)
    warnings = []
    assert ST.find_latest(root, warn=warnings.append) == good
    assert "corrupt" in warnings[0]
    assert float(ST.load_checkpoint(good)["model"]["w"][0]) == 20.0

    # Truncated (a partial copy): refused by its size.
    (bad / "state.pt").write_bytes(bytes(data[:100]))
    with pytest.raises(CheckpointError, match="truncated or partial: state.pt has 100 bytes"):
        ST.load_checkpoint(bad)

    # A save that died before its manifest was written: no manifest -> partial.
    (bad / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="partial .*no manifest.json"):
        ST.load_checkpoint(bad)
    assert ST.find_latest(root, warn=lambda m: None) == good

    # A crash mid-write leaves only a .tmp directory, which is never listed and is cleaned up.
    (root / "step_000040.tmp-999").mkdir()
    assert ST.find_latest(root, warn=lambda m: None) == good
    ST.save_checkpoint(root, 50, _tiny_payload(50), keep=3)
    assert not (root / "step_000040.tmp-999").exists()
    assert ST.find_latest(root) == root / "step_000050"


def test_resume_skips_a_corrupt_newest_checkpoint(tmp_path, tiny_shards, capsys):
    """End to end through the loop: the newest checkpoint is corrupted on disk; resuming warns, uses the
    previous one, and the finished run matches an uninterrupted one."""
    import torch

    from puyu.train.pretrain import train
    from puyu.train.recipe import load_recipe

    torch.set_num_threads(1)
    sections = dict(train={"steps": 24, "save_every": 8, "eval_every": 8, "keep_checkpoints": 3})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    train(load_recipe(write_recipe(tmp_path / "a" / "r.yaml", tiny_shards, **sections)))
    rec = load_recipe(write_recipe(tmp_path / "b" / "r.yaml", tiny_shards, **sections))
    train(rec)
    out = tmp_path / "b" / "out"
    newest = out / "checkpoints" / "step_000024"
    blob = bytearray((newest / "state.pt").read_bytes())
    blob[-10] ^= 0x55
    (newest / "state.pt").write_bytes(bytes(blob))
    capsys.readouterr()
    summary = train(rec, resume=True)
    err = capsys.readouterr().err
    assert "step_000024 is corrupt" in err and "resumed from" in err and "step_000016" in err
    assert summary["start_step"] == 16
    assert _losses(out) == _losses(tmp_path / "a" / "out")
