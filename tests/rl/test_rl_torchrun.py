"""PPO and GRPO under real `torchrun --nproc_per_node=2` (gloo) match one process: the same logged
figures at every iteration, and the same final weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
KEYS = ("reward_mean", "kl", "policy_loss", "value_loss", "entropy", "clip_frac", "response_length", "task_score")


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    if exe.exists():
        return [str(exe)]
    return ["torchrun"] if shutil.which("torchrun") else [sys.executable, "-m", "torch.distributed.run"]


def _write(path, policy, out, rm_init=None):
    rec = {"out_dir": str(out), "device": "cpu", "threads": 1, "progress": False, "policy": {"init": str(policy)},
           "prompts": {"eval_n": 4, "weights": {"arithmetic": 0.7, "chat": 0.3}},
           "rm": {"init": rm_init, "judge_prompts": 12, "samples": 2, "max_new_tokens": 6, "batch_size": 8, "lr": 1e-4},
           "ppo": {"rounds": 2, "iterations": 2, "prompts_per_iter": 6, "minibatch": 3, "critic_warmup": 1,
                   "max_new_tokens": 6, "eval_every": 2, "save_every": 2, "fast_pairs": 4, "fast_steps": 2,
                   "slow_prompts": 4, "slow_steps": 2, "actor_lr": 1e-3, "critic_lr": 1e-3},
           "grpo": {"group_size": 3, "prompts_per_iter": 3, "iterations": 3, "max_new_tokens": 6, "lr": 1e-3,
                    "save_every": 3, "eval_every": 3}}
    path.write_text(yaml.safe_dump(rec))
    return path


def _train(out, stage):
    recs = [json.loads(x) for x in (out / stage / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [m for m in recs if m["kind"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_two_processes_match_one(tiny_checkpoint, tmp_path, stage):
    cli = [sys.executable, "-m", "puyu.cli", "train"]
    rm_init = None
    if stage == "ppo":  # one reward model for both runs
        rm_rec = _write(tmp_path / "rm.yaml", tiny_checkpoint, tmp_path / "rm")
        res = subprocess.run(cli + ["rm", str(rm_rec)], env=ENV, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        rm_init = str(tmp_path / "rm" / "rm" / "hf")
    one = _write(tmp_path / "one.yaml", tiny_checkpoint, tmp_path / "one", rm_init)
    two = _write(tmp_path / "two.yaml", tiny_checkpoint, tmp_path / "two", rm_init)
    res = subprocess.run(cli + [stage, str(one)], env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run(_torchrun() + ["--standalone", "--nproc_per_node=2", "-m", "puyu.cli", "train", stage,
                                        str(two)], env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"world_size": 2' in res.stdout
    a, b = _train(tmp_path / "one", stage), _train(tmp_path / "two", stage)
    assert [m["step"] for m in a] == [m["step"] for m in b] and len(a) >= 3
    for ma, mb in zip(a, b):
        for k in KEYS:
            if ma.get(k) is not None:
                assert mb[k] == pytest.approx(ma[k], rel=1e-4, abs=1e-5), (ma["step"], k, ma[k], mb[k])
    from puyu.model.checkpoint import load_model

    m1, m2 = load_model(tmp_path / "one" / stage / "hf"), load_model(tmp_path / "two" / stage / "hf")
    for (n, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert (p1 - p2).abs().max() < 1e-4, n
