"""Rotary position embeddings with InternLM2's scaling rules.

- LLaMA "rotate half" convention: cos/sin are `cat(freqs, freqs)` over the head dimension.
- `inv_freq = 1 / base ** (arange(0, d, 2) / d)`.
- linear scaling: positions are divided by `factor`.
- dynamic NTK: only when the total length L_total exceeds `max_position_embeddings` (L) is the base raised,
  `base' = base * ((factor * L_total / L) - (factor - 1)) ** (d / (d - 2))`.

Unlike the reference implementations, nothing here is cached across calls: the frequencies are a pure
function of (config, total length), so a long input never leaves a stale base behind for a later short one.
The engine fixes the total length per request (see `puyu.engine.scheduler`) so cached keys and new queries agree.
"""

from __future__ import annotations

import torch

from puyu.model.config import ModelConfig


def dynamic_base(cfg: ModelConfig, total_len: int | torch.Tensor) -> float | torch.Tensor:
    """The RoPE base in force for a sequence of `total_len` tokens (a float, or a tensor of bases)."""
    base = cfg.rope_theta
    if cfg.rope_type != "dynamic":
        return base if not isinstance(total_len, torch.Tensor) else torch.full_like(total_len, base, dtype=torch.float64)
    d, L, f = cfg.head_dim, cfg.max_position_embeddings, cfg.rope_factor
    if isinstance(total_len, torch.Tensor):
        n = total_len.to(torch.float64).clamp(min=L)
        return base * ((f * n / L) - (f - 1)) ** (d / (d - 2))
    if total_len <= L:
        return base
    return base * ((f * total_len / L) - (f - 1)) ** (d / (d - 2))


def batch_base(bases: list[float | None], device=None) -> float | torch.Tensor | None:
    """The `rope_base` argument for a batch of requests with fixed bases: the shared value when all agree
    (None = the config's), else a float64 tensor [B] of per-request bases."""
    if bases[0] is None or all(b == bases[0] for b in bases):
        return bases[0]
    return torch.tensor(bases, dtype=torch.float64, device=device)  # [B]


def inv_freq(base: float | torch.Tensor, head_dim: int, device=None) -> torch.Tensor:
    """[d/2] for a float base, [B, d/2] for a tensor of bases [B]. float32, like the references."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    if isinstance(base, torch.Tensor):
        return 1.0 / (base.to(device=device, dtype=torch.float32)[:, None] ** exponent[None, :])
    return 1.0 / (base ** exponent)


def cos_sin(cfg: ModelConfig, position_ids: torch.Tensor, base: float | torch.Tensor | None = None):
    """cos, sin of shape [B, T, D] (float32) for integer positions [B, T].

    `base` defaults to the base for the current total length, max(position) + 1 per row."""
    if base is None:
        base = dynamic_base(cfg, position_ids.max(dim=-1).values + 1) if cfg.rope_type == "dynamic" else cfg.rope_theta
    freqs_inv = inv_freq(base, cfg.head_dim, device=position_ids.device)  # [D/2] or [B, D/2]
    pos = position_ids.to(torch.float32)  # [B, T]
    if cfg.rope_type == "linear":
        pos = pos / cfg.rope_factor
    if freqs_inv.dim() == 1:
        freqs = pos[..., None] * freqs_inv  # [B, T, D/2]
    else:
        freqs = pos[..., None] * freqs_inv[:, None, :]  # [B, T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, T, D]; cos/sin: [B, T, D]. Computed in float32, returned in x's dtype."""
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, D]
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)
