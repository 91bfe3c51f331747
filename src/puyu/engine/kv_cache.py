"""Paged key/value cache for the engine.

Storage is one preallocated pool per K and V of shape [layers, blocks, block_size, K, D]: only the K
key/value heads of grouped-query attention are stored, so a cached token costs exactly
`2 * layers * K * D * element_bytes` (`PagedKVCache.bytes_per_token`). Each sequence owns a list of
blocks (its block table) taken from a free list; finished or cancelled sequences give their blocks
back at once and the next sequence reuses them.

Admission is by reservation: a sequence reserves the blocks for its whole budget (prompt +
max_new_tokens) up front, but takes them from the pool only as tokens arrive. A running sequence can
therefore never find the pool empty (no preemption, no out-of-memory mid-generation), while
`blocks_used` shows what is really filled. A budget larger than the whole pool is refused with a
clear error; the pool's memory is not touched until blocks are first used, so the process's resident
size grows with the tokens actually cached.

KV formats (`kv`, `puyu.model.quant` "the KV cache's formats"): the pools hold float32 (`f32`), bfloat16
(`bf16`) or int8 (`int8`) elements; int8 adds one float32 scale per token and kv head in `k_scale` /
`v_scale` [layers, blocks, block_size, K], so a token costs `2 * layers * K * (D + 4)` bytes. Keys and
values are quantized when they are stored (`AttentionBatch.attend` here, `rope_and_store` in the native
kernel: the same rounding, bit for bit) and dequantized to the compute dtype when read. Every attention
reads the stored values, the new tokens' own keys included (a fresh prefill attends to the stored round
trip of its keys, not to the exact ones), so every path (native kernel, `DecodeStep`, the model's forward,
packed or chunked prefill) computes attention over the same numbers and a prompt's logits do not depend on
how it was chunked.

Prefix reuse. A full block of a sequence's tokens can be registered under a key that chains the keys
of all blocks before it, the block's tokens and the RoPE base the keys were rotated with
(`prefix_keys`): the same key means the same keys and values. A later sequence whose prompt starts with
the same tokens under the same base `lookup`s those blocks and adopts them (a reference count per block)
instead of computing them again. A registered block whose last reference is released is not freed but
kept, evictable, in least-recently-used order: `take` uses never-registered free blocks first, then
evicts the oldest kept prefix. Kept blocks count as free capacity (`blocks_free`, `can_reserve`), not as
used. Shared blocks are full and never written again: a sequence only writes past its prompt's shared
part.

`AttentionBatch` is the model's `cache` hook for one forward: it writes the new keys/values of each
layer into their slots, reads back each sequence's keys/values (a view when the sequence's blocks are
contiguous, else a gather through the block table) and runs `scaled_dot_product_attention` with a mask
for the causal part of a prefill chunk and for padding in a batched decode. The mask is the only
[T, S] tensor; the engine bounds T * S (see `max_chunk_for`) so a 200K-token prompt never builds a
T x T or [heads, T, S] score matrix.

Shapes: L layers, N blocks, P block_size, B sequences, T new tokens, S keys, H/K heads, D head dim.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

from puyu.errors import PuyuError
from puyu.model.config import ModelConfig
from puyu.model.quant import check_kv_format, dequantize_kv, quantize_kv

_KV_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


def kv_format_of(dtype: torch.dtype) -> str:
    """The KV format that stores `dtype` as it is (the default: the model's own dtype)."""
    return {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}.get(dtype, str(dtype))


class CacheFullError(PuyuError):
    """A request whose token budget exceeds the whole cache: it could never run."""


class PagedKVCache:
    """The block pool: storage, a free list (lowest id first, so a lone long sequence gets contiguous
    blocks and is read without a gather) and the reservation count.

    dtype: the compute dtype (of the model's activations and the attention masks); kv: the stored format,
    "f32", "bf16" or "int8" (module docstring), None = `dtype` itself (float16 too)."""

    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int = 32,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", kv: str | None = None):
        if num_blocks < 1 or block_size < 1:
            raise PuyuError(f"the KV cache needs at least one block of at least one token "
                            f"(got {num_blocks} blocks of {block_size})")
        if kv is not None:
            check_kv_format(kv)
        self.cfg, self.num_blocks, self.block_size = cfg, num_blocks, block_size
        self.dtype, self.device = dtype, torch.device(device)
        self.format = kv if kv is not None else kv_format_of(dtype)
        store = _KV_DTYPES[kv] if kv is not None else dtype
        L, K, D = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
        shape = (L, num_blocks, block_size, K, D)
        # torch.empty: pages are only touched (and counted in RSS) when a block is first used.
        self.k = torch.empty(shape, dtype=store, device=self.device)  # [L, N, P, K, D]
        self.v = torch.empty(shape, dtype=store, device=self.device)  # [L, N, P, K, D]
        self.k_scale = self.v_scale = None
        if self.format == "int8":
            self.k_scale = torch.empty(shape[:-1], dtype=torch.float32, device=self.device)  # [L, N, P, K]
            self.v_scale = torch.empty(shape[:-1], dtype=torch.float32, device=self.device)  # [L, N, P, K]
        self._free = list(range(num_blocks))  # a heap of blocks holding nothing worth keeping
        self.reserved = 0  # blocks promised to sequences but not taken yet
        self._refs = [0] * num_blocks  # sequences holding each block
        self._index: dict[int, int] = {}  # prefix key -> block
        self._key_of: dict[int, tuple] = {}  # block -> (key, parent key, base, tokens) of its prefix
        self._kept: OrderedDict[int, None] = OrderedDict()  # registered blocks nobody holds, oldest first

    # ---- sizes -----------------------------------------------------------------------------------
    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def bytes_per_token(self) -> int:
        """Bytes of K and V storage (int8: scales included) per cached token, from the tensors themselves."""
        scales = 0 if self.k_scale is None else self.k_scale.nbytes + self.v_scale.nbytes
        return (self.k.nbytes + self.v.nbytes + scales) // self.capacity_tokens

    @property
    def quantized(self) -> bool:
        """Whether stored keys/values differ from the compute dtype's (a round trip changes them)."""
        return self.k.dtype != self.dtype

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """New keys or values [..., D] -> (stored elements [..., D], int8 scales [...] or None)."""
        if self.format == "int8":
            return quantize_kv(x)
        return x.to(self.k.dtype), None

    def decode(self, stored: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
        """Stored elements [..., D] (and scales [...]) -> values in the compute dtype [..., D]."""
        if scales is not None:
            return dequantize_kv(stored, scales).to(self.dtype)
        return stored.to(self.dtype)

    @property
    def blocks_free(self) -> int:
        """Blocks that can be taken: empty ones and kept prefixes nobody holds."""
        return len(self._free) + len(self._kept)

    @property
    def blocks_used(self) -> int:
        """Blocks held by live sequences."""
        return self.num_blocks - self.blocks_free

    @property
    def blocks_kept(self) -> int:
        """Registered prefix blocks nobody holds (reusable until evicted)."""
        return len(self._kept)

    def blocks_for(self, tokens: int) -> int:
        return max(1, math.ceil(tokens / self.block_size))

    # ---- reservation and allocation ----------------------------------------------------------------
    def check_fits(self, tokens: int) -> None:
        """Raise CacheFullError when `tokens` could never be cached, even in an empty pool."""
        if self.blocks_for(tokens) > self.num_blocks:
            raise CacheFullError(
                f"request needs {tokens} tokens of KV cache (prompt + max_new_tokens) but the whole cache "
                f"holds {self.capacity_tokens} tokens ({self.num_blocks} blocks of {self.block_size}); "
                f"shorten the prompt, lower max_new_tokens, or give the engine a larger cache_tokens/cache_bytes")

    def can_reserve(self, blocks: int) -> bool:
        return blocks <= self.blocks_free - self.reserved

    def can_admit(self, budget_tokens: int, prefix: list[int] = ()) -> bool:
        """Whether a sequence of `budget_tokens` adopting the `prefix` blocks fits now: its new blocks, plus
        the adopted blocks that were kept free (adopting them takes them out of the free pool)."""
        return self.can_reserve(self.blocks_for(budget_tokens) - len(prefix) + self.adopt_cost(prefix))

    def reserve(self, blocks: int) -> None:
        if not self.can_reserve(blocks):
            raise PuyuError(f"cannot reserve {blocks} blocks: {self.blocks_free - self.reserved} unreserved")
        self.reserved += blocks

    def take(self) -> int:
        """One reserved block (an empty one, else the oldest kept prefix, which is forgotten), zeroed so
        that masked padding never multiplies stale NaN/inf."""
        if self.reserved <= 0:
            raise RuntimeError("take() without a reservation")
        self.reserved -= 1
        if self._free:
            block = heapq.heappop(self._free)
        else:
            block, _ = self._kept.popitem(last=False)
            self._forget(block)
        self._refs[block] = 1
        self.k[:, block].zero_()
        self.v[:, block].zero_()
        if self.k_scale is not None:
            self.k_scale[:, block].zero_()
            self.v_scale[:, block].zero_()
        return block

    def release(self, blocks: list[int], unused_reservation: int) -> None:
        for b in blocks:
            self._refs[b] -= 1
            if self._refs[b] == 0:
                if b in self._key_of:
                    self._kept[b] = None  # newest at the end
                else:
                    heapq.heappush(self._free, b)
        self.reserved -= unused_reservation

    # ---- prefix reuse ----------------------------------------------------------------------------
    def prefix_keys(self, tokens: list[int], base: float | None, known: list[tuple] = ()) -> list[tuple]:
        """(key, parent key, base, block tokens) for each full block of `tokens`; `known`: the keys of its
        first blocks, already computed (they are kept and the chain goes on from the last)."""
        P, out = self.block_size, list(known)
        parent = out[-1][0] if out else 0
        for i in range(len(out), len(tokens) // P):
            block = tuple(tokens[i * P:(i + 1) * P])
            key = hash((parent, base, block))
            out.append((key, parent, base, block))
            parent = key
        return out

    def lookup(self, keys: list[tuple]) -> list[int]:
        """Blocks holding the longest registered run of `keys` from the first."""
        hits = []
        for entry in keys:
            b = self._index.get(entry[0])
            if b is None or self._key_of.get(b) != entry:  # the full entry guards against hash collisions
                break
            hits.append(b)
        return hits

    def adopt_cost(self, blocks: list[int]) -> int:
        """Free capacity that adopting `blocks` uses up: those that are kept but held by nobody."""
        return sum(1 for b in blocks if self._refs[b] == 0)

    def register(self, blocks: list[int], keys: list[tuple]) -> None:
        """Make full blocks findable by their prefix keys (a block or key already registered is left)."""
        for b, entry in zip(blocks, keys):
            if entry[0] in self._index or b in self._key_of:
                continue
            self._index[entry[0]] = b
            self._key_of[b] = entry

    def forget_prefixes(self) -> int:
        """Unregister every prefix block (held ones stay with their sequences; kept ones become free).
        -> the number of blocks unregistered. Used when the weights that computed them have changed."""
        n = len(self._key_of)
        for b in list(self._key_of):
            self._forget(b)
        while self._kept:
            b, _ = self._kept.popitem(last=False)
            heapq.heappush(self._free, b)
        return n

    def _forget(self, block: int) -> None:
        entry = self._key_of.pop(block, None)
        if entry is not None and self._index.get(entry[0]) == block:
            del self._index[entry[0]]

    def _hold(self, block: int) -> None:
        if self._refs[block] == 0:
            self._kept.pop(block, None)
        self._refs[block] += 1


class SequenceBlocks:
    """One sequence's block table. Reserves `budget_tokens` worth of blocks on creation (less the
    `prefix` blocks it adopts: registered blocks holding its first tokens); `ensure(n)` takes blocks
    until `n` tokens fit; `free()` returns everything (idempotent)."""

    def __init__(self, cache: PagedKVCache, budget_tokens: int, prefix: list[int] = ()):
        self.cache = cache
        self.budget = cache.blocks_for(budget_tokens)
        prefix = list(prefix)
        if len(prefix) > self.budget:
            raise RuntimeError("a sequence cannot adopt more blocks than its budget")
        if not cache.can_admit(budget_tokens, prefix):
            raise PuyuError(f"cannot reserve {self.budget - len(prefix)} blocks and adopt {len(prefix)}: "
                            f"{cache.blocks_free - cache.reserved} unreserved")
        for b in prefix:
            cache._hold(b)
        cache.reserve(self.budget - len(prefix))
        self.blocks: list[int] = []
        self.table = torch.zeros(self.budget, dtype=torch.long, device=cache.device)  # [budget]
        self.contiguous = True
        self.freed = False
        for b in prefix:
            self._append(b)

    def _append(self, b: int) -> None:
        if not self.blocks:
            self.table.fill_(b)  # padding entries point at a real block of this sequence
        elif b != self.blocks[-1] + 1:
            self.contiguous = False
        self.table[len(self.blocks)] = b
        self.blocks.append(b)

    def ensure(self, tokens: int) -> None:
        P = self.cache.block_size
        while len(self.blocks) * P < tokens:
            if len(self.blocks) >= self.budget:
                raise RuntimeError(f"sequence exceeded its reserved budget of {self.budget} blocks")
            self._append(self.cache.take())

    def slot(self, pos: int) -> int:
        P = self.cache.block_size
        return self.blocks[pos // P] * P + pos % P

    def slots(self, start: int, end: int) -> torch.Tensor:
        """Flat slot indices (block * P + offset) of positions [start, end) -> [end - start]."""
        P = self.cache.block_size
        pos = torch.arange(start, end, device=self.cache.device)  # [T]
        return self.table[pos // P] * P + pos % P

    def free(self) -> None:
        if not self.freed:
            self.freed = True
            self.cache.release(self.blocks, self.budget - len(self.blocks))
            self.blocks = []

    def register(self, keys: list[tuple]) -> None:
        """Register this sequence's first len(keys) blocks (full, computed) for reuse."""
        self.cache.register(self.blocks[:len(keys)], keys)


def _padded(table: torch.Tensor, n: int) -> torch.Tensor:
    """The first n entries of a block table, padded with its first block when shorter -> [n]."""
    if table.shape[0] >= n:
        return table[:n]
    return torch.cat([table, table[:1].expand(n - table.shape[0])])


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.tensor(float("-inf"), dtype=dtype, device=allowed.device))


class AttentionBatch:
    """The `cache` hook for one forward: B sequences with T new tokens each (decode: T = 1; a prefill
    chunk: B = 1), or several fresh prompts packed into one row (`packed`).

    slots [B * T]: where the new keys/values go; seqs: their block tables; max_keys: keys of the
    longest sequence after this step; fresh: no earlier keys exist, so attention runs on the new keys
    alone (the cache is written, not read). Build with `prefill`, `packed` or `decode`."""

    def __init__(self, cache: PagedKVCache, seqs: list[SequenceBlocks], slots: torch.Tensor, max_keys: int,
                 mask: torch.Tensor | None, causal: bool, fresh: bool = False):
        self.cache, self.slots, self.S, self.mask, self.causal = cache, slots, max_keys, mask, causal
        self.fresh, self.span, self.table = fresh, None, None
        P = cache.block_size
        nb = math.ceil(max_keys / P)
        if fresh:
            pass
        elif len(seqs) == 1 and seqs[0].contiguous:
            self.span = (seqs[0].blocks[0], nb)  # read a view, no gather
        else:
            self.table = torch.stack([_padded(s.table, nb) for s in seqs]).reshape(-1)  # [B * nb]
        self.B, self.nb = len(seqs), nb

    @classmethod
    def prefill(cls, cache: PagedKVCache, seq: SequenceBlocks, start: int, length: int) -> AttentionBatch:
        """Positions [start, start + length) of one sequence whose first `start` tokens are cached."""
        end = start + length
        seq.ensure(end)
        if start == 0:
            return cls(cache, [seq], seq.slots(0, end), end, None, causal=True, fresh=True)
        q_pos = torch.arange(start, end, device=cache.device)[:, None]  # [T, 1]
        k_pos = torch.arange(end, device=cache.device)[None, :]  # [1, S]
        mask = _additive_mask(k_pos <= q_pos, cache.dtype)[None, None]  # [1, 1, T, S]
        return cls(cache, [seq], seq.slots(start, end), end, mask, causal=False)

    @classmethod
    def packed(cls, cache: PagedKVCache, seqs: list[SequenceBlocks], lengths: list[int]) -> AttentionBatch:
        """Whole prompts of several fresh sequences concatenated into one row of sum(lengths) tokens:
        each token attends causally within its own prompt (a block-diagonal causal mask)."""
        for s, n in zip(seqs, lengths):
            s.ensure(n)
        slots = torch.cat([s.slots(0, n) for s, n in zip(seqs, lengths)])  # [N]
        dev = cache.device
        doc = torch.repeat_interleave(torch.arange(len(lengths), device=dev), torch.tensor(lengths, device=dev))
        N = doc.shape[0]
        idx = torch.arange(N, device=dev)
        allowed = (doc[:, None] == doc[None, :]) & (idx[None, :] <= idx[:, None])  # [N, N]
        return cls(cache, seqs, slots, N, _additive_mask(allowed, cache.dtype)[None, None], causal=False,
                   fresh=True)

    @classmethod
    def decode(cls, cache: PagedKVCache, seqs: list[SequenceBlocks], positions: list[int]) -> AttentionBatch:
        """One new token per sequence, at `positions[b]` (its keys are positions 0..positions[b])."""
        for s, p in zip(seqs, positions):
            s.ensure(p + 1)
        slots = torch.tensor([s.slot(p) for s, p in zip(seqs, positions)], device=cache.device)  # [B]
        S = max(positions) + 1
        mask = None
        if min(positions) + 1 != S:  # ragged lengths: mask each row's padding
            lens = torch.tensor(positions, device=cache.device)[:, None] + 1  # [B, 1]
            k_pos = torch.arange(S, device=cache.device)[None, :]  # [1, S]
            mask = _additive_mask(k_pos < lens, cache.dtype)[:, None, None, :]  # [B, 1, 1, S]
        return cls(cache, seqs, slots, S, mask, causal=False)

    def _read(self, store: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """store [N, P, K, *rest] -> this batch's rows of keys [start, end) (default: all S) [B, K, end - start,
        *rest] (a strided view or a gather of just the blocks they lie in): keys or values (rest = D) or their
        int8 scales (no rest)."""
        P, K, rest = store.shape[1], store.shape[2], store.shape[3:]
        end = self.S if end is None else end
        b0, b1 = start // P, -(-end // P)  # the blocks holding keys [start, end)
        if self.span is not None:
            first, _ = self.span
            rows = store[first + b0:first + b1].reshape(1, (b1 - b0) * P, K, *rest)  # [1, S_pad, K, *rest] view
        else:
            table = self.table.view(self.B, self.nb)[:, b0:b1].reshape(-1)
            rows = store.index_select(0, table).view(self.B, (b1 - b0) * P, K, *rest)  # [B, S_pad, K, *rest]
        return rows[:, start - b0 * P:end - b0 * P].transpose(1, 2)  # [B, K, end - start, *rest]

    def _store(self, pool: torch.Tensor, scales: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """Write x [B, K, T, D] into this batch's slots of one layer's pool [N, P, K, D] (and scales [N, P, K])
        -> x as stored and read back (its round trip through the format) [B, K, T, D]."""
        B, K, T, D = x.shape
        rows = x.transpose(1, 2).reshape(B * T, K, D)  # [B*T, K, D]
        data, s = self.cache.encode(rows)
        pool.view(-1, K, D).index_copy_(0, self.slots, data)
        if s is not None:
            scales.view(-1, K).index_copy_(0, self.slots, s)
        if not self.cache.quantized:
            return x
        return self.cache.decode(data, s).view(B, T, K, D).transpose(1, 2)

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, H, T, D], k/v [B, K, T, D] (RoPE applied) -> [B, H, T, D]."""
        c = self.cache
        ks, vs = c.k[layer_idx], c.v[layer_idx]  # [N, P, K, D]
        kss = c.k_scale[layer_idx] if c.k_scale is not None else None  # [N, P, K]
        vss = c.v_scale[layer_idx] if c.v_scale is not None else None
        k, v = self._store(ks, kss, k), self._store(vs, vss, v)
        if self.fresh:
            keys, values = k, v  # [B, K, T, D]: nothing earlier to attend to
        elif not c.quantized:
            keys, values = self._read(ks), self._read(vs)  # [B, K, S, D]
        else:
            return self._attend_stored(q, ks, vs, kss, vss)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=self.mask, is_causal=self.causal,
                                              enable_gqa=True)  # [B, H, T, D]

    def _attend_stored(self, q: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor, kss: torch.Tensor | None,
                       vss: torch.Tensor | None) -> torch.Tensor:
        """Attention of q [B, H, T, D] over a bf16 or int8 cache ([N, P, K, D] pools, [N, P, K] int8 scales),
        reading it in chunks of keys: each chunk is converted to float32 (the same numbers as the whole
        cache's dequantization), scored, and folded into a running softmax (max m, sum, output o rescaled by
        exp(m_old - m_new)), so the temporaries are bounded by `STORED_CHUNK_BYTES` (keys + values + scores of
        a chunk) instead of two float copies of every cached key and value (~0.8 GiB per layer per call for a
        7B-shaped model at 200K tokens). Computed in float32, returned in q's dtype -> [B, H, T, D]."""
        c = self.cache
        B, H, T, D = q.shape
        K = ks.shape[2]
        n_rep, P = H // K, c.block_size
        per_key = 4 * (2 * B * K * D + 2 * B * H * T)  # float32 bytes a key costs a chunk
        chunk = max(P, STORED_CHUNK_BYTES // per_key // P * P)
        qg = q.float().reshape(B, K, n_rep * T, D)  # head h = g * n_rep + r reads kv head g
        m = torch.full((B, K, n_rep * T, 1), float("-inf"), device=q.device)
        total = torch.zeros(B, K, n_rep * T, 1, device=q.device)
        o = torch.zeros(B, K, n_rep * T, D, device=q.device)
        scale = 1.0 / math.sqrt(D)
        for s0 in range(0, self.S, chunk):
            s1 = min(self.S, s0 + chunk)
            keys = _as_float(self._read(ks, s0, s1), None if kss is None else self._read(kss, s0, s1))  # [B, K, n, D]
            values = _as_float(self._read(vs, s0, s1), None if vss is None else self._read(vss, s0, s1))
            sc = torch.matmul(qg, keys.transpose(-1, -2)).mul_(scale)  # [B, K, n_rep * T, n]
            if self.mask is not None:  # [B or 1, 1, T, S] -> [B or 1, 1, 1, T, n]
                sc = sc.view(B, K, n_rep, T, s1 - s0).add_(self.mask[..., s0:s1].float()[:, :, None])
                sc = sc.view(B, K, n_rep * T, s1 - s0)
            m_new = torch.maximum(m, sc.amax(-1, keepdim=True))
            base = torch.where(m_new == float("-inf"), 0.0, m_new)  # a row masked so far: exp(-inf) = 0, no NaN
            p = sc.sub_(base).exp_()
            alpha = (m - base).exp_()
            total = total.mul_(alpha).add_(p.sum(-1, keepdim=True))
            o = o.mul_(alpha).add_(torch.matmul(p, values))
            m = m_new
        return o.div_(total).view(B, H, T, D).to(q.dtype)


# Bytes of float32 temporaries (a chunk's keys, values, scores and probabilities) of attention over a bf16 or
# int8 cache through PyTorch (`AttentionBatch._attend_stored`).
STORED_CHUNK_BYTES = 64 << 20


def _as_float(stored: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
    """Stored keys or values [..., D] (int8 with scales [...], or bf16) as float32, the cache's own round trip."""
    return dequantize_kv(stored, scales) if scales is not None else stored.float()


def max_chunk_for(context: int, chunk: int, mask_bytes: int, dtype_bytes: int = 4) -> int:
    """The largest prefill chunk (<= `chunk`) whose [T, S] attention mask, S = context + T, stays
    within `mask_bytes`. At least 16 tokens, so progress is always made."""
    t = chunk
    while t > 16 and t * (context + t) * dtype_bytes > mask_bytes:
        t //= 2
    return max(min(t, chunk), 1)
