"""The reward model's auxiliary losses (`rm.dense_weight`, `rm.lm_weight`, `rm.distill_weight`): each
checked against a plain per-example loop over unpadded sequences run through the causal LM alone (so
padding invariance is checked too), and an RM trained with them still saves and loads in the released
layout."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import make_model

from puyu.errors import ConfigError
from puyu.rl.losses import dense_pair_loss
from puyu.rl.recipe import AlignRecipe, PolicySection, RMSection
from puyu.rl.reward_model import (
    RewardModel,
    RewardModelError,
    load_reward_model,
    save_reward_model,
    score_ids,
)
from puyu.rl.rm_train import EncodedPair, divergence, frozen_teacher, rm_step, train_rm_steps

RT = 100  # reward token of the tiny model


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_dense_pair_loss_equals_a_loop():
    g = torch.Generator().manual_seed(0)
    vc, vr = torch.randn(4, 9, generator=g), torch.randn(4, 9, generator=g)
    start, stop = torch.tensor([2, 0, 5, 7]), torch.tensor([6, 9, 5, 8])  # third pair: no position
    per_pair = []
    for i in range(4):
        terms = [-_logsig(float(vc[i, k] - vr[i, k])) for k in range(int(start[i]), int(stop[i]))]
        if terms:
            per_pair.append(sum(terms) / len(terms))
    want = sum(per_pair) / len(per_pair)
    assert dense_pair_loss(vc, vr, start, stop).item() == pytest.approx(want, rel=1e-6)
    # no position at all: a zero that still carries a graph
    vc.requires_grad_(True)
    z = dense_pair_loss(vc, vr, torch.tensor([3] * 4), torch.tensor([3] * 4))
    assert z.item() == 0.0 and z.requires_grad


def test_divergence():
    assert divergence([1, 2, 3, 9], [1, 2, 4, 9]) == 2
    assert divergence([1, 2], [1, 2, 3]) == 2
    assert divergence([5], [6]) == 0


def _rm_and_pairs():
    lm = make_model(max_position_embeddings=64)
    rm = RewardModel.from_causal_lm(lm, RT, pad_id=2)
    torch.nn.init.normal_(rm.v_head.weight, std=0.5, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(4)
    pairs = []
    for n_prompt, tail_c, tail_r in ((5, 3, 3), (9, 2, 5), (3, 6, 1)):
        head = torch.randint(5, 99, (n_prompt,), generator=g).tolist()
        shared = torch.randint(5, 99, (2,), generator=g).tolist()  # the reply's first tokens agree
        c = head + shared + torch.randint(5, 50, (tail_c,), generator=g).tolist() + [RT]
        r = head + shared + torch.randint(50, 99, (tail_r,), generator=g).tolist() + [RT]
        pairs.append(EncodedPair(c, r, "arithmetic", n_prompt))
    return lm, rm, pairs


def _reference_loss(lm, rm, pairs, dense_w, lm_w, distill_w=0.0, bound=5.0, barrier=0.02):
    """Each sequence alone through the causal LM (no padding): v_head on its hidden states, the LM's own
    logits for the reply tokens; focal Bradley-Terry with the barrier written out by hand."""
    w = rm.v_head.weight[0].detach()
    bt, dense, barrier_terms, nll, n_tok, sq = [], [], [], 0.0, 0, []
    for p in pairs:
        with torch.no_grad():
            hc = lm(torch.tensor([p.chosen]), return_hidden=True)[0]
            hr = lm(torch.tensor([p.rejected]), return_hidden=True)[0]
            logits = lm(torch.tensor([p.chosen]))[0]
            logits_r = lm(torch.tensor([p.rejected]))[0]
        vc, vr = (hc @ w).tolist(), (hr @ w).tolist()
        for seq, vals, lg in ((p.chosen, vc, logits), (p.rejected, vr, logits_r)):
            lp = torch.log_softmax(lg, -1)
            for t in range(p.prompt_len, len(seq) - 1):
                sq.append((vals[t] - max(float(lp[t - 1, seq[t]]), -bound)) ** 2)
        d = vc[-1] - vr[-1]
        pr = 2 * max(1 / (1 + math.exp(-d)) - 0.5, 0.0)
        bt.append(-_logsig(d) * (1 - pr) ** 2)
        barrier_terms += [-(math.log(bound - x) + math.log(bound + x)) for x in (vc[-1], vr[-1])]
        k0 = divergence(p.chosen, p.rejected)
        ks = range(k0, min(len(p.chosen), len(p.rejected)))
        dense.append(sum(-_logsig(vc[k] - vr[k]) for k in ks) / len(ks))
        logp = torch.log_softmax(logits, -1)
        for t in range(p.prompt_len, len(p.chosen) - 1):  # reply tokens, reward token excluded
            nll -= float(logp[t - 1, p.chosen[t]])
            n_tok += 1
    # bradley_terry_loss averages the barrier over chosen and rejected scores together
    total = sum(bt) / len(bt) + barrier * sum(barrier_terms) / len(barrier_terms)
    return total + dense_w * sum(dense) / len(dense) + lm_w * nll / n_tok + distill_w * sum(sq) / len(sq)


@pytest.mark.parametrize("dense_w,lm_w,distill_w", [(0.0, 0.0, 0.0), (0.7, 0.0, 0.0), (0.0, 0.3, 0.0),
                                                    (0.0, 0.0, 0.4), (1.0, 0.5, 2.0)])
def test_rm_step_loss_equals_unpadded_reference(dense_w, lm_w, distill_w):
    lm, rm, pairs = _rm_and_pairs()
    want = _reference_loss(lm, rm, pairs, dense_w, lm_w, distill_w)
    opt = torch.optim.SGD(rm.parameters(), lr=0.0)
    rec = rm_step(rm, opt, pairs, focal=True, barrier=0.02, bound=5.0, dense_weight=dense_w, lm_weight=lm_w,
                  distill_weight=distill_w, teacher=frozen_teacher(lm))
    assert rec["loss"] == pytest.approx(want, rel=1e-5)
    assert ("dense_loss" in rec) == (dense_w > 0) and ("lm_loss" in rec) == (lm_w > 0)
    assert ("distill_loss" in rec) == (distill_w > 0)


def test_lm_weight_needs_a_head_and_recipe_refuses_negative_weights():
    _, rm, pairs = _rm_and_pairs()
    for kw in ({"lm_weight": 0.1}, {"distill_weight": 0.1}):
        with pytest.raises(RewardModelError, match="teacher"):
            rm_step(rm, torch.optim.SGD(rm.parameters(), lr=0.0), pairs, True, 0.02, 5.0, **kw)
    for kw in ({"dense_weight": -1.0}, {"lm_weight": -0.1}, {"distill_weight": -2.0}):
        with pytest.raises(ConfigError, match="dense_weight"):
            AlignRecipe(policy=PolicySection(init="x"), rm=RMSection(**kw)).validate()


def test_trained_with_aux_losses_still_the_released_layout(tmp_path):
    lm, rm, pairs = _rm_and_pairs()
    teacher = frozen_teacher(lm)
    w_head = teacher.output.weight.detach().clone()
    opt = torch.optim.AdamW(rm.parameters(), lr=1e-2)
    logs = train_rm_steps(rm, opt, pairs, 3, 2, seed=0, dense_weight=1.0, lm_weight=0.5, distill_weight=1.0,
                          teacher=teacher)
    assert len(logs) == 3 and all(math.isfinite(r["loss"]) for r in logs)
    assert torch.equal(teacher.output.weight, w_head)  # the teacher is frozen and not part of the RM
    sd = rm.state_dict()
    assert set(sd) == {k for k in sd if k.startswith("model.")} | {"v_head.weight"}
    save_reward_model(rm, tmp_path / "rm")
    again = load_reward_model(tmp_path / "rm")
    seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    assert score_ids(again, seqs) == pytest.approx(score_ids(rm.eval(), seqs), abs=1e-6)
    assert score_ids(again, seqs, side="left") == pytest.approx(score_ids(again, seqs), abs=1e-5)


def test_run_rm_with_the_recipe_options(tiny_checkpoint, tmp_path, one_thread):
    """`puyu train rm` wiring: the rm.* weights reach every step (logged), the policy is the teacher, and
    the saved directory is the released layout (no output head)."""
    import json

    from puyu.model.checkpoint import read_state_dict
    from puyu.rl.judge import arithmetic_pairs, write_pairs
    from puyu.rl.rm_train import run_rm
    from puyu.train.metrics import read_metrics
    from puyu.train.recipe import from_dict

    write_pairs(tmp_path / "pairs.jsonl", arithmetic_pairs(12, seed=0))
    r = from_dict(AlignRecipe, {
        "out_dir": str(tmp_path / "out"), "threads": 1, "progress": False, "policy": {"init": str(tiny_checkpoint)},
        "rm": {"pairs": [str(tmp_path / "pairs.jsonl")], "held_out": 0.25, "batch_size": 4, "epochs": 1.0,
               "dense_weight": 1.0, "lm_weight": 0.5, "distill_weight": 1.0}})
    rep = run_rm(r)
    logs = [m for m in read_metrics(tmp_path / "out" / "rm" / "metrics.jsonl")]
    assert len(logs) == rep["steps"] > 0
    assert all({"dense_loss", "lm_loss", "distill_loss"} <= set(m) for m in logs)
    hf = tmp_path / "out" / "rm" / "hf"
    assert "output.weight" not in read_state_dict(hf)
    assert json.loads((hf / "config.json").read_text())["architectures"] == ["InternLM2ForRewardModel"]
    assert math.isfinite(load_reward_model(hf).score([{"role": "user", "content": "1+1"},
                                                      {"role": "assistant", "content": "2"}], domain="arithmetic"))
