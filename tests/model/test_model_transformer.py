"""The model against independent references: transformers' LlamaForCausalLM on converted weights, and a
per-head loop that reads `wqkv` with the row formula from docs/internlm2.md."""

from __future__ import annotations

import math

import pytest
import torch

from puyu.model.checkpoint import save_pretrained
from puyu.model.config import ModelConfig
from puyu.model.convert import convert
from puyu.model.llama_layout import pack_wqkv
from puyu.model.transformer import InternLM2ForCausalLM


def tiny_config(**kw) -> ModelConfig:
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                rope_theta=10000.0, torch_dtype="float32")
    return ModelConfig(**{**base, **kw})


PARITY_CASES = {
    "nrep1": dict(num_key_value_heads=4),
    "nrep2-bias": dict(num_key_value_heads=2, bias=True),
    "nrep4": dict(num_attention_heads=8, num_key_value_heads=2, hidden_size=64),
    "linear": dict(rope_scaling={"type": "linear", "factor": 2.0}),
    "dynamic": dict(rope_scaling={"type": "dynamic", "factor": 2.0}, bias=True),
    "dynamic-nrep4": dict(num_attention_heads=8, num_key_value_heads=2, rope_scaling={"type": "dynamic", "factor": 3.0}),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_logits_match_transformers_llama(case, tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = tiny_config(**PARITY_CASES[case])
    torch.manual_seed(1)
    model = InternLM2ForCausalLM(cfg).reset_parameters(seed=3)
    if cfg.bias:  # make the biases non-zero so they are exercised
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0, 0.1)
    save_pretrained(model, tmp_path / "il2", max_shard_bytes=60_000)
    convert(tmp_path / "il2", tmp_path / "llama", to="llama")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "llama", dtype=torch.float32).eval()
    # Lengths below and above max_position_embeddings (32): dynamic NTK only acts above.
    for T in (7, 32, 80):
        ids = torch.randint(0, cfg.vocab_size, (2, T), generator=torch.Generator().manual_seed(T))
        with torch.no_grad():
            ours = model(ids)
            theirs = hf(ids).logits
        assert ours.shape == (2, T, cfg.vocab_size)
        assert (ours - theirs).abs().max().item() <= 1e-5, f"{case} T={T}"


def test_dynamic_ntk_has_no_stale_state():
    """A long input must not change what a later short input computes (the reference quirk)."""
    cfg = tiny_config(rope_scaling={"type": "dynamic", "factor": 2.0})
    model = InternLM2ForCausalLM(cfg).reset_parameters(seed=0)
    short = torch.randint(0, cfg.vocab_size, (1, 10))
    with torch.no_grad():
        before = model(short)
        model(torch.randint(0, cfg.vocab_size, (1, 100)))
        after = model(short)
    assert torch.equal(before, after)
    # and the long input really used a different base than the plain one
    plain = InternLM2ForCausalLM(tiny_config()).reset_parameters(seed=0)
    long = torch.randint(0, cfg.vocab_size, (1, 100))
    with torch.no_grad():
        assert (model(long) - plain(long)).abs().max() > 1e-4
        assert torch.allclose(model(short), plain(short))


