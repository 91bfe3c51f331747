"""The alignment stages end to end on a tiny random model: RM (judge pairs + a pair file), PPO rounds with
exact resume, DPO, GRPO with a local arithmetic scorer, and the CLI."""

from __future__ import annotations

import json
import shutil

import pytest

from puyu.rl.recipe import AlignRecipe
from puyu.train.metrics import read_metrics
from puyu.train.recipe import from_dict


def _recipe(policy, out, **over) -> AlignRecipe:
    base = {"out_dir": str(out), "threads": 1, "progress": False, "policy": {"init": str(policy)},
            "prompts": {"eval_n": 6, "weights": {"arithmetic": 0.6, "tool": 0.2, "chat": 0.2}},
            "rm": {"judge_prompts": 16, "samples": 2, "max_new_tokens": 6, "batch_size": 8, "lr": 1e-4},
            "ppo": {"rounds": 2, "iterations": 3, "prompts_per_iter": 6, "minibatch": 3, "critic_warmup": 1,
                    "max_new_tokens": 6, "eval_every": 2, "save_every": 2, "fast_pairs": 6, "fast_steps": 2,
                    "slow_prompts": 4, "slow_steps": 2, "max_turns": 2, "actor_lr": 1e-3, "critic_lr": 1e-3},
            "dpo": {"batch_size": 4, "lr": 1e-4},
            "grpo": {"group_size": 3, "prompts_per_iter": 3, "iterations": 4, "max_new_tokens": 6, "save_every": 2,
                     "eval_every": 2, "lr": 1e-3}}
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return from_dict(AlignRecipe, base)


@pytest.mark.slow
def test_rm_then_ppo_resume_is_exact(tiny_checkpoint, tmp_path, one_thread):
    from puyu.rl.ppo import run_ppo
    from puyu.rl.reward_model import load_reward_model
    from puyu.rl.rm_train import run_rm

    pair_file = tmp_path / "pairs.jsonl"
    pair_file.write_text(json.dumps({"system": "arithmetic", "messages": [{"role": "user", "content": "1+1"}],
                                     "chosen": "1+1=2", "rejected": "1+1=3"}) + "\n")
    r = _recipe(tiny_checkpoint, tmp_path / "a", rm={"pairs": [str(pair_file)]})
    rep = run_rm(r)
    assert rep["pairs"] >= 10 and (tmp_path / "a" / "rm" / "scores.png").exists()
    rm = load_reward_model(tmp_path / "a" / "rm" / "hf")
    # the reported held-out accuracy, recomputed from the written pairs and the saved model
    from puyu.rl.judge import pair_domain, pair_ids, read_pairs
    from puyu.rl.reward_model import score_ids

    held = [p for p in read_pairs(tmp_path / "a" / "rm" / "pairs.jsonl") if p["split"] == "held_out"]
    assert len(held) == rep["held_out"] == rep["accuracy"]["n"] > 0
    enc = [pair_ids(rm.tokenizer, p, rm.reward_token_id)[:2] for p in held]
    wins = [c > r for c, r in zip(score_ids(rm, [c for c, _ in enc]), score_ids(rm, [r for _, r in enc]))]
    assert rep["accuracy"]["overall"] == pytest.approx(sum(wins) / len(wins))
    for d, v in rep["accuracy"]["domains"].items():
        mine = [w for w, p in zip(wins, held) if pair_domain(p) == d]
        assert v["n"] == len(mine) and v["accuracy"] == pytest.approx(sum(mine) / len(mine))
    assert rm.tokenizer is not None and isinstance(rm.score([{"role": "user", "content": "hi"},
                                                             {"role": "assistant", "content": "yo"}]), float)
    full = run_ppo(r)
    assert full["iterations"] == 6 and len(full["rounds"]) == 2
    assert full["rounds"][1]["rm_update"]["path"] in ("fast", "slow")
    ref = [m for m in read_metrics(tmp_path / "a" / "ppo" / "metrics.jsonl")]
    # the same run again, "killed" after iteration 3 (its last checkpoint is at 2), then resumed
    shutil.copytree(tmp_path / "a" / "rm", tmp_path / "b" / "rm")
    r2 = _recipe(tiny_checkpoint, tmp_path / "b", rm={"pairs": [str(pair_file)]})
    assert run_ppo(r2, stop_after=3) == {"stopped_at": 3}
    run_ppo(r2, resume=True)
    got = read_metrics(tmp_path / "b" / "ppo" / "metrics.jsonl")
    strip = lambda ms: [{k: v for k, v in m.items() if k != "elapsed_s"} for m in ms]  # noqa: E731
    assert strip(got) == strip(ref)
    assert (tmp_path / "b" / "ppo" / "ppo.png").exists() and (tmp_path / "b" / "ppo" / "hf" / "config.json").exists()


