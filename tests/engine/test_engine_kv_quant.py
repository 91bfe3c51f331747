"""The KV cache stored as bf16 or int8 (`Engine(kv=...)`, `--kv`): the kernel's store rounds exactly as torch's
does; int8 and bf16 attention against float attention within a bound derived below; decode logits of every
decode path in each mode against the model's one-shot forward with keys/values rounded as the format stores
them (tight: the same numbers) and against the float forward (the rounding's own effect); the engine's
accounting and stats."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import kv_round_trip, make_model, reference_logits, stored_logits

import puyu.engine.fused_decode as fd
from puyu.engine.decode_step import DecodeStep
from puyu.engine.fused_decode import FusedDecode
from puyu.engine.kv_cache import AttentionBatch, PagedKVCache, SequenceBlocks
from puyu.engine.scheduler import Engine, EngineError, decode, prefill, request_rope_base
from puyu.model.config import get_preset
from puyu.model.quant import QuantError, dequantize_kv, kv_bytes_per_token, quantize_kv

KERNEL = fd.available()
needs_kernel = pytest.mark.skipif(not KERNEL, reason="no C compiler: the kernel cannot be built here")


def isa_flags(isa: str):
    if isa not in fd.cpu_isas():
        pytest.skip(f"this CPU cannot run the {isa} build")
    return fd.ISA_FLAGS[isa]


# ---- formats ---------------------------------------------------------------------------------------------
def test_int8_round_trip_bound_and_zero_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, 64, generator=g) * torch.rand(50, 3, 1, generator=g) * 10
    x[7, 1] = 0.0  # an all-zero head: scale 0, no division by zero
    q, s = quantize_kv(x)
    assert q.dtype == torch.int8 and s.shape == (50, 3) and int(q.abs().max()) == 127
    err = (dequantize_kv(q, s) - x).abs()
    assert bool((err <= s[..., None] / 2 * (1 + 1e-6)).all())  # |x - q s| <= s / 2
    assert s[7, 1] == 0 and bool((q[7, 1] == 0).all()) and bool((dequantize_kv(q, s)[7, 1] == 0).all())
    torch.testing.assert_close(dequantize_kv(q, s), kv_round_trip(x, "int8"), rtol=0, atol=0)


@needs_kernel
@pytest.mark.parametrize("kv", ["bf16", "int8"])
@pytest.mark.parametrize("isa", ["avx512", "avx2", "portable"])
def test_kernel_store_rounds_bit_for_bit_like_torch(isa, kv):
    """What rope_and_store writes equals `PagedKVCache.encode`, ties and zero rows included."""
    flags = isa_flags(isa)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 24, generator=g) * torch.logspace(-3, 3, 40)[:, None]
    x[3] = 0.0
    x[5] = torch.arange(24) - 11.5  # int8: halves after scaling ...
    x[5, 0] = 127.0  # ... with s = 1 exactly, so x / s = k + 0.5 is a tie (rounded to even)
    x[6, :4] = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 3.0])  # bf16 ties
    data, scales = fd.kv_store(x, kv, flags=flags)
    cache = PagedKVCache(get_preset("nano-tiny"), 1, 1, kv=kv)
    want, want_s = cache.encode(x)
    assert torch.equal(data, want)
    if kv == "int8":
        assert torch.equal(scales, want_s)


def test_bytes_per_token_of_each_format():
    cfg = get_preset("nano-tiny")  # 2 layers, 2 kv heads, head_dim 16
    for kv, per_head in [("f32", 64), ("bf16", 32), ("int8", 16 + 4)]:
        cache = PagedKVCache(cfg, num_blocks=4, block_size=8, kv=kv)
        assert cache.bytes_per_token == kv_bytes_per_token(cfg, kv) == 2 * 2 * 2 * per_head
    assert kv_bytes_per_token(get_preset("internlm2-7b"), "int8") == 2 * 32 * 8 * 132  # 66 KiB vs 128 in bf16
    with pytest.raises(QuantError, match="unknown KV cache format"):
        PagedKVCache(cfg, 4, 8, kv="int4")


# ---- attention against float attention ---------------------------------------------------------------------
def element_bound(x: torch.Tensor, kv: str) -> torch.Tensor:
    """Largest |x - stored(x)| per element [..., D]: int8 s / 2 with s = max|x| / 127 per row; bf16
    2^-9 |x| (round to nearest with 8 significant bits)."""
    if kv == "int8":
        return (x.abs().amax(-1, keepdim=True) / 254).expand_as(x)
    return x.abs() * 2.0 ** -9


def attention_bound(q, k, v, kv):
    """Per output element, for q [H, D] of one decoding token over k, v [K, S, D] (GQA groups of H / K):

    scores z_t = q.k_t / sqrt(D) move by |dz_t| <= sum_d |q_d| e^k_{t,d} / sqrt(D) <= eps (e: element_bound);
    softmax p_t ~ exp(z_t) then moves by a factor within [exp(-2 eps), exp(2 eps)], so sum_t |dp_t| <=
    exp(2 eps) - 1; the output o = sum_t p_t v_t moves by do = sum_t dp_t v^_t + sum_t p_t dv_t, so
    |do_d| <= (exp(2 eps) - 1) max_t |v^_{t,d}| + max_t e^v_{t,d}. -> [H, D]."""
    H, K = q.shape[0], k.shape[0]
    kk, vv = k.repeat_interleave(H // K, 0), v.repeat_interleave(H // K, 0)  # [H, S, D]
    eps = (q.abs()[:, None, :] * element_bound(kk, kv)).sum(-1).amax(-1) / math.sqrt(q.shape[-1])  # [H]
    vhat = kv_round_trip(vv, kv)
    return (torch.exp(2 * eps) - 1)[:, None] * vhat.abs().amax(1) + element_bound(vv, kv).amax(1)


@pytest.mark.parametrize("kv", ["bf16", "int8"])
def test_quantized_attention_within_the_stated_bound(kv):
    """A decode step's attention over 300 cached tokens (random q/k/v, keys of a few large heads as real
    models have) through an int8 / bf16 cache, against float attention on the exact keys/values."""
    cfg = get_preset("nano-tiny", num_attention_heads=4, num_key_value_heads=2, hidden_size=256)  # D = 64
    H, K, D, S = 4, 2, 64, 300
    g = torch.Generator().manual_seed(2)
    k = torch.randn(K, S, D, generator=g) * (1 + 4 * (torch.rand(1, 1, D, generator=g) > 0.9))
    v, q = torch.randn(K, S, D, generator=g), torch.randn(H, D, generator=g)
    cache = PagedKVCache(cfg, num_blocks=40, block_size=8, kv=kv)
    seq = SequenceBlocks(cache, S)
    layers = cfg.num_hidden_layers
    hook = AttentionBatch.prefill(cache, seq, 0, S - 1)
    for layer in range(layers):
        hook.attend(layer, torch.randn(1, H, S - 1, D), k[None, :, :S - 1], v[None, :, :S - 1])
    hook = AttentionBatch.decode(cache, [seq], [S - 1])
    got = hook.attend(0, q[None, :, None], k[None, :, S - 1:], v[None, :, S - 1:])[0, :, 0]  # [H, D]
    kk, vv = k.repeat_interleave(H // K, 0), v.repeat_interleave(H // K, 0)
    exact = ((q[:, None] @ kk.transpose(1, 2)) / math.sqrt(D)).softmax(-1) @ vv  # [H, 1, D]
    err, bound = (got - exact[:, 0]).abs(), attention_bound(q, k, v, kv)
    assert bool((err <= bound + 1e-5).all()), float((err - bound).max())
    assert float(err.max()) > 0  # the cache really rounds
    # The worst case is loose: on these values the error is far inside it (int8 ~2%, bf16 ~1% of it).
    assert float((err / bound).max()) < 0.5


def _fill(cache, seqs, ks, vs) -> None:
    """Write keys/values ks[i], vs[i] [K, S_i, D] of sequence i into layer 0 of the cache through torch's store
    (PagedKVCache.encode: the format's rounding)."""
    for seq, k, v in zip(seqs, ks, vs):
        S = k.shape[1]
        hook = AttentionBatch.prefill(cache, seq, 0, S)
        hook.attend(0, torch.zeros(1, k.shape[0], S, k.shape[2]), k[None], v[None])


def _interleaved(cache, lengths):
    """Sequences whose blocks alternate in the pool (each block table is a real gather, not a run)."""
    seqs = [SequenceBlocks(cache, n) for n in lengths]
    P = cache.block_size
    for t in range(0, max(lengths), P):
        for s, n in zip(seqs, lengths):
            if t < n:
                s.ensure(min(n, t + P))
    return seqs


def _float_attention(q, k, v):
    """Float64 attention of one token's q [H, D] over k, v [K, S, D] (GQA groups of H / K) -> [H, D]."""
    H, K, D = q.shape[0], k.shape[0], q.shape[1]
    kk, vv = k.double().repeat_interleave(H // K, 0), v.double().repeat_interleave(H // K, 0)
    return (((q.double()[:, None] @ kk.transpose(1, 2)) / math.sqrt(D)).softmax(-1) @ vv)[:, 0]


# (H, K, D, lengths, threads): 7B's head shape, split across cores in chunks; a head dim that is no multiple of
# 16 or 8 (vector tails) with a 1-token sequence; one query per kv head, lengths not multiples of a block
KERNEL_SHAPES = {"d128": (8, 2, 128, [1000, 37], 2), "d24": (3, 1, 24, [1, 300], 1), "d64-mha": (4, 4, 64, [517, 33], 2)}


@needs_kernel
@pytest.mark.parametrize("shape", sorted(KERNEL_SHAPES))
@pytest.mark.parametrize("kv", ["f32", "bf16", "int8"])
@pytest.mark.parametrize("isa", ["avx512", "avx2", "portable"])
def test_kernel_attention_over_each_format(isa, kv, shape):
    """The kernel's attention (streamed block by block, long sequences split across threads and merged)
    equals float attention on the numbers the cache stores (float32 rounding only), and so stays within the
    format's bound (attention_bound) of float attention on the exact keys and values."""
    flags = isa_flags(isa)
    H, K, D, lengths, threads = KERNEL_SHAPES[shape]
    cfg = get_preset("nano-tiny", num_attention_heads=H, num_key_value_heads=K, hidden_size=H * D)
    cache = PagedKVCache(cfg, num_blocks=sum(n // 16 + 1 for n in lengths) + 2, block_size=16, kv=kv)
    seqs = _interleaved(cache, lengths)
    g = torch.Generator().manual_seed(5)
    ks = [torch.randn(K, n, D, generator=g) * (1 + 4 * (torch.rand(1, 1, D, generator=g) > 0.9)) for n in lengths]
    vs = [torch.randn(K, n, D, generator=g) for n in lengths]
    _fill(cache, seqs, ks, vs)
    q = torch.randn(len(lengths), H, D, generator=g) * 2
    got = fd.attention(cache, seqs, [n - 1 for n in lengths], q, threads=threads, flags=flags)  # [B, H, D]
    for b, (k, v) in enumerate(zip(ks, vs)):
        stored = _float_attention(q[b], kv_round_trip(k, kv), kv_round_trip(v, kv))
        assert torch.allclose(got[b].double(), stored, atol=2e-6 * float(v.abs().max()), rtol=0), \
            float((got[b] - stored).abs().max())
        err = (got[b].double() - _float_attention(q[b], k, v)).abs()
        assert bool((err <= attention_bound(q[b], k, v, kv).double() + 1e-5).all())


@pytest.mark.parametrize("kv", ["bf16", "int8"])
def test_torch_attention_over_a_stored_cache_reads_it_in_chunks(kv, monkeypatch):
    """`AttentionBatch` over a bf16/int8 cache attends chunk by chunk (bounded temporaries): a ragged batched
    decode through gathered block tables and a prefill chunk after cached keys give what attention over the whole
    dequantized cache gives, and the keys were read in several chunks."""
    import puyu.engine.kv_cache as kvc

    H, K, D = 4, 2, 32
    cfg = get_preset("nano-tiny", num_attention_heads=H, num_key_value_heads=K, hidden_size=H * D)
    cache = PagedKVCache(cfg, num_blocks=60, block_size=8, kv=kv)
    lengths = [150, 61, 90]
    seqs = _interleaved(cache, [n + 1 for n in lengths])
    g = torch.Generator().manual_seed(6)
    ks = [torch.randn(K, n, D, generator=g) * 3 for n in lengths]
    _fill(cache, seqs, ks, [torch.randn(K, n, D, generator=g) for n in lengths])
    reads = []
    monkeypatch.setattr(kvc, "STORED_CHUNK_BYTES", 4 * (2 * 3 * K * D + 2 * 3 * H * 5) * 24)  # ~24 keys
    real = kvc._as_float
    monkeypatch.setattr(kvc, "_as_float", lambda x, s: reads.append(x.shape[2]) or real(x, s))

    def whole(hook, layer, q, k, v):  # the reference: every key dequantized, one SDPA call
        c = hook.cache
        hook._store(c.k[layer], None if c.k_scale is None else c.k_scale[layer], k)
        hook._store(c.v[layer], None if c.v_scale is None else c.v_scale[layer], v)
        keys = c.decode(hook._read(c.k[layer]), None if c.k_scale is None else hook._read(c.k_scale[layer]))
        values = c.decode(hook._read(c.v[layer]), None if c.v_scale is None else hook._read(c.v_scale[layer]))
        return torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=hook.mask,
                                                                enable_gqa=True)

    q, k, v = torch.randn(3, H, 1, D, generator=g), torch.randn(3, K, 1, D, generator=g), torch.randn(3, K, 1, D, generator=g)
    hook = AttentionBatch.decode(cache, seqs, lengths)  # ragged: a padding mask; gathered tables
    got = hook.attend(0, q, k, v)
    assert len(reads) >= 2 * 150 // 24 and max(reads) < 150
    # chunked online softmax against one SDPA call: fp32 rounding relative to the outputs (|x| ~2; 2.3e-6 seen on
    # an AMD Zen 4)
    torch.testing.assert_close(got, whole(hook, 0, q, k, v), rtol=2e-6, atol=2e-6)
    # a prefill chunk of 5 tokens after the first sequence's 151 cached ones (a causal mask over cached keys)
    seq = SequenceBlocks(cache, 160)
    _fill(cache, [seq], [torch.randn(K, 151, D, generator=g)], [torch.randn(K, 151, D, generator=g)])
    q, k, v = torch.randn(1, H, 5, D, generator=g), torch.randn(1, K, 5, D, generator=g), torch.randn(1, K, 5, D, generator=g)
    hook = AttentionBatch.prefill(cache, seq, 151, 5)
    reads.clear()
    got = hook.attend(0, q, k, v)
    assert len(reads) >= 2 and got.shape == (1, H, 5, D)
    torch.testing.assert_close(got, whole(hook, 0, q, k, v), rtol=2e-6, atol=2e-6)


# ---- decode logits of every path, per mode ---------------------------------------------------------------------
CASES = {"d32": dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, bias=True),  # vector attention
         "d24-dynamic": dict(hidden_size=96, num_attention_heads=4, num_key_value_heads=2,  # portable attention
                             rope_scaling={"type": "dynamic", "factor": 2.0})}
# |logits - float forward's| / max |logit|, the rounding's own effect on these tiny random models (measured:
# bf16 <= 0.4%, int8 <= 1.0% for d32; 0.6% and 2.0% for a wider d128 model)
FLOAT_TOL = {"bf16": 0.01, "int8": 0.03}


def _step(model, path):
    if path == "step":
        return DecodeStep(model)
    if path == "model":
        return None
    if not KERNEL:
        pytest.skip("no C compiler: the kernel cannot be built here")
    return FusedDecode(model, threads=2, min_parallel=0, flags=isa_flags(path.split("-")[1]))


@pytest.mark.parametrize("path", ["fused-avx512", "fused-avx2", "fused-portable", "step", "model"])
@pytest.mark.parametrize("kv", ["bf16", "int8"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_decode_logits_per_kv_mode(case, kv, path):
    model = make_model(intermediate_size=100, **CASES[case])
    cfg = model.config
    step = _step(model, path)
    cache = PagedKVCache(cfg, num_blocks=60, block_size=4, kv=kv)
    g = torch.Generator().manual_seed(4)
    lengths, new = [5, 23, 40, 1], [3, 5, 2, 4]  # past max_position_embeddings (32): dynamic bases differ
    prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in lengths]
    seqs = [SequenceBlocks(cache, len(p) + n) for p, n in zip(prompts, new)]
    bases = [request_rope_base(cfg, len(p), n) for p, n in zip(prompts, new)]
    if isinstance(step, FusedDecode):  # the kernel prefills two prompts (and stores their keys), torch two
        step.prefill(cache, seqs[:2], prompts[:2], bases[:2])
    for s, p, b in list(zip(seqs, prompts, bases))[2 if isinstance(step, FusedDecode) else 0:]:
        cut = len(p) // 2  # in two chunks (the second reads the first's keys), or one for a 1-token prompt
        if cut:
            prefill(model, cache, s, p[:cut], 0, b)
        prefill(model, cache, s, p[cut:], cut, b)
    tokens = [list(p) for p in prompts]
    for _ in range(max(new) - 1):
        live = [i for i in range(len(prompts)) if len(tokens[i]) - len(prompts[i]) < new[i] - 1]
        nxt = torch.randint(3, cfg.vocab_size, (len(live),), generator=g).tolist()
        for i, t in zip(live, nxt):
            tokens[i].append(t)
        got = decode(model, cache, [seqs[i] for i in live], nxt, [len(tokens[i]) - 1 for i in live],
                     [bases[i] for i in live], step)
        for row, i in enumerate(live):
            same = stored_logits(model, cache, seqs[i], tokens[i], bases[i])[-1]
            scale = max(1.0, float(same.abs().max()))
            # the same stored numbers (read back from the cache), summed in another order: fp32 rounding only
            assert torch.allclose(got[row], same, atol=5e-4 * scale), (i, (got[row] - same).abs().max())
            # and what was stored is the format's rounding of the float keys, up to rare last-bit flips
            rounded = reference_logits(model, tokens[i], kv, bases[i])[-1]
            assert (got[row] - rounded).abs().max() <= FLOAT_TOL[kv] / 2 * scale
            exact = reference_logits(model, tokens[i], None, bases[i])[-1]
            assert (got[row] - exact).abs().max() <= FLOAT_TOL[kv] * scale


# ---- the engine ----------------------------------------------------------------------------------------------
def test_engine_stats_name_the_format_and_size_the_cache():
    model = make_model()
    for kv, fmt in [(None, "f32"), ("f32", "f32"), ("bf16", "bf16"), ("int8", "int8")]:
        with Engine(model, cache_bytes=64 * kv_bytes_per_token(model.config, fmt), block_size=8, kv=kv) as eng:
            s = eng.stats()
            assert s["kv_format"] == fmt and s["kv_bytes_per_token"] == kv_bytes_per_token(model.config, fmt)
            assert s["cache_tokens"] == 64  # the same byte budget holds the same tokens in each format
    with pytest.raises(EngineError, match="'kv' must be one of"):
        Engine(model, kv="fp8")
