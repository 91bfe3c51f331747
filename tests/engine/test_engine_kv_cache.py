"""Paged KV cache: sizes, block accounting and reuse, and the attention hook against a plain
softmax(QK^T)V reference over the full key/value history."""

from __future__ import annotations

import math

import pytest
import torch

from puyu.engine.kv_cache import AttentionBatch, CacheFullError, PagedKVCache, SequenceBlocks, max_chunk_for
from puyu.errors import PuyuError
from puyu.model.config import get_preset

CFG = get_preset("nano-tiny")  # 2 layers, 4 heads, 2 kv heads, head_dim 16


def reference_attention(q, k, v, q_pos):
    """q [H, T, D], k/v [K, S, D], q_pos [T]: causal softmax attention with repeated kv heads."""
    H, K = q.shape[0], k.shape[0]
    k, v = k.repeat_interleave(H // K, 0), v.repeat_interleave(H // K, 0)  # [H, S, D]
    scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # [H, T, S]
    visible = torch.arange(k.shape[1])[None, :] <= q_pos[:, None]  # [T, S]
    return scores.masked_fill(~visible, float("-inf")).softmax(-1) @ v  # [H, T, D]


@pytest.mark.parametrize("dtype, nbytes", [(torch.float32, 4), (torch.bfloat16, 2)])
def test_bytes_per_token_is_exactly_the_gqa_formula(dtype, nbytes):
    cache = PagedKVCache(CFG, num_blocks=10, block_size=8, dtype=dtype)
    theory = 2 * CFG.num_hidden_layers * CFG.num_key_value_heads * CFG.head_dim * nbytes
    assert cache.bytes_per_token == theory == CFG.kv_bytes_per_token(nbytes)
    assert cache.capacity_tokens == 80


def test_blocks_are_reserved_taken_freed_and_reused():
    cache = PagedKVCache(CFG, num_blocks=6, block_size=4)
    a = SequenceBlocks(cache, budget_tokens=10)  # 3 blocks reserved, none taken yet
    assert (cache.reserved, cache.blocks_used) == (3, 0)
    a.ensure(5)
    assert a.blocks == [0, 1] and cache.blocks_used == 2 and cache.reserved == 1
    b = SequenceBlocks(cache, budget_tokens=12)
    assert not cache.can_reserve(1)  # 3 + 3 blocks promised out of 6
    b.ensure(4)
    a.ensure(10)
    assert a.blocks == [0, 1, 3] and not a.contiguous and b.blocks == [2]
    with pytest.raises(RuntimeError, match="budget"):
        a.ensure(13)
    a.free()
    a.free()  # idempotent
    assert cache.blocks_used == 1 and cache.reserved == 2
    c = SequenceBlocks(cache, budget_tokens=8)
    c.ensure(8)
    assert c.blocks == [0, 1]  # the freed blocks come back, lowest first
    assert c.slot(5) == 1 * 4 + 1
    assert c.slots(3, 6).tolist() == [3, 4, 5]


def test_request_larger_than_cache_is_refused_clearly():
    cache = PagedKVCache(CFG, num_blocks=4, block_size=8)
    cache.check_fits(32)
    with pytest.raises(CacheFullError, match=r"needs 33 tokens.*holds 32 tokens") as e:
        cache.check_fits(33)
    assert isinstance(e.value, PuyuError)
    with pytest.raises(PuyuError):
        PagedKVCache(CFG, num_blocks=0)


def _fill(cache, seq, k_all, v_all, upto):
    """Write keys/values for positions [0, upto) of one sequence through a prefill hook."""
    hook = AttentionBatch.prefill(cache, seq, 0, upto)
    H = CFG.num_attention_heads
    q = torch.randn(1, H, upto, CFG.head_dim)
    for layer in range(CFG.num_hidden_layers):
        hook.attend(layer, q, k_all[layer][None, :, :upto], v_all[layer][None, :, :upto])


def test_prefill_chunks_and_ragged_decode_match_reference():
    torch.manual_seed(0)
    L, H, K, D = CFG.num_hidden_layers, CFG.num_attention_heads, CFG.num_key_value_heads, CFG.head_dim
    cache = PagedKVCache(CFG, num_blocks=16, block_size=4)
    lens = [13, 6]
    kv = [(torch.randn(L, K, n + 1, D), torch.randn(L, K, n + 1, D)) for n in lens]
    seqs = [SequenceBlocks(cache, n + 1) for n in lens]
    # Interleave allocation so both block tables are fragmented.
    for step in range(1, 14):
        for s, n in zip(seqs, lens):
            s.ensure(min(step, n))
    assert not seqs[0].contiguous
    # Prefill sequence 0 in two chunks (the second with a mask), checking the chunk's output.
    k0, v0 = kv[0]
    _fill(cache, seqs[0], k0, v0, 5)
    hook = AttentionBatch.prefill(cache, seqs[0], 5, 8)
    q = torch.randn(1, H, 8, D)
    for layer in range(L):
        out = hook.attend(layer, q, k0[layer][None, :, 5:13], v0[layer][None, :, 5:13])
        ref = reference_attention(q[0], k0[layer][:, :13], v0[layer][:, :13], torch.arange(5, 13))
        torch.testing.assert_close(out[0], ref, atol=1e-5, rtol=1e-5)
    _fill(cache, seqs[1], *kv[1], 6)
    # Ragged decode: one new token each at positions 13 and 6.
    hook = AttentionBatch.decode(cache, seqs, [13, 6])
    assert hook.mask is not None
    q = torch.randn(2, H, 1, D)
    for layer in range(L):
        out = hook.attend(layer, q, torch.stack([kv[0][0][layer][:, 13:14], kv[1][0][layer][:, 6:7]]),
                          torch.stack([kv[0][1][layer][:, 13:14], kv[1][1][layer][:, 6:7]]))
        for b, n in enumerate(lens):
            k_all, v_all = kv[b][0][layer], kv[b][1][layer]
            ref = reference_attention(q[b], k_all, v_all, torch.tensor([n]))
            torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=1e-5)


