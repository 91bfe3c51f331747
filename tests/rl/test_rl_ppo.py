"""PPO end to end on tiny models: a toy reward is learned with bounded KL; environment turns carry no
gradient; rollouts see the live actor weights."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import make_model

from puyu.engine.sampling import SamplingParams
from puyu.engine.scheduler import Engine
from puyu.rl.losses import ppo_policy_loss
from puyu.rl.ppo import detect_hacking, ppo_update
from puyu.rl.recipe import PPOSection
from puyu.rl.reward_model import RewardModel
from puyu.rl.rollout import seq_batch, token_logprobs

X = 7  # the toy reward: 1 when the reply's first token is X


@pytest.mark.slow
def test_toy_reward_is_learned_with_bounded_kl(one_thread):
    torch.manual_seed(0)
    actor = make_model(max_position_embeddings=64, vocab_size=32).train()  # X starts near 1/32
    ref = copy.deepcopy(actor).eval()
    critic = RewardModel.from_causal_lm(actor, 31, pad_id=0).train()
    cfg = PPOSection(actor_lr=3e-3, critic_lr=3e-3, kl_coef=0.05, minibatch=8, ppo_epochs=2, critic_warmup=2,
                     ptx_coef=0.0)
    opt_a = torch.optim.AdamW(actor.parameters(), lr=cfg.actor_lr, betas=(0.9, 0.95))
    opt_c = torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, betas=(0.9, 0.95))
    engine = Engine(actor, None, max_batch_size=16, prefix_cache=False)
    prompts = [[1, 10 + i % 5, 20 + i % 3] for i in range(16)]
    rewards, kls = [], []
    try:
        for it in range(40):
            params = [SamplingParams(max_new_tokens=3, temperature=1.0, seed=it * 100 + i) for i in range(16)]
            res = engine.generate(prompts, params)
            resp = [r.token_ids for r in res]
            batch = seq_batch(prompts, resp, [[1] * len(t) for t in resp], pad_id=0)
            scores = torch.tensor([float(t[:1] == [X]) for t in resp])
            fig = ppo_update(actor, critic, ref, opt_a, opt_c, batch, scores, cfg, train_actor=it >= cfg.critic_warmup,
                             seed=it)
            rewards.append(fig["reward_mean"])
            kls.append(fig["kl"])
    finally:
        engine.close()
    early, late = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert early < 0.2 and late > early + 0.5, rewards
    assert max(kls) < 10.0, kls  # nats per sequence of <= 3 tokens


def test_masked_environment_tokens_get_no_gradient():
    actor = make_model(max_position_embeddings=64)
    prompts = [[1, 5, 6]]
    resp = [[30, 31, 40, 41, 42, 32]]
    mask = [[1, 1, 0, 0, 0, 1]]  # 40-42: an environment turn
    b = seq_batch(prompts, resp, mask, pad_id=0)
    logp = token_logprobs(actor, b)
    adv = torch.randn_like(logp)
    logp_leaf = logp.detach().requires_grad_(True)
    loss, _ = ppo_policy_loss(logp_leaf, logp.detach(), adv, b.mask)
    loss.backward()
    assert logp_leaf.grad[0, 2:5].abs().sum().item() == 0.0
    assert (logp_leaf.grad[0, [0, 1, 5]] != 0).all()
    # and through the model: changing the environment turn's targets changes nothing in the loss gradient
    # w.r.t. the policy tokens' own log-probs (the environment tokens are inputs, not targets)
    actor.zero_grad()
    l1, _ = ppo_policy_loss(token_logprobs(actor, b), logp.detach(), adv, b.mask)
    l1.backward()
    g1 = [p.grad.clone() for p in actor.parameters()]
    b2 = seq_batch(prompts, resp, mask, pad_id=0)
    b2.resp_ids[0, 2:5] = torch.tensor([50, 51, 52])  # the targets at masked positions
    actor.zero_grad()
    l2, _ = ppo_policy_loss(token_logprobs(actor, b2), logp.detach(), adv, b2.mask)
    l2.backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(g1, actor.parameters()))


def test_rollouts_use_live_weights_after_in_place_update(one_thread):
    """After an in-place optimizer-style update, the engine's greedy output equals naive greedy decoding
    with the new weights (no stale cache, no copy of the weights)."""
    actor = make_model(max_position_embeddings=64).eval()
    prompt = [1, 5, 6, 7]

    def naive(n=6):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(n):
                ids.append(int(actor(torch.tensor([ids]))[0, -1].argmax()))
        return ids[len(prompt):]

    engine = Engine(actor, None, max_batch_size=4, prefix_cache=False)
    try:
        p = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
        first = engine.generate([prompt], p)[0].token_ids
        assert first == naive()
        with torch.no_grad():
            for prm in actor.parameters():
                prm.add_(torch.randn_like(prm) * 0.3)
        second = engine.generate([prompt], p)[0].token_ids
        assert second == naive()
        assert second != first
    finally:
        engine.close()


def test_hacking_detection_rules():
    flat = [{"reward_mean": 0.0, "task_score": 0.5, "response_length": 10}] * 8
    assert not detect_hacking(flat)["detected"]
    rising = [{"reward_mean": i / 8, "task_score": 0.5, "response_length": 10} for i in range(8)]
    assert detect_hacking(rising)["reasons"] == ["reward rose, task score did not"]
    honest = [{"reward_mean": i / 8, "task_score": 0.5 + i / 20, "response_length": 10} for i in range(8)]
    assert not detect_hacking(honest)["detected"]
    longer = [{"reward_mean": 0.0, "task_score": 0.5, "response_length": 10 + 2 * i} for i in range(8)]
    out = detect_hacking(longer)
    assert out["detected"] and "length" in out["reasons"][0]
    slightly = [{"reward_mean": 0.0, "task_score": 0.5, "response_length": 10 + 0.2 * i} for i in range(8)]
    assert not detect_hacking(slightly)["detected"]


@pytest.mark.parametrize("side", ["right"])
def test_reward_lands_on_last_real_token_of_rollout_batch(side):
    from puyu.rl.losses import gae, token_rewards

    b = seq_batch([[1, 2], [1, 2, 3, 4]], [[5, 6, 7], [8]], [[1, 1, 1], [1]], pad_id=0)
    r = token_rewards(torch.tensor([1.0, 2.0]), torch.zeros(2, 3), b.mask, 0.1)
    assert r.tolist() == [[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]]
    adv, _ = gae(r, torch.zeros(2, 3), b.mask)
    assert adv[1, 1:].abs().sum() == 0
