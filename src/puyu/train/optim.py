"""AdamW parameter groups, the learning-rate schedule and gradient clipping.

InternLM2 report: AdamW with betas (0.9, 0.95), eps 1e-8, weight decay 0.1, learning rate warmed up
then decayed with a cosine to 10% of its peak. Weight decay applies to matrices only (every parameter
with two or more dimensions: projections, embeddings, output head); norm weights and biases are not
decayed, since shrinking a gain or an offset toward zero is not a regulariser of model capacity.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from puyu.errors import ConfigError


def lr_at(step: int, total_steps: int, peak: float, warmup_steps: int, min_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`.

    Linear warmup from peak / warmup_steps to peak over the first `warmup_steps` steps, then a half
    cosine from peak down to min_ratio * peak at the last step. Pure function of its arguments, so a
    resumed run recomputes exactly the same value."""
    if total_steps <= 0:
        raise ConfigError(f"total_steps must be positive, got {total_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ConfigError(f"min_lr_ratio must be within [0, 1], got {min_ratio}")
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * (min_ratio + (1.0 - min_ratio) * cosine)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices (decayed) and vectors (norm weights, biases; not decayed).
    Names are kept per group so tests and logs can say which tensor went where."""
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() >= 2:
            decay.append(p)
            decay_names.append(name)
        else:
            no_decay.append(p)
            no_decay_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]


def build_optimizer(model: nn.Module, lr: float, betas=(0.9, 0.95), eps: float = 1e-8,
                    weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW over `param_groups`. The foreach implementation is used on every device: it is
    deterministic for a fixed order of parameters, which exact resume relies on."""
    groups = param_groups(model, weight_decay)
    for g in groups:
        g.pop("names")
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, foreach=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm` (no clipping when max_norm <= 0); return the norm
    before clipping. Works for DDP and FSDP-sharded parameters alike (torch computes the global norm)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    limit = max_norm if max_norm > 0 else float("inf")  # inf: measure only (the clip factor is 1)
    norm = torch.nn.utils.clip_grad_norm_(params, limit, foreach=True)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
        norm = norm.full_tensor()
    return float(norm)
