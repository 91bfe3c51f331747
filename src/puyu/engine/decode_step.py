"""The engine's decode forward: one new token for each of B sequences, in as few tensor ops as possible.

`InternLM2ForCausalLM.forward` is written for every case (training, packed documents, prefill chunks);
at decode time (T = 1, keys in the paged cache) much of it is bookkeeping whose fixed per-op cost
dominates a small model. `DecodeStep` computes the same function in fewer ops (a nano decode step: 220
aten ops instead of 336, counted with a TorchDispatchMode):
- `F.rms_norm` (one fused op) when computing in float32; the model's own `RMSNorm` otherwise;
- RoPE on the query and key slots of the packed `wqkv` output at once, as
  `x * cos + roll(x, D/2) * sin_signed` (sin_signed = [-sin_lo, sin_hi]: bit-identical to rotate-half);
- keys/values stored and attended through the step's `AttentionBatch.attend` (the same cache hook the
  model's own forward uses);
- the residual additions fused into the output projections (`torch.addmm`).

Large matrix-vector products are split by rows across cores. PyTorch's CPU matrix-vector product runs
on one core (measured on this 2-core machine: 23 GB/s for 1 or 2 intra-op threads, against 50-80 GB/s
for a 2-thread reduction over the same bytes), so a weight-bound decode would leave most of the memory
bandwidth unused. For weights of at least `split_bytes` and at most `split_rows` rows of input, W's rows
are cut into one block per thread: with 1-2 input rows as one `torch.bmm` over the blocks against a
stride-0 batch of x (torch runs the blocks in parallel: ~63 GB/s), else as slices multiplied by a small
pool of Python threads (torch releases the GIL inside the kernel) and joined. Small weights stay in one
call: the hand-off costs tens of µs.

Weights are read from the model's modules at every call (never copied), so a model updated in place (RL
rollouts between optimizer steps) is decoded with its current weights. `tests/test_decode_step.py` checks the
logits against the model's generic forward over ragged batches, GQA ratios, biases and RoPE scalings.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch.nn.modules import module as _torch_module

from puyu.engine.kv_cache import AttentionBatch, PagedKVCache, SequenceBlocks
from puyu.model.rope import batch_base, cos_sin


class HookWatch:
    """`watch()` -> True while any forward hook is registered on one of `modules` (or globally): the
    streamlined steps do not call the modules' forwards, so the engine then uses the model's own forward.
    The modules are not walked at every call: their hook dicts are collected once (torch registers a hook
    by inserting into the module's own dict, never by replacing it), so a check is one pass over those
    dicts (~1 µs for a nano model against ~20 µs for the walk, measured on the shared 2-core Sapphire
    Rapids VM, AVX-512). Modules added to the model after construction are not watched."""

    def __init__(self, modules):
        self._dicts = [d for m in modules for d in (m._forward_hooks, m._forward_pre_hooks)]

    def __call__(self) -> bool:
        return bool(_torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks
                    or any(self._dicts))


class RowSplitter:
    """`linear(x, W, b)` with W's rows split across threads for large W and few input rows."""

    def __init__(self, threads: int | None = None, split_bytes: int = 4 << 20, split_rows: int = 16):
        self.threads = threads or torch.get_num_threads()
        self.split_bytes, self.split_rows = split_bytes, split_rows
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="puyu-matvec",
                                                initializer=torch.set_num_threads, initargs=(1,))
            return self._pool

    def wants(self, x: torch.Tensor, w: torch.Tensor) -> bool:
        return (self.threads > 1 and x.device.type == "cpu" and x.shape[0] <= self.split_rows
                and w.nbytes >= self.split_bytes and w.shape[0] >= 64 * self.threads)

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C_in], w [C_out, C_in] -> [B, C_out]."""
        if not self.wants(x, w):
            return F.linear(x, w, b)
        n, parts = w.shape[0], self.threads
        m, k = x.shape
        if m <= 2 and n % parts == 0 and w.is_contiguous():
            # One batched product over `parts` row blocks of W against the same x (a stride-0 batch):
            # torch runs the blocks' matrix-vector products in parallel, one per core (~63 GB/s here,
            # against ~44 GB/s for the Python-thread split below and 23 GB/s for one F.linear).
            y = torch.bmm(w.view(parts, n // parts, k), x.t().unsqueeze(0).expand(parts, k, m))  # [P, n/P, m]
            y = y.permute(2, 0, 1).reshape(m, n)
            return y if b is None else y + b
        edges = [(n * i // parts) // 16 * 16 for i in range(parts)] + [n]
        pieces = [(edges[i], edges[i + 1]) for i in range(parts)]

        def run(span):
            lo, hi = span
            return F.linear(x, w[lo:hi], None if b is None else b[lo:hi])

        # Grad and inference modes are per thread: the workers take the caller's.
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def work(span):
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return run(span)

        pool = self._executor()
        futures = [pool.submit(work, s) for s in pieces[1:]]
        own = torch.get_num_threads()  # every slice on one core: the slices are the parallelism
        torch.set_num_threads(1)
        try:
            first = run(pieces[0])
        finally:
            torch.set_num_threads(own)
        return torch.cat([first] + [f.result() for f in futures], dim=-1)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None


class DecodeStep:
    """`step(tokens [B], positions [B], hook, base) -> logits [B, V]` for an `InternLM2ForCausalLM`.

    `hook` is the `AttentionBatch.decode(...)` of the step (slots, block tables, padding mask); `base`
    a float, None (the config's base), or a [B] tensor of per-request RoPE bases."""

    def __init__(self, model, splitter: RowSplitter | None = None):
        self.model, self.cfg = model, model.config
        self.splitter = splitter or RowSplitter()
        self.layers = list(model.model.layers)
        self.hooked = HookWatch(model.modules())  # hooked() -> True while forward hooks are registered

    @staticmethod
    def supports(model) -> bool:
        """True for puyu's own causal LM (the layout this step reads); other modules use their forward."""
        from puyu.model.transformer import InternLM2ForCausalLM

        return isinstance(model, InternLM2ForCausalLM)

    def _norm(self, module, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, module.weight.shape, module.weight, module.eps)
        return module(x)

    def _residual(self, x: torch.Tensor, a: torch.Tensor, lin) -> torch.Tensor:
        """x + lin(a), the addition fused into the matrix product when it runs as one call."""
        w = lin.weight
        if lin.bias is None and not self.splitter.wants(a, w):
            return torch.addmm(x, a, w.t())
        return x + self.splitter.linear(a, w, lin.bias)

    @torch.inference_mode()
    def run(self, cache: PagedKVCache, seqs: list[SequenceBlocks], tokens: list[int], positions: list[int],
            bases: list[float | None]) -> torch.Tensor:
        """One token per sequence: tokens[b] at positions[b] (keys 0..positions[b]) -> logits [B, V]."""
        device = cache.device
        hook = AttentionBatch.decode(cache, seqs, positions)
        return self(torch.tensor(tokens, device=device), torch.tensor(positions, device=device), hook,
                    batch_base(bases, device))

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, hook: AttentionBatch,
                 base: float | torch.Tensor | None) -> torch.Tensor:
        cfg, lin = self.cfg, self.splitter.linear
        B = tokens.shape[0]
        K, n_rep, D = cfg.num_key_value_heads, cfg.n_rep, cfg.head_dim
        H = K * n_rep
        x = F.embedding(tokens, self.model.model.tok_embeddings.weight)  # [B, C]
        cos, sin = cos_sin(cfg, positions[:, None], base)  # [B, 1, D] float32
        half = D // 2
        cos = cos.view(B, 1, 1, D)
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).view(B, 1, 1, D)
        for i, layer in enumerate(self.layers):
            att = layer.attention
            h = self._norm(layer.attention_norm, x)
            qkv = lin(h, att.wqkv.weight, att.wqkv.bias).view(B, K, n_rep + 2, D)
            qk = qkv[:, :, :n_rep + 1]  # queries and key of each group: [B, K, n_rep + 1, D]
            xf = qk.float()
            rot = (xf * cos).addcmul_(xf.roll(half, dims=-1), sin).to(qkv.dtype)  # [B, K, n_rep + 1, D]
            q = rot[:, :, :n_rep].reshape(B, H, 1, D)
            out = hook.attend(i, q, rot[:, :, n_rep, None], qkv[:, :, n_rep + 1, None])  # [B, H, 1, D]
            x = self._residual(x, out.view(B, H * D), att.wo)
            h = self._norm(layer.ffn_norm, x)
            ff = layer.feed_forward
            gate = F.silu(lin(h, ff.w1.weight)).mul_(lin(h, ff.w3.weight))
            x = self._residual(x, gate, ff.w2)
        x = self._norm(self.model.model.norm, x)
        return lin(x, self.model.output.weight).float()  # [B, V]

    def close(self) -> None:
        self.splitter.close()
