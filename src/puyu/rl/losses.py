"""The RL mathematics as small pure functions: advantages, PPO, value, KL, Bradley-Terry, DPO, group
baselines. No model runs here; every function takes tensors and returns tensors (tests check each
against a plain loop or hand-computed values).

Shapes: B sequences, T response positions, G groups of K samples. `mask` [B, T] is 1 on the tokens the
policy wrote (its actions) and 0 on padding and on environment turns (tool and interpreter results),
which therefore carry no reward, no advantage and no gradient.

Sources of the settings quoted in docstrings: the InternLM2 technical report (arXiv 2403.17297, 4.3),
InternLM's xtuner RLHF code, Schulman et al. 2017 (PPO), Schulman et al. 2015 (GAE), Rafailov et al.
2023 (DPO), Shao et al. 2024 (GRPO), Ahmadian et al. 2024 (RLOO), Schulman's note "Approximating KL
divergence" (2020) for the k1/k2/k3 estimators.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of `x` where `mask` is 1 (0 when the mask is empty)."""
    mask = mask.to(x.dtype)
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (unbiased variance); masked-out entries become 0."""
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    n = mask.sum().clamp(min=2)
    var = masked_sum((x - mean) ** 2, mask) / (n - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


# ---- rewards -------------------------------------------------------------------------------------
def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman 2020). With d = log pi - log pi_ref:
    k1 = d (unbiased, can be negative; InternLM2/xtuner's per-token penalty), k2 = d^2 / 2,
    k3 = exp(-d) - 1 + d (unbiased and never negative; GRPO's loss term)."""
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d * d
    if kind == "k3":
        return torch.expm1(-d) + d
    raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2 or k3")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index [B] of each row's last masked-in (policy) token; -1 for an empty row."""
    T = mask.shape[1]
    pos = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), pos, torch.full_like(pos, -1)).max(dim=1).values


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards [B, T]: -kl_coef * kl on every policy token, plus the sequence score [B] on the
    response's last policy token (never on padding or an environment turn). InternLM2 report: the RM
    score on the last response token, KL coefficient 0.01 per token."""
    mask = mask.to(kl.dtype)
    r = -kl_coef * kl * mask
    last = last_token_index(mask)
    rows = torch.nonzero(last >= 0).squeeze(1)
    r[rows, last[rows]] += scores[rows].to(r.dtype)
    return r


# ---- advantages ----------------------------------------------------------------------------------
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.99) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the policy tokens of each row -> (advantages, returns) [B, T].

    Positions with mask 0 (environment turns, padding) are skipped: the step after policy token t is
    the next policy token, so an environment turn is part of the transition, as in an agent loop. After
    the last policy token the value is 0 (the episode ends). returns = advantages + values; both are 0
    where the mask is 0. InternLM2 report / xtuner: gamma 1, lambda 0.99."""
    B, T = rewards.shape
    m = mask.to(rewards.dtype)
    adv = torch.zeros_like(rewards)
    next_v = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in range(T - 1, -1, -1):
        on = m[:, t] > 0
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        cur = delta + gamma * lam * last
        adv[:, t] = torch.where(on, cur, torch.zeros_like(cur))
        last = torch.where(on, cur, last)
        next_v = torch.where(on, values[:, t], next_v)
    return adv, (adv + values) * m


