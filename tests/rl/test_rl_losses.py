"""RL maths against plain loops and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from puyu.rl import losses as L


def _gae_loop(rewards, values, mask, gamma, lam):
    """Reference: per row, keep only the policy positions, run the textbook backward recursion."""
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        pos = [t for t in range(T) if mask[b][t]]
        nxt_v, last = 0.0, 0.0
        for t in reversed(pos):
            delta = rewards[b][t] + gamma * nxt_v - values[b][t]
            last = delta + gamma * lam * last
            adv[b][t] = last
            nxt_v = values[b][t]
    ret = [[(adv[b][t] + values[b][t]) * mask[b][t] for t in range(T)] for b in range(B)]
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.99), (0.9, 0.95), (1.0, 1.0), (0.5, 0.0)])
def test_gae_matches_plain_loop_with_environment_gaps(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 4, 9
    r, v = torch.randn(B, T, generator=g, dtype=torch.float64), torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.ones(B, T)
    mask[0, 6:] = 0          # right padding
    mask[1, 2:5] = 0         # an environment turn in the middle
    mask[2, :] = 0           # empty row
    mask[3, 1] = mask[3, 8] = 0
    adv, ret = L.gae(r, v, mask, gamma, lam)
    ref_adv, ref_ret = _gae_loop(r.tolist(), v.tolist(), mask.tolist(), gamma, lam)
    assert torch.allclose(adv, torch.tensor(ref_adv, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(ret, torch.tensor(ref_ret, dtype=torch.float64), atol=1e-12)
    assert float(adv[mask == 0].abs().sum()) == 0.0


def test_gae_hand_values():
    # two steps, gamma 1, lambda 1: A_t = sum of future rewards - V_t
    adv, ret = L.gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.25]]), torch.ones(1, 2), 1.0, 1.0)
    assert adv.tolist() == [[0.5, 0.75]]
    assert ret.tolist() == [[1.0, 1.0]]


def test_ppo_policy_loss_hand_values():
    logp = torch.tensor([[math.log(1.5), math.log(0.5), 0.0]])
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, frac = L.ppo_policy_loss(logp, old, adv, mask, clip=0.2)
    # token 0: ratio 1.5, A=1: max(-1.5, -1.2) = -1.2 (clipped); token 1: ratio 0.5, A=-1: max(0.5, 0.8) = 0.8
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert frac.item() == pytest.approx(1.0)
    loss2, frac2 = L.ppo_policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([[1.0, -3.0]]), torch.ones(1, 2))
    assert loss2.item() == pytest.approx(1.0) and frac2.item() == 0.0


def test_ppo_gradient_zero_when_clipped():
    logp = torch.tensor([[math.log(1.5)]], requires_grad=True)
    loss, _ = L.ppo_policy_loss(logp, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1))
    loss.backward()
    assert logp.grad.item() == 0.0


def test_value_loss_hand_values():
    v, old, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[2.0, 1.0]])
    # token 0: (1-2)^2 = 1, clipped V = 0.7 -> 1.69; max 1.69. token 1: 1 and 1 -> 1. mean 1.345, x0.5
    assert L.value_loss(v, old, ret, torch.ones(1, 2), clip=0.2).item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)
    assert L.value_loss(v, old, ret, torch.ones(1, 2), clip=None).item() == pytest.approx(0.5)


def test_kl_estimators_hand_values():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    d = math.log(2)
    assert L.kl_estimate(logp, ref, "k1").item() == pytest.approx(d)
    assert L.kl_estimate(logp, ref, "k2").item() == pytest.approx(d * d / 2)
    assert L.kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + d)
    # k1 and k3 are unbiased for KL(p||q): check on a small categorical by exact expectation
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    kl = float((p * (p / q).log()).sum())
    for kind in ("k1", "k3"):
        est = float((p * L.kl_estimate(p.log(), q.log(), kind)).sum())
        assert est == pytest.approx(kl, rel=1e-6)
    with pytest.raises(ValueError):
        L.kl_estimate(logp, ref, "k9")


def test_reward_on_last_real_token_not_padding():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0, 0.0]])
    kl = torch.full((2, 5), 0.5)
    r = L.token_rewards(torch.tensor([2.0, -1.0]), kl, mask, kl_coef=0.1)
    assert r[0].tolist() == pytest.approx([-0.05, -0.05, 1.95, 0.0, 0.0])
    assert r[1].tolist() == pytest.approx([-0.05, 0.0, 0.0, -1.05, 0.0])


def test_bradley_terry_focal_and_barrier():
    c, r = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    plain = L.bradley_terry_loss(c, r)
    ref = (-math.log(1 / (1 + math.exp(-1))) - math.log(1 / (1 + math.exp(1)))) / 2
    assert plain.item() == pytest.approx(ref)
    s = 1 / (1 + math.exp(-1))
    p0 = 2 * (s - 0.5)
    focal_ref = (-math.log(s) * (1 - p0) ** 2 - math.log(1 - s) * 1.0) / 2  # second pair: p = 0, weight 1
    assert L.bradley_terry_loss(c, r, focal=True).item() == pytest.approx(focal_ref)
    # scores 1, 0, 0, 1: barrier terms -(log 4 + log 6) for the 1s and -(2 log 5) for the 0s, mean of four
    want = ref + 0.02 * (2 * -(math.log(4) + math.log(6)) + 2 * -(2 * math.log(5))) / 4
    assert L.bradley_terry_loss(c, r, barrier_weight=0.02).item() == pytest.approx(want)
    big = L.bradley_terry_loss(torch.tensor([7.0]), torch.tensor([-7.0]), barrier_weight=0.02)
    assert math.isfinite(big.item())


def test_dpo_loss_hand_value():
    loss, margin = L.dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    assert margin.item() == pytest.approx(1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)))


def test_group_advantages():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    g = L.group_advantages(r, "grpo")
    std = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    assert g[0].tolist() == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std], rel=1e-5)
    assert g[1].abs().max().item() == 0.0
    loo = L.group_advantages(r, "rloo")
    assert loo[0].tolist() == pytest.approx([1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3])


def test_running_moments_match_batch_statistics():
    m = L.RunningMoments()
    xs = [torch.randn(5, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    for x in xs:
        m.update(x)
    allx = torch.cat(xs).double()
    assert m.mean == pytest.approx(float(allx.mean()))
    assert m.var == pytest.approx(float(allx.var(unbiased=False)))


def test_explained_variance_and_whiten():
    ret = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert L.explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert L.explained_variance(torch.zeros_like(ret) + 2.0, ret, mask) == pytest.approx(0.0)
    w = L.masked_whiten(ret, mask)
    assert w[0, 3].item() == 0.0 and float(w[0, :3].mean()) == pytest.approx(0.0, abs=1e-6)
