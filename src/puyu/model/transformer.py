"""The InternLM2 transformer, with module names equal to the Hugging Face checkpoint names so that
loading is a near-identity mapping (`model.layers.{i}.attention.wqkv.weight`, `output.weight`, ...).

How it differs from a plain pre-norm LLaMA decoder:
- Q, K and V come from one packed `wqkv` projection whose rows are grouped by key/value head:
  for KV head g the block holds its n_rep query heads, then key g, then value g (see `split_wqkv`).
- `wqkv` and `wo` carry a bias only when `config.bias`; the output head is never tied.
- RMSNorm runs in float32; RoPE supports linear and dynamic-NTK scaling that depends only on the
  current total length (`puyu.model.rope`).
- Grouped-query attention goes through `scaled_dot_product_attention(enable_gqa=True)`, so repeated
  K/V heads are never materialised by us.

Shapes: B batch, T new tokens, S keys (cached + new), H query heads, K kv heads, D head dim, C hidden.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from puyu.model.config import ModelConfig
from puyu.model.rope import apply_rope, cos_sin


class KVCacheHook(Protocol):
    """What the engine passes as `cache`: it stores the new keys/values of a layer and attends.

    q: [B, H, T, D], k/v: [B, K, T, D] (RoPE already applied) -> attention output [B, H, T, D]."""

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def split_wqkv(qkv: torch.Tensor, cfg: ModelConfig):
    """[..., (H + 2K) * D] -> q [..., H, D], k [..., K, D], v [..., K, D] per the packed layout:
    row `(g * (n_rep + 2) + s) * D + j`, slot s < n_rep = query head g * n_rep + s, then key g, value g."""
    K, n_rep, D = cfg.num_key_value_heads, cfg.n_rep, cfg.head_dim
    grouped = qkv.unflatten(-1, (K, n_rep + 2, D))  # [..., K, n_rep + 2, D]
    q = grouped[..., :n_rep, :].flatten(-3, -2)  # [..., H, D]
    return q, grouped[..., n_rep, :], grouped[..., n_rep + 1, :]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        H, K, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.hidden_size, (H + 2 * K) * D, bias=cfg.bias)
        self.wo = nn.Linear(H * D, cfg.hidden_size, bias=cfg.bias)

    def forward(self, x, cos, sin, cache: KVCacheHook | None = None, mask: torch.Tensor | None = None):
        B, T, _ = x.shape
        q, k, v = split_wqkv(self.wqkv(x), self.cfg)  # [B, T, H|K, D]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H|K, T, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            out = cache.attend(self.layer_idx, q, k, v)  # [B, H, T, D]
        elif mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))  # [B, T, C]


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); w1 = gate, w3 = up, w2 = down. Never a bias."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.w3 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.attention = Attention(cfg, layer_idx)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, cache=None, mask=None):
        h = x + self.attention(self.attention_norm(x), cos, sin, cache, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class InternLM2Model(nn.Module):
    """Embeddings, decoder layers and the final norm (checkpoint prefix `model.`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=None)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Causal mask that also keeps attention within documents when sequences are packed.
    doc_ids: [B, T] integer document index per token -> bool [B, 1, T, T] (True = may attend)."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same = doc_ids[:, :, None] == doc_ids[:, None, :]  # [B, T, T]
    return (same & causal)[:, None]


class InternLM2ForCausalLM(nn.Module):
    """`model(input_ids [B, T]) -> logits [B, T, vocab]` (float32).

    Optional: `position_ids` [B, T] (default 0..T-1); `cache` implementing `KVCacheHook`;
    `rope_base` (float or [B] tensor) to pin the RoPE base (the engine fixes it per request);
    `doc_ids` [B, T] to keep attention within packed documents; `return_hidden` to get the final
    normed hidden states [B, T, C] instead of logits (the engine and reward model apply heads themselves).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = InternLM2Model(cfg)
        self.output = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def reset_parameters(self, std: float = 0.02, seed: int | None = None) -> InternLM2ForCausalLM:
        """Random init like the released training code: N(0, 0.02) matrices, zero biases, unit norms."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)
        return self

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                cache: KVCacheHook | None = None, rope_base: float | torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None, return_hidden: bool = False) -> torch.Tensor:
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        cos, sin = cos_sin(self.config, position_ids, rope_base)  # [B, T, D]
        mask = document_mask(doc_ids) if doc_ids is not None else None
        x = self.model.tok_embeddings(input_ids)  # [B, T, C]
        for layer in self.model.layers:
            x = layer(x, cos, sin, cache, mask)
        x = self.model.norm(x)
        if return_hidden:
            return x
        return self.output(x).float()  # [B, T, vocab]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