def test_contiguous_sequence_is_read_without_gather():
    cache = PagedKVCache(CFG, num_blocks=8, block_size=4)
    s = SequenceBlocks(cache, 20)
    assert AttentionBatch.prefill(cache, s, 0, 6).fresh  # nothing cached yet: nothing to read
    hook = AttentionBatch.prefill(cache, s, 6, 4)
    assert s.contiguous and hook.span == (0, 3) and hook.table is None


def test_chunk_shrinks_to_bound_the_mask():
    assert max_chunk_for(0, 2048, 1 << 30) == 2048
    t = max_chunk_for(200_000, 2048, 64 << 20)
    assert 16 <= t < 2048 and t * (200_000 + t) * 4 <= 64 << 20
    assert max_chunk_for(10**9, 2048, 1) == 16  # always progresses


def test_packed_prefill_attends_within_each_prompt_and_fills_the_cache():
    torch.manual_seed(1)
    L, H, K, D = CFG.num_hidden_layers, CFG.num_attention_heads, CFG.num_key_value_heads, CFG.head_dim
    cache = PagedKVCache(CFG, num_blocks=8, block_size=4)
    lens = [3, 6]
    seqs = [SequenceBlocks(cache, n + 1) for n in lens]
    kv = [(torch.randn(L, K, n + 1, D), torch.randn(L, K, n + 1, D)) for n in lens]
    hook = AttentionBatch.packed(cache, seqs, lens)
    q = torch.randn(1, H, sum(lens), D)
    for layer in range(L):
        k = torch.cat([kv[b][0][layer][:, :n] for b, n in enumerate(lens)], dim=1)[None]  # [1, K, 9, D]
        v = torch.cat([kv[b][1][layer][:, :n] for b, n in enumerate(lens)], dim=1)[None]
        out = hook.attend(layer, q, k, v)[0]
        for b, (lo, n) in enumerate(zip([0, 3], lens)):
            ref = reference_attention(q[0][:, lo:lo + n], kv[b][0][layer][:, :n], kv[b][1][layer][:, :n],
                                      torch.arange(n))
            torch.testing.assert_close(out[:, lo:lo + n], ref, atol=1e-5, rtol=1e-5)
    # The cache now holds both prompts: a decode step reads them back.
    hook = AttentionBatch.decode(cache, seqs, lens)
    q = torch.randn(2, H, 1, D)
    for layer in range(L):
        out = hook.attend(layer, q, torch.stack([kv[b][0][layer][:, n:n + 1] for b, n in enumerate(lens)]),
                          torch.stack([kv[b][1][layer][:, n:n + 1] for b, n in enumerate(lens)]))
        for b, n in enumerate(lens):
            ref = reference_attention(q[b], kv[b][0][layer], kv[b][1][layer], torch.tensor([n]))
            torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=1e-5)