@pytest.mark.slow
def test_dpo_and_grpo_with_local_scorer(tiny_checkpoint, tmp_path, one_thread):
    from puyu.rl.dpo import run_dpo
    from puyu.rl.grpo import resolve_scorer, run_grpo
    from puyu.tasks.verifiable import arithmetic_score

    pairs = tmp_path / "pairs.jsonl"
    with open(pairs, "w") as f:
        for a in range(12):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"{a}+1"}], "chosen": f"{a}+1={a + 1}",
                                "rejected": f"{a}+1={a + 2}"}) + "\n")
    r = _recipe(tiny_checkpoint, tmp_path / "d", dpo={"pairs": [str(pairs)], "epochs": 3.0, "held_out": 0.25})
    rep = run_dpo(r)
    assert rep["train"] == 9 and rep["held_out"] == 3
    assert rep["preference_accuracy_after"]["overall"] >= rep["preference_accuracy_before"]["overall"]
    calls = []

    def scorer(pred, sample):
        calls.append(sample["kind"])
        return arithmetic_score(pred, sample) if sample["kind"] == "arithmetic" else 0.0

    g = _recipe(tiny_checkpoint, tmp_path / "g", prompts={"weights": {"arithmetic": 1.0}, "eval_n": 4})
    out = run_grpo(g, score_fn=scorer)
    assert out["iterations"] == 4 and len(calls) == 4 * 3 * 3 and set(calls) == {"arithmetic"}
    full = read_metrics(tmp_path / "g" / "grpo" / "metrics.jsonl")
    g2 = _recipe(tiny_checkpoint, tmp_path / "g2", prompts={"weights": {"arithmetic": 1.0}, "eval_n": 4})
    run_grpo(g2, score_fn=scorer, stop_after=3)
    run_grpo(g2, score_fn=scorer, resume=True)
    strip = lambda ms: [{k: v for k, v in m.items() if k != "elapsed_s"} for m in ms]  # noqa: E731
    assert strip(read_metrics(tmp_path / "g2" / "grpo" / "metrics.jsonl")) == strip(full)
    assert resolve_scorer("verifiable")("12+34=46", {"kind": "arithmetic", "answer": "46"}) == 1.0


def test_cli_errors_are_one_line(tmp_path, capsys):
    from puyu.cli import main

    rec = tmp_path / "r.yaml"
    rec.write_text("policy: {init: /nonexistent}\nppo: {rounds: 0}\n")
    assert main(["train", "ppo", str(rec)]) == 1
    assert "ppo.rounds must be positive" in capsys.readouterr().err
    rec.write_text("policy: {init: /nonexistent}\n")
    assert main(["train", "rm", str(rec)]) == 1
    assert "not a model directory" in capsys.readouterr().err
    rec.write_text("policy: {init: x}\nrm: {focal: maybe}\n")
    assert main(["train", "dpo", str(rec)]) == 1
    assert "rm.focal" in capsys.readouterr().err


def test_grpo_dynamic_sampling_keeps_only_groups_whose_scores_differ(tiny_checkpoint, tmp_path, one_thread):
    """DAPO's dynamic sampling: groups whose replies all scored alike are dropped and more prompts drawn; the
    first draw is the iteration's plain sample (the same prompts and replies as without it)."""
    import dataclasses

    import torch

    from puyu.engine.sampling import SamplingParams
    from puyu.rl import common as C
    from puyu.rl.grpo import sample_groups
    from puyu.rl.rollout import make_engine

    r = _recipe(tiny_checkpoint, tmp_path / "ds", prompts={"weights": {"arithmetic": 1.0}},
                grpo={"dynamic_sampling": True, "max_draws": 4})
    off = dataclasses.replace(r, grpo=dataclasses.replace(r.grpo, dynamic_sampling=False))

    def reward(ro):  # constant for even first operands (no signal), the reply's length parity otherwise
        return 1.0 if ro.sample["problem"][0] % 2 == 0 else float(len(ro.replies[0]) % 2)

    tok, actor = C.load_policy(r)
    engine = make_engine(actor, tok)
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    try:
        ros, rw, drawn, sampled = sample_groups(r, 0, engine, tok, params, reward)
        ros0, rw0, drawn0, sampled0 = sample_groups(off, 0, engine, tok, params, reward)
    finally:
        engine.close()
    g = r.grpo.group_size
    assert 0 < len(ros) <= r.grpo.prompts_per_iter * g and len(rw) == len(ros)
    assert all(bool(grp.max() > grp.min()) for grp in rw.view(-1, g))
    assert all(ro.sample["problem"][0] % 2 == 1 for ro in ros)
    assert drawn % r.grpo.prompts_per_iter == 0 and r.grpo.prompts_per_iter <= drawn <= 4 * r.grpo.prompts_per_iter
    assert len(sampled) == drawn * g
    assert drawn0 == r.grpo.prompts_per_iter and len(ros0) == drawn0 * g and torch.equal(rw0, sampled0)
    assert torch.equal(sampled[:len(sampled0)], sampled0)
    from puyu.errors import ConfigError

    with pytest.raises(ConfigError, match="max_draws must be at least 1"):
        dataclasses.replace(r, grpo=dataclasses.replace(r.grpo, max_draws=0)).validate()