def group_advantages(rewards: torch.Tensor, kind: str = "grpo", eps: float = 1e-6) -> torch.Tensor:
    """Critic-free baselines for rewards [G, K] (K samples of one prompt per row) -> advantages [G, K].
    grpo: (r - mean) / (std + eps) within the group (Shao et al. 2024; std unbiased);
    rloo: r - mean of the other K - 1 samples (leave-one-out, Ahmadian et al. 2024)."""
    K = rewards.shape[1]
    if kind == "grpo":
        return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + eps)
    if kind == "rloo":
        if K < 2:
            raise ValueError("RLOO needs at least two samples per prompt")
        return rewards - (rewards.sum(1, keepdim=True) - rewards) / (K - 1)
    raise ValueError(f"unknown group baseline {kind!r}; use grpo or rloo")


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the masked entries (1 = perfect critic)."""
    var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, mask)) ** 2, mask)
    return float(1 - var_d / var_r) if float(var_r) > 0 else float("nan")


# ---- losses --------------------------------------------------------------------------------------
def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate (Schulman et al. 2017): mean over policy tokens of
    max(-A * ratio, -A * clip(ratio, 1 - clip, 1 + clip)), ratio = exp(logp - old_logp).
    Returns (loss, fraction of tokens where the clipped term was chosen)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    frac = masked_mean((clipped > unclipped).to(logp.dtype), mask)
    return loss, frac.detach()


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float | None = 0.2) -> torch.Tensor:
    """0.5 * max((V - R)^2, (V_clipped - R)^2) averaged over policy tokens, V_clipped = old_V +
    clip(V - old_V, -clip, clip) (the clipped value loss of PPO implementations); no clipping when clip is None."""
    err = (values - returns) ** 2
    if clip is not None:
        v_clip = old_values + (values - old_values).clamp(-clip, clip)
        err = torch.maximum(err, (v_clip - returns) ** 2)
    return 0.5 * masked_mean(err, mask)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, focal: bool = False,
                       barrier_weight: float = 0.0, bound: float = 5.0) -> torch.Tensor:
    """Reward-model loss on scores [B] of (chosen, rejected) pairs, averaged over pairs:
    -log sigmoid(r_c - r_r), weighted by the focal factor (1 - p)^2 with p = 2 * relu(sigmoid(r_c - r_r) - 0.5)
    when `focal` (InternLM2 report 4.3; the factor is not differentiated through, as a weight), plus
    `barrier_weight` * -(log(bound - r) + log(bound + r)) summed over both scores, keeping scores inside
    (-bound, bound) (report: weight 0.02, xtuner 0.01, bound 5). Scores at or beyond the bound make the
    barrier infinite; they are clamped just inside it so one step cannot produce NaN."""
    diff = chosen - rejected
    loss = -F.logsigmoid(diff)
    if focal:
        p = 2 * torch.relu(torch.sigmoid(diff) - 0.5)
        loss = loss * (1 - p).detach() ** 2
    loss = loss.mean()
    if barrier_weight > 0:
        both = torch.cat([chosen, rejected]).clamp(-bound + 1e-4, bound - 1e-4)
        loss = loss + barrier_weight * (-(torch.log(bound - both) + torch.log(bound + both))).mean()
    return loss


def dense_pair_loss(v_chosen: torch.Tensor, v_rejected: torch.Tensor, start: torch.Tensor,
                    stop: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry at every position where a pair's two sequences differ: the dense auxiliary of the
    reward model (README, alignment section, "Reward model, arithmetic domain").

    v_chosen, v_rejected [n, T]: per-position scores (`v_head` of every final hidden state) of the chosen
    and rejected sequences, right-padded to one length T; a pair shares its prompt, so position k is the
    k-th token of both. start [n]: the first position whose token differs (the common prefix length);
    stop [n]: the shorter sequence's length. Loss: for each pair with start < stop, the mean over
    k in [start, stop) of -log sigmoid(v_chosen[k] - v_rejected[k]); then the mean over those pairs.
    Positions before `start` are left out: their hidden states are the same on both sides (causal model).
    Returns a zero that keeps the graph when no pair has such a position."""
    k = torch.arange(v_chosen.shape[1], device=v_chosen.device)
    m = (k[None, :] >= start[:, None]) & (k[None, :] < stop[:, None])  # [n, T]
    per = -F.logsigmoid(v_chosen - v_rejected) * m
    cnt = m.sum(1)
    ok = cnt > 0
    if not bool(ok.any()):
        return (v_chosen.sum() + v_rejected.sum()) * 0.0
    return (per.sum(1)[ok] / cnt[ok]).mean()


def dpo_loss(pol_chosen: torch.Tensor, pol_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023) on summed response log-probabilities [B]:
    -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))). Returns (loss, implicit reward margin [B])."""
    margin = beta * ((pol_chosen - ref_chosen) - (pol_rejected - ref_rejected))
    return -F.logsigmoid(margin).mean(), margin.detach()


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy [...] of the categorical distribution given by logits [..., V] (nats)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


class RunningMoments:
    """Running mean and std of reward scores (xtuner normalises clipped RM scores by them); its state is
    saved with checkpoints so a resumed run normalises identically (Chan et al. parallel update)."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.double().flatten()
        n = x.numel()
        if n == 0:
            return
        m, v = float(x.mean()), float(x.var(unbiased=False))
        tot = self.count + n
        delta = m - self.mean
        new_mean = self.mean + delta * n / tot
        m2 = self.var * self.count + v * n + delta * delta * self.count * n / tot
        self.mean, self.var, self.count = new_mean, m2 / tot, tot

    @property
    def std(self) -> float:
        return max(self.var, 1e-12) ** 0.5

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, s: dict) -> None:
        self.mean, self.var, self.count = float(s["mean"]), float(s["var"]), float(s["count"])