def test_prefix_blocks_are_registered_found_adopted_kept_and_evicted():
    cache = PagedKVCache(CFG, num_blocks=6, block_size=4)
    tokens = list(range(10, 20))  # 10 tokens: 2 full blocks
    keys = cache.prefix_keys(tokens, None)
    assert len(keys) == 2 and keys[1][1] == keys[0][0]  # each key chains its parent's
    assert cache.prefix_keys(tokens + [7] * 6, None, known=keys) == cache.prefix_keys(tokens + [7] * 6, None)
    a = SequenceBlocks(cache, budget_tokens=12)
    a.ensure(10)
    assert cache.lookup(keys) == []  # nothing registered yet
    a.register(keys)
    assert cache.lookup(keys) == a.blocks[:2]
    assert cache.lookup(cache.prefix_keys(tokens, 20000.0)) == []  # another RoPE base: other keys/values
    assert cache.lookup(cache.prefix_keys(tokens[:4] + [99] + tokens[5:], None)) == a.blocks[:1]
    a.free()
    assert (cache.blocks_used, cache.blocks_kept, cache.blocks_free) == (0, 2, 6)  # kept, and free capacity
    hits = cache.lookup(keys)
    b = SequenceBlocks(cache, budget_tokens=16, prefix=hits)  # adopts 2, reserves 2 more
    assert b.blocks == hits and cache.blocks_kept == 0 and cache.reserved == 2 and cache.blocks_used == 2
    c = SequenceBlocks(cache, budget_tokens=8, prefix=hits[:1])  # a shared block: two holders
    c.free()
    assert cache.blocks_used == 2  # still held by b
    b.free()
    assert cache.blocks_kept == 2 and cache.reserved == 0
    # Pressure: a sequence needing every block evicts the kept prefixes, which are forgotten.
    d = SequenceBlocks(cache, budget_tokens=24)
    d.ensure(24)
    assert sorted(d.blocks) == list(range(6)) and cache.lookup(keys) == []
    d.free()
    assert (cache.blocks_used, cache.blocks_kept, cache.blocks_free) == (0, 0, 6)


def test_adopting_more_than_fits_is_refused_without_side_effects():
    cache = PagedKVCache(CFG, num_blocks=3, block_size=4)
    a = SequenceBlocks(cache, budget_tokens=8)
    a.ensure(8)
    keys = cache.prefix_keys(list(range(8)), None)
    a.register(keys)
    a.free()
    other = SequenceBlocks(cache, budget_tokens=4)  # 1 of 3 blocks reserved
    with pytest.raises(PuyuError, match="cannot reserve"):
        SequenceBlocks(cache, budget_tokens=16, prefix=cache.lookup(keys))  # 2 adopted + 2 new > 2 left
    assert cache.blocks_kept == 2 and cache.reserved == 1  # nothing held by the refused sequence
    other.free()