def _reference_attention(x, wq, wk, wv, wo, cfg, positions):
    """Attention of one layer, head by head in float64: query head h reads key/value head h // n_rep."""
    T, D = x.shape[0], cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))

    def rope(v):  # v: [T, D], rotate-half convention
        ang = positions[:, None].double() * inv[None, :]
        cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
        v1, v2 = v[:, : D // 2], v[:, D // 2:]
        return v * cos + torch.cat([-v2, v1], -1) * sin

    heads = []
    for h in range(cfg.num_attention_heads):
        g = h // cfg.n_rep
        q, k, v = rope(x @ wq[h].T), rope(x @ wk[g].T), x @ wv[g].T
        scores = (q @ k.T) / math.sqrt(D)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        heads.append(torch.softmax(scores, -1) @ v)
    return torch.cat(heads, -1) @ wo.T


@pytest.mark.parametrize("heads,kv", [(4, 4), (4, 2), (8, 2)])
def test_wqkv_row_formula_and_group_attention(heads, kv):
    cfg = tiny_config(num_attention_heads=heads, num_key_value_heads=kv, hidden_size=64)
    H, K, D, C, n_rep = heads, kv, cfg.head_dim, cfg.hidden_size, cfg.n_rep
    g_ = torch.Generator().manual_seed(0)
    wq = torch.randn(H, D, C, generator=g_, dtype=torch.float64) * 0.2
    wk = torch.randn(K, D, C, generator=g_, dtype=torch.float64) * 0.2
    wv = torch.randn(K, D, C, generator=g_, dtype=torch.float64) * 0.2
    wo = torch.randn(C, H * D, generator=g_, dtype=torch.float64) * 0.2
    # Build wqkv element by element with the documented row formula.
    wqkv = torch.empty((H + 2 * K) * D, C, dtype=torch.float64)
    for g in range(K):
        for s in range(n_rep + 2):
            src = wq[g * n_rep + s] if s < n_rep else (wk[g] if s == n_rep else wv[g])
            for j in range(D):
                wqkv[(g * (n_rep + 2) + s) * D + j] = src[j]
    assert torch.equal(pack_wqkv(wq.reshape(H * D, C), wk.reshape(K * D, C), wv.reshape(K * D, C), cfg), wqkv)

    model = InternLM2ForCausalLM(cfg).double()
    attn = model.model.layers[0].attention
    with torch.no_grad():
        attn.wqkv.weight.copy_(wqkv)
        attn.wo.weight.copy_(wo)
    T = 9
    x = torch.randn(T, C, generator=g_, dtype=torch.float64)
    pos = torch.arange(T)
    from puyu.model.rope import cos_sin

    cos, sin = cos_sin(cfg, pos[None])
    with torch.no_grad():
        ours = attn(x[None], cos.double(), sin.double())[0]
    ref = _reference_attention(x, wq, wk, wv, wo, cfg, pos)
    assert (ours - ref).abs().max().item() < 1e-5  # cos/sin are float32 by design
    # A permuted layout (keys first) must give a different answer: the check can fail.
    bad = wqkv.reshape(K, n_rep + 2, D, C)[:, [n_rep] + list(range(n_rep)) + [n_rep + 1]].reshape(-1, C)
    with torch.no_grad():
        attn.wqkv.weight.copy_(bad)
        wrong = attn(x[None], cos.double(), sin.double())[0]
    assert (wrong - ref).abs().max().item() > 1e-3


def test_kv_cache_hook_matches_full_forward():
    """A minimal cache through the model's hook: prefill then one-token steps equal the full forward."""
    import torch.nn.functional as F

    class DenseCache:
        def __init__(self):
            self.k, self.v = {}, {}

        def attend(self, layer, q, k, v):
            if layer in self.k:
                k = torch.cat([self.k[layer], k], 2)
                v = torch.cat([self.v[layer], v], 2)
            self.k[layer], self.v[layer] = k, v
            S, T = k.shape[2], q.shape[2]
            mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    cfg = tiny_config()
    model = InternLM2ForCausalLM(cfg).reset_parameters(seed=1)
    ids = torch.randint(0, cfg.vocab_size, (1, 12))
    with torch.no_grad():
        full = model(ids)
        cache = DenseCache()
        parts = [model(ids[:, :8], cache=cache)]
        for t in range(8, 12):
            parts.append(model(ids[:, t:t + 1], position_ids=torch.tensor([[t]]), cache=cache))
    assert (torch.cat(parts, 1) - full).abs().max().item() < 1e-5


def test_packed_documents_do_not_attend_across():
    cfg = tiny_config()
    model = InternLM2ForCausalLM(cfg).reset_parameters(seed=2)
    a, b = torch.randint(0, cfg.vocab_size, (1, 5)), torch.randint(0, cfg.vocab_size, (1, 6))
    packed = torch.cat([a, b], 1)
    doc = torch.tensor([[0] * 5 + [1] * 6])
    pos = torch.tensor([list(range(5)) + list(range(6))])
    with torch.no_grad():
        out = model(packed, position_ids=pos, doc_ids=doc)
        assert (out[:, 5:] - model(b)).abs().max() < 1e-5
        assert (out[:, :5] - model(a)).abs().max() < 1e-5
