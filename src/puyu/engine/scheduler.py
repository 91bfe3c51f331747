"""The inference engine: paged KV cache, continuous batching, chunked prefill, sampling, streaming.

Everything that generates text (the terminal chat, the server, the agent, evaluation, RL rollouts)
consumes one stream per request: `Engine.submit(prompt, params)` returns a `RequestHandle` that yields
`StreamDelta(text, token_ids, finish_reason)` events; `generate` and `stream` are conveniences on top.

How a step runs (one background scheduler thread owns the model and the cache; other threads only put
work into its inbox, so submission and cancellation are thread-safe without locks around the model):
1. admit waiting requests first come first served while fewer than `max_batch_size` run and the cache
   can reserve each one's whole budget (prompt + max_new_tokens, see `puyu.engine.kv_cache`);
2. prefill: up to `prefill_chunk` prompt tokens, oldest request first. Short prompts not started yet
   are packed whole into one forward (`prefill_packed`, block-diagonal causal mask), so a burst of
   requests joins the decode batch in the same step; a long prompt goes in chunks (`prefill`) whose
   [T, S] mask is kept under `mask_bytes` by shrinking the chunk as the context grows, so a
   200K-token prompt never builds a T x T matrix. A request whose prompt is done samples its first
   token from the last position's logits;
3. decode: one forward for all running requests that have finished prefilling, each feeding its last
   token at its own position (`decode`), then one batched sampling call (`puyu.engine.sampling.sample`).
   For a float32 model on the CPU the forward is one native call (`puyu.engine.fused_decode`, which also takes
   short fresh prompts in step 2); elsewhere `puyu.engine.decode_step.DecodeStep` or the model's own forward.
Requests join and leave between steps; a finished or cancelled request frees its blocks at once.

Dynamic NTK (the rule this engine uses). With `rope_scaling = {"type": "dynamic", ...}` the RoPE base
depends on the sequence length, but keys already in the cache were rotated with the base in force when
they were written. So each request fixes its base once, at submission, from its whole budget:
    base = puyu.model.rope.dynamic_base(config, len(prompt) + max_new_tokens)
i.e. the base for the longest sequence the request may reach (equal to `rope_theta` while that stays
within `max_position_embeddings`). Every prefill chunk and decode step of the request uses that base, so
cached and freshly computed keys always agree, and the result equals a one-shot forward over the
whole sequence with `rope_base` pinned to the same value. Linear scaling needs no such rule.

Stopping: a request stops at the model's `eos_token_id` (unless `ignore_eos`), at any of its
`stop_token_ids` (the stop token is kept in `token_ids` but not in the text), at a stop string (matched
across token boundaries; the match is never emitted), at `max_new_tokens` ('length'), or when cancelled
('abort'). Prompts given as strings are encoded with `allow_special=True`: marker text in them becomes
special ids, which is right for a raw completion prompt written by its user and wrong for a chat whose
contents come from elsewhere; chats are submitted as ids from `puyu.model.chat_format.encode_chat`.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import queue
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import torch

from puyu.engine.decode_step import DecodeStep, RowSplitter
from puyu.engine.detokenize import IncrementalDetokenizer, StopStringMatcher
from puyu.engine.fused_decode import FusedDecode, FusedDecodeUnavailable
from puyu.engine.fused_decode import available as fused_available
from puyu.engine.kv_cache import AttentionBatch, PagedKVCache, SequenceBlocks, max_chunk_for
from puyu.engine.sampling import SamplingParams, make_generator, sample, token_logprobs
from puyu.errors import PuyuError
from puyu.model.quant import KV_FORMATS, QuantLinear, kv_bytes_per_token, model_format
from puyu.model.rope import batch_base, dynamic_base

log = logging.getLogger(__name__)


class EngineError(PuyuError):
    """The engine could not serve a request (bad prompt, engine closed, or a failure while running)."""


@dataclass
class StreamDelta:
    """One streamed event: new text, the token ids that produced it, and on the last event the
    finish reason ('stop' | 'length' | 'abort'; None before). `logprobs` parallels `token_ids`."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[float] | None = None


@dataclass
class GenerationResult:
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[float] | None = None


@dataclass
class _Request:
    id: int
    prompt: list[int]
    params: SamplingParams
    stop_ids: frozenset
    base: float | None
    budget: int  # tokens of cache reserved: prompt + max_new_tokens
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    done: threading.Event = field(default_factory=threading.Event)
    score: list | None = None  # prompt-logits requests collect [T, V] chunks here
    seq: SequenceBlocks | None = None
    computed: int = 0  # tokens whose keys/values are in the cache
    keys: list | None = None  # prefix keys of the prompt's full blocks (prefix reuse)
    epoch: int = -1  # the engine's weights epoch at admission (its blocks are registered only within it)
    output: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    detok: IncrementalDetokenizer | None = None
    stopper: StopStringMatcher | None = None
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None  # bool [V] for the repetition penalty
    result: GenerationResult | None = None
    error: BaseException | None = None


class RequestHandle:
    """A submitted request. Iterate it for `StreamDelta` events (the last has a finish_reason);
    `result()` waits for the whole `GenerationResult`; `cancel()` aborts and frees its cache."""

    def __init__(self, engine: Engine, req: _Request):
        self._engine, self._req = engine, req

    @property
    def prompt_token_ids(self) -> list[int]:
        return self._req.prompt

    @property
    def done(self) -> bool:
        return self._req.done.is_set()

    def __iter__(self) -> Iterator[StreamDelta]:
        while True:
            delta = self._req.events.get()
            if delta is None:  # the engine failed while serving this request
                raise EngineError(f"the engine failed: {self._req.error}") from self._req.error
            yield delta
            if delta.finish_reason is not None:
                return

    def result(self, timeout: float | None = None) -> GenerationResult:
        if not self._req.done.wait(timeout):
            raise TimeoutError(f"request {self._req.id} did not finish within {timeout} s")
        if self._req.error is not None:
            raise EngineError(f"the engine failed: {self._req.error}") from self._req.error
        return self._req.result

    def cancel(self) -> None:
        """Abort the request (finish_reason 'abort'); returns once its cache blocks are free."""
        self._engine._call(lambda: self._engine._finish(self._req, "abort"))


# ---- the two forward passes ---------------------------------------------------------------------------
@torch.inference_mode()
def prefill(model, cache: PagedKVCache, seq: SequenceBlocks, token_ids: list[int], start: int,
            base: float | None, all_logits: bool = False) -> torch.Tensor:
    """Run prompt tokens at positions [start, start + T) of one sequence whose first `start` tokens are
    cached; their keys/values are written to the cache. -> logits [1, V] of the last position, or [T, V]
    of every position with `all_logits` (float32)."""
    device = cache.device
    T = len(token_ids)
    ids = torch.tensor([token_ids], device=device)  # [1, T]
    pos = torch.arange(start, start + T, device=device)[None]  # [1, T]
    hook = AttentionBatch.prefill(cache, seq, start, T)
    hidden = model(ids, position_ids=pos, cache=hook, rope_base=base, return_hidden=True)  # [1, T, C]
    return model.output(hidden[0] if all_logits else hidden[0, -1:]).float()  # [T or 1, V]


@torch.inference_mode()
def prefill_packed(model, cache: PagedKVCache, seqs: list[SequenceBlocks], prompts: list[list[int]],
                   base: float | None) -> torch.Tensor:
    """Whole prompts of several fresh sequences (sharing one RoPE base) in one forward, packed into a
    single row with a block-diagonal causal mask -> logits [n, V] of each prompt's last position."""
    device = cache.device
    lengths = [len(p) for p in prompts]
    ids = torch.tensor([[t for p in prompts for t in p]], device=device)  # [1, N]
    pos = torch.cat([torch.arange(n, device=device) for n in lengths])[None]  # [1, N]
    hook = AttentionBatch.packed(cache, seqs, lengths)
    hidden = model(ids, position_ids=pos, cache=hook, rope_base=base, return_hidden=True)  # [1, N, C]
    last = torch.tensor(lengths, device=device).cumsum(0) - 1  # [n]
    return model.output(hidden[0, last]).float()  # [n, V]


@torch.inference_mode()
def decode(model, cache: PagedKVCache, seqs: list[SequenceBlocks], tokens: list[int], positions: list[int],
           bases: list[float | None], step: DecodeStep | FusedDecode | None = None,
           on_unavailable=None) -> torch.Tensor:
    """One token per sequence: tokens[b] at positions[b] (keys 0..positions[b]) -> logits [B, V].
    With `step` (a `DecodeStep` or `FusedDecode` of `model`) that streamlined forward runs, unless forward
    hooks are registered on the model; else the model's own forward. When the native kernel refuses the
    weights (they changed dtype/layout after the step was built), this call uses the forward and
    `on_unavailable(error)` is called (default: a warning)."""
    if step is not None and not step.hooked():
        try:
            return step.run(cache, seqs, tokens, positions, bases)  # [B, V]
        except FusedDecodeUnavailable as e:
            if on_unavailable is None:
                log.warning("fused decode step skipped: %s", e)
            else:
                on_unavailable(e)
    device = cache.device
    hook = AttentionBatch.decode(cache, seqs, positions)
    hidden = model(torch.tensor(tokens, device=device)[:, None], position_ids=torch.tensor(positions, device=device)[:, None],
                   cache=hook, rope_base=batch_base(bases, device), return_hidden=True)  # [B, 1, C]
    return model.output(hidden[:, 0]).float()  # [B, V]


FINGERPRINT_SAMPLES = 64  # values sampled per tensor (evenly strided) for the weights fingerprint


def weights_fingerprint(tensors: list[torch.Tensor]) -> tuple:
    """What identifies the values of `tensors` cheaply: each one's object identity, in-place version
    counter and data pointer, plus the bytes of `FINGERPRINT_SAMPLES` values read at an even stride
    (a numpy view on the CPU).

    The counters see every in-place op autograd tracks (`p.add_()`, `copy_`, `load_state_dict`, the
    default optimizers); the identity sees Parameters swapped on the module (`load_state_dict(...,
    assign=True)`); the sampled values see writes that bypass the counter and may reuse the same memory
    (fused optimizers, `p.data.add_()`, `model.to(bf16).to(fp32)`, numpy views) whenever they change
    any sampled value, which any dense update does. Blind only to a write that bypasses the counter and
    changes no sampled element (a targeted write to a few other entries): call
    `Engine.invalidate_prefix_cache()` after such a write."""
    ids = tuple((id(t), t._version, t.data_ptr()) for t in tensors)
    return ids, b"".join(_sampled_bytes(t) for t in tensors)


def _sampled_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of up to FINGERPRINT_SAMPLES values of `t` at an even stride (numpy views on the
    CPU: ~1 us; a small gather elsewhere)."""
    flat = t.detach().reshape(-1)
    step = max(1, flat.numel() // FINGERPRINT_SAMPLES)
    if flat.device.type == "cpu":
        if flat.dtype in (torch.bfloat16, torch.float16):
            flat = flat.view(torch.int16)
        try:
            return flat.numpy()[::step][:FINGERPRINT_SAMPLES].tobytes()
        except TypeError:  # a dtype numpy lacks
            pass
    return flat[::step][:FINGERPRINT_SAMPLES].float().cpu().numpy().tobytes()


def request_rope_base(cfg, prompt_len: int, max_new_tokens: int) -> float | None:
    """The fixed RoPE base of a request (module docstring); None when the config's base never changes."""
    if cfg.rope_type != "dynamic":
        return None
    return float(dynamic_base(cfg, prompt_len + max_new_tokens))


def _default_cache_bytes(device: torch.device) -> int:
    """A quarter of the memory available now (half of free GPU memory on CUDA)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):
        return 2 << 30


_CLOSE = object()


def _scheduler_main(engine_ref: weakref.ref, inbox: queue.SimpleQueue, threads: int) -> None:
    """The scheduler thread. Holds the engine only weakly while idle, so an engine that is dropped
    without `close()` is still collected (its finaliser puts _CLOSE in the inbox)."""
    torch.set_num_threads(threads)  # OpenMP thread counts are per thread: a new thread starts at the default
    with torch.inference_mode():
        while True:
            item = inbox.get()
            engine = engine_ref()
            if item is _CLOSE or engine is None:
                return
            if engine._run_until_idle(item) is _CLOSE:
                return
            del engine, item  # a queued job's closure holds the engine too


def _stop_thread(inbox: queue.SimpleQueue, thread: threading.Thread, frozen: list[bool]) -> None:
    inbox.put(_CLOSE)
    if threading.current_thread() is not thread:
        thread.join()
    _thaw_heap(frozen)


# The garbage collector and the engine. Every generated token leaves objects behind (stream events,
# token lists), so Python's cyclic collector runs full collections every few hundred steps, and a full
# collection walks every object in the process: with torch loaded that is ~170K objects and ~55 ms on this
# CPU, measured inside a 16-request nano run that took 180 ms in all. While an engine is open, the objects
# that existed when it was built (modules, tensors' Python objects, imported code) are moved to the
# collector's permanent generation (`gc.freeze()`, as LLM servers do after start-up), so collections
# only walk what was allocated since; when the last engine closes they are handed back (`gc.unfreeze()`).
_heap_lock = threading.Lock()
_heap_holders = 0


def _freeze_heap() -> list[bool]:
    global _heap_holders
    with _heap_lock:
        if _heap_holders == 0:
            gc.freeze()
        _heap_holders += 1
    return [True]


def _thaw_heap(frozen: list[bool]) -> None:
    global _heap_holders
    with _heap_lock:
        if not frozen[0]:
            return
        frozen[0] = False
        _heap_holders -= 1
        if _heap_holders == 0:
            gc.unfreeze()


class Engine:
    """Continuous-batching generation over one `InternLM2ForCausalLM` (see the module docstring).

    max_batch_size: requests decoded together; cache_tokens / cache_bytes: KV cache size (the smaller
    wins; default `max_batch_size * max_position_embeddings` tokens within a quarter of free memory);
    block_size: tokens per cache block; prefill_chunk: prompt tokens per prefill forward; mask_bytes:
    bound on a prefill chunk's attention mask (chunks shrink at long context to respect it);
    fast_decode: how decode steps run (the same function each way; `stats()["decode_path"]` says which):
    True (default) = the native kernel `puyu.engine.fused_decode.FusedDecode` where it applies (float32 CPU
    model, a C compiler), else `puyu.engine.decode_step.DecodeStep` (PyTorch ops, fewer than the model's
    forward, large matrix-vector products split across threads); "fused" or "step" to insist on one;
    False = the model's generic forward;
    kv: the KV cache's stored format, "f32", "bf16" or "int8" (one scale per token and kv head), None (default)
    = the model's dtype (`puyu.engine.kv_cache`, "KV formats"; `stats()["kv_format"]` names it). Every decode
    path reads and writes every format; bf16 halves the cache and int8 nearly quarters it, at the cost of
    the rounding stated in `puyu.model.quant`;
    prefix_cache: keep the cache blocks of finished prompts and answers (full blocks only) and let later
    requests that start with the same tokens (and RoPE base) adopt them instead of prefilling them again:
    a chat's next turn, a shared system prompt, an agent's growing history (`puyu.engine.kv_cache`, "Prefix
    reuse"); `stats()["prefix_hit_tokens"]` counts the prompt tokens so skipped. Kept blocks are only
    valid for the weights that computed them, and the engine (its native kernel included) reads the
    model's weights in place, so an RL loop may update them between requests. The engine therefore keeps
    a weights fingerprint (`weights_fingerprint`: identity, `_version` counter and data pointer of every
    parameter and buffer, and 64 sampled values of each). It is compared when an admission would adopt
    kept blocks and before each registration; when it differs, every kept prefix is forgotten
    (`stats()["prefix_flushes"]`) and requests admitted under the older weights register nothing. It
    sees in-place ops (`optimizer.step()`, fused optimizers too, `p.add_()`, `p.copy_()`,
    `load_state_dict`, with or without `assign=True`), `p.data = x`, and dense writes through `.data` or
    numpy views; it is blind only to a write that bypasses the version counter and changes none of the
    sampled values. After such a write call `invalidate_prefix_cache()`. A request running while the
    weights change keeps its own keys/values
    (it is not restarted) but registers none of them;
    threads: intra-op threads of the engine's own thread (default: what `torch.get_num_threads()` says
    in the thread that builds the engine). A forward with little work (under `SMALL_FORWARD_FLOPS`)
    runs on one thread: the model runs on the engine's thread, not the process's first thread, and
    there each OpenMP parallel op paid ~85 µs more to start its workers (libgomp 4.5 in torch 2.13,
    measured on the 2-core CPU: a [16, 256] x [256, 704] product 41 µs from the first thread, 127 µs
    from a second one, 62 µs on one core). Large matrix-vector products are split across `threads`
    cores by `RowSplitter` instead."""

    SMALL_FORWARD_FLOPS = 512e6

    def __init__(self, model, tokenizer=None, *, max_batch_size: int = 16, cache_tokens: int | None = None,
                 cache_bytes: int | None = None, block_size: int = 32, prefill_chunk: int = 2048,
                 mask_bytes: int = 256 << 20, fast_decode: bool | str = True, threads: int | None = None,
                 prefix_cache: bool = True, kv: str | None = None):
        threads = torch.get_num_threads() if threads is None else threads
        for name, v in [("max_batch_size", max_batch_size), ("block_size", block_size),
                        ("prefill_chunk", prefill_chunk), ("mask_bytes", mask_bytes), ("threads", threads)]:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise EngineError(f"Engine argument '{name}' must be a positive integer, got {v!r}")
        self.model, self.tokenizer, self.config = model, tokenizer, model.config
        self.max_batch_size, self.prefill_chunk, self.mask_bytes = max_batch_size, prefill_chunk, mask_bytes
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        cfg = self.config
        if kv is not None and kv not in KV_FORMATS:
            raise EngineError(f"Engine argument 'kv' must be one of {', '.join(KV_FORMATS)} or None, got {kv!r}")
        per_token = kv_bytes_per_token(cfg, kv) if kv is not None else cfg.kv_bytes_per_token(p.element_size())
        tokens = cache_tokens if cache_tokens is not None else max_batch_size * cfg.max_position_embeddings
        limit = cache_bytes if cache_bytes is not None else (
            None if cache_tokens is not None else _default_cache_bytes(self.device))
        if limit is not None:
            tokens = min(tokens, limit // per_token)
        num_blocks = tokens // block_size
        if num_blocks < 1:
            raise EngineError(f"the KV cache would hold less than one block of {block_size} tokens "
                              f"({per_token} bytes per token); raise cache_tokens or cache_bytes")
        self.cache = PagedKVCache(cfg, num_blocks, block_size, dtype=self.dtype, device=self.device, kv=kv)
        self.threads = threads
        self.prefix_cache = bool(prefix_cache)
        self._decoder, self.decode_path = self._make_decoder(fast_decode, model, threads)
        self._flops_per_token = 2 * (sum(p.numel() for p in model.parameters())  # packed layers hold buffers
                                     + sum(m.in_features * m.out_features for m in model.modules()
                                           if isinstance(m, QuantLinear)))
        # A vocabulary padded beyond the tokenizer's pieces: never sample ids the tokenizer cannot decode.
        self._vocab_limit = None
        if tokenizer is not None and tokenizer.vocab_size < cfg.vocab_size:
            self._vocab_limit = tokenizer.vocab_size
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self._ids = itertools.count()
        self._counters = {"steps": 0, "decode_steps": 0, "prefill_tokens": 0, "generated_tokens": 0,
                          "prefix_hit_tokens": 0, "prefix_flushes": 0}
        self._fingerprint = weights_fingerprint(self._weight_tensors())
        self._epoch = 0  # bumped whenever kept prefixes are forgotten; requests register only in their own
        self._closed = False
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=_scheduler_main, args=(weakref.ref(self), self._inbox, threads),
                                        name="puyu-engine", daemon=True)
        self._thread.start()
        # Dropped without close(), or still open at interpreter exit: stop the thread cleanly.
        self._frozen = _freeze_heap()
        self._finalizer = weakref.finalize(self, _stop_thread, self._inbox, self._thread, self._frozen)

    @staticmethod
    def _make_decoder(fast_decode, model, threads: int):
        if fast_decode not in (True, False, "fused", "step"):
            raise EngineError(f"fast_decode must be True, False, 'fused' or 'step', got {fast_decode!r}")
        fmt = model_format(model)  # the stored format of the linear layers, "f32" unless quantized
        slow = "" if fmt == "f32" else f"-{fmt}"
        if fast_decode is False or not DecodeStep.supports(model):
            return None, "model" + slow
        if fast_decode in (True, "fused") and FusedDecode.supports(model):
            if fast_decode == "fused" or fused_available():
                step = FusedDecode(model, threads=threads)
                return step, step.path
        if fast_decode == "fused":
            raise EngineError("fast_decode='fused' needs puyu's model in float32 (or packed weights) on the CPU")
        if fmt != "f32":  # DecodeStep reads float weights; the model's forward dequantizes each layer per call
            log.warning("no native decode kernel for the %s model: decoding with the model's forward, which "
                        "dequantizes every weight at every step (slow)", fmt)
            return None, "model" + slow
        return DecodeStep(model, RowSplitter(threads)), "torch-step"

    # ---- public API --------------------------------------------------------------------------------
    def submit(self, prompt: str | list[int], params: SamplingParams | None = None) -> RequestHandle:
        """Queue one request (thread-safe) and return its handle at once."""
        return RequestHandle(self, self._enqueue(self._make_request(prompt, params or SamplingParams())))

    def generate(self, prompts: list[str] | list[list[int]] | str,
                 params: SamplingParams | list[SamplingParams] | None = None) -> list[GenerationResult]:
        """Generate for every prompt (batched continuously); results in the order of `prompts`."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            return []
        plist = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(plist) != len(prompts):
            raise EngineError(f"got {len(plist)} SamplingParams for {len(prompts)} prompts")
        reqs = [self._make_request(p, sp) for p, sp in zip(prompts, plist)]  # validate all first
        self._enqueue(*reqs)  # one job: they are admitted together
        return [RequestHandle(self, r).result() for r in reqs]

    def stream(self, prompt: str | list[int], params: SamplingParams | None = None) -> Iterator[StreamDelta]:
        """Iterate one request's deltas; leaving the loop early cancels the request."""
        handle = self.submit(prompt, params)
        try:
            yield from handle
        finally:
            if not handle.done:
                handle.cancel()

    def fit(self, prompt: str | list[int], params: SamplingParams) -> SamplingParams:
        """`params` with max_new_tokens lowered, if needed, to what the whole cache can hold after this
        prompt (for open-ended chat turns; generation then ends with 'length' when the cache is full).
        Raises CacheFullError when the prompt alone does not fit."""
        n = len(self.tokenizer.encode(prompt, allow_special=True)) if isinstance(prompt, str) else len(prompt)
        room = self.cache.capacity_tokens - n
        if room < 1:
            self.cache.check_fits(n + 1)
        return replace(params, max_new_tokens=min(params.max_new_tokens, room))

    def prompt_logits(self, prompt: str | list[int], max_new_tokens: int = 0) -> torch.Tensor:
        """Logits [T, V] (float32) for every prompt position, computed by chunked prefill through the
        cache exactly as generation would, with the request's fixed RoPE base for `max_new_tokens`."""
        req = self._make_request(prompt, SamplingParams(max_new_tokens=max_new_tokens))
        req.score = []
        self._enqueue(req)
        RequestHandle(self, req).result()
        return torch.cat(req.score)

    def invalidate_prefix_cache(self) -> None:
        """Forget every kept prefix block now (thread-safe; waits for the scheduler between steps).
        Needed only after weight writes the fingerprint cannot see (`p.data`, numpy views: see the class
        docstring); in-place updates through the tensors themselves are detected without it."""
        def flush():
            self._fingerprint = weights_fingerprint(self._weight_tensors())
            self._flush_prefixes()

        self._call(flush)

    def _weight_tensors(self) -> list[torch.Tensor]:
        """The model's parameters and buffers as they are now (a swapped Parameter is seen)."""
        return list(self.model.parameters()) + list(self.model.buffers())

    def _flush_prefixes(self) -> None:
        self.cache.forget_prefixes()
        self._epoch += 1
        self._counters["prefix_flushes"] += 1

    def _weights_current(self) -> bool:
        """Whether the weights are those of the last check; if not, forget every kept prefix (scheduler
        thread)."""
        fp = weights_fingerprint(self._weight_tensors())
        if fp == self._fingerprint:
            return True
        self._fingerprint = fp
        self._flush_prefixes()
        return False

    def stats(self) -> dict:
        c = self.cache
        return {"cache_blocks_total": c.num_blocks, "cache_blocks_used": c.blocks_used,
                "cache_blocks_reserved": c.reserved, "cache_blocks_kept": c.blocks_kept,
                "block_size": c.block_size,
                "cache_tokens": c.capacity_tokens, "kv_format": c.format, "kv_bytes_per_token": c.bytes_per_token,
                "running": len(self._running), "waiting": len(self._waiting), "decode_path": self.decode_path,
                **self._counters}

    def close(self) -> None:
        """Abort every request and stop the scheduler thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put(_CLOSE)
        if threading.current_thread() is not self._thread:
            self._thread.join()
        while True:  # the thread is gone: run what is left in the inbox here, then abort everything
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not _CLOSE:
                item()
        for r in list(self._running) + list(self._waiting):
            self._finish(r, "abort")
        if self._decoder is not None:
            self._decoder.close()
        _thaw_heap(self._frozen)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- submission (caller threads) ---------------------------------------------------------------------
    def _make_request(self, prompt, params: SamplingParams) -> _Request:
        if self._closed:
            raise EngineError("the engine is closed")
        if not isinstance(params, SamplingParams):
            raise EngineError(f"params must be SamplingParams, got {type(params).__name__}")
        cfg = self.config
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise EngineError("a text prompt needs a tokenizer; pass token ids or Engine(model, tokenizer)")
            ids = self.tokenizer.encode(prompt, allow_special=True)
        elif isinstance(prompt, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool)
                                                       for i in prompt):
            ids = list(prompt)
        else:
            raise EngineError("a prompt must be a string or a list of token ids")
        if not ids:
            raise EngineError("the prompt is empty: at least one token is needed")
        bad = [i for i in ids if not 0 <= i < cfg.vocab_size]
        if bad:
            raise EngineError(f"prompt token id {bad[0]} is outside the vocabulary (0..{cfg.vocab_size - 1})")
        if params.stop and self.tokenizer is None:
            raise EngineError("stop strings need a tokenizer; use stop_token_ids with an id-only engine")
        budget = len(ids) + params.max_new_tokens
        self.cache.check_fits(budget)
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else {cfg.eos_token_id})
        req = _Request(id=next(self._ids), prompt=ids, params=params, stop_ids=frozenset(stops),
                       base=request_rope_base(cfg, len(ids), params.max_new_tokens), budget=budget)
        if self.tokenizer is not None:
            req.detok = IncrementalDetokenizer(self.tokenizer)
            req.stopper = StopStringMatcher(params.stop)
        if not params.greedy:
            req.generator = make_generator(params.seed, self.device)
        if params.repetition_penalty != 1.0:
            req.seen = torch.zeros(cfg.vocab_size, dtype=torch.bool, device=self.device)  # [V]
            req.seen[torch.tensor(ids, device=self.device)] = True
        return req

    def _enqueue(self, *reqs: _Request) -> _Request:
        if self._closed:
            raise EngineError("the engine is closed")
        self._inbox.put(lambda: self._waiting.extend(reqs))
        return reqs[-1]

    def _call(self, fn) -> None:
        """Run fn on the scheduler thread between steps and wait for it (directly once closed)."""
        if not self._thread.is_alive() or threading.current_thread() is self._thread:
            fn()
            return
        done = threading.Event()

        def job():
            try:
                fn()
            finally:
                done.set()

        self._inbox.put(job)
        done.wait()

    # ---- the scheduler (scheduler thread only) ----------------------------------------------------------------
    def _run_until_idle(self, item):
        """Run queued jobs and steps until nothing is waiting or running. All jobs already in the inbox
        run before each step, so requests submitted together are admitted together."""
        while True:
            while item is not None:
                if item is _CLOSE:
                    return _CLOSE
                item()
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = None
            if not self._waiting and not self._running:
                return None
            try:
                self._step()
            except Exception as e:  # a failure in a forward: fail the running requests, keep the process
                self._fail_all(e)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                item = None

    def _step(self) -> None:
        self._admit()
        if not self._running:
            return
        self._counters["steps"] += 1
        self._prefill_step([r for r in self._running if r.computed < len(r.prompt)])
        ready = [r for r in self._running if r.computed >= len(r.prompt)]
        if ready:
            self._decode_step(ready)

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self.max_batch_size:
            r = self._waiting[0]
            if r.params.max_new_tokens == 0 and r.score is None:
                self._waiting.popleft()
                self._finish(r, "length")
                continue
            hits = []
            if self.prefix_cache and r.score is None:
                if r.keys is None:
                    r.keys = self.cache.prefix_keys(r.prompt, r.base)
                # the prompt's last token is always computed: its logits give the first new token
                hits = self.cache.lookup(r.keys[:(len(r.prompt) - 1) // self.cache.block_size])
                # the weights are checked only when blocks would be adopted (not for every step a
                # request waits, nor for prompts with nothing cached)
                if hits and not self._weights_current():
                    hits = []
            if not self.cache.can_admit(r.budget, hits):
                return
            self._waiting.popleft()
            r.epoch = self._epoch
            r.seq = SequenceBlocks(self.cache, r.budget, prefix=hits)
            r.computed = len(hits) * self.cache.block_size
            self._counters["prefix_hit_tokens"] += r.computed
            self._running.append(r)

    def _prefill_step(self, reqs: list[_Request]) -> None:
        """Spend up to `prefill_chunk` prompt tokens this step, oldest request first. Requests whose whole
        rest of prompt fits are done together (so a burst of requests joins the decode batch at once):
        through the native kernel in one call where it applies, else fresh prompts packed into one
        PyTorch forward and partly cached ones (prefix hits) a forward each. A long prompt gets one chunk
        of its own."""
        budget, group = self.prefill_chunk, []
        for r in reqs:
            if budget <= 0:
                break
            P, start = len(r.prompt), r.computed
            # a chunk after cached tokens is bounded by its [T, S] attention mask (mask_bytes)
            most = budget if start == 0 else max_chunk_for(start, budget, self.mask_bytes, self.cache.dtype.itemsize)
            if r.score is None and P - start <= most and (not group or r.base == group[0].base):
                group.append(r)
                budget -= P - start
                continue
            n = min(P - start, most)
            self._prefill_chunk(r, n)
            budget -= n
        if not group or self._prefill_fused(group):
            return
        fresh = [r for r in group if r.computed == 0]
        for r in group:
            if r.computed > 0 or len(fresh) == 1:
                self._prefill_chunk(r, len(r.prompt) - r.computed)
        if len(fresh) > 1:
            with self._threads_for(sum(len(r.prompt) for r in fresh)):
                logits = prefill_packed(self.model, self.cache, [r.seq for r in fresh],
                                        [r.prompt for r in fresh], fresh[0].base)  # [n, V]
            self._prefilled(fresh, logits)

    def _prefill_fused(self, group: list[_Request]) -> bool:
        """The rest of short prompts through the native kernel, every token a row of one call (see
        `FusedDecode.prefill`). -> False where it does not apply (then PyTorch's forward runs)."""
        step = self._decoder
        if not isinstance(step, FusedDecode) or step.hooked() or not step.can_prefill(
                [r.prompt for r in group], [r.computed for r in group]):
            return False
        try:
            logits = step.prefill(self.cache, [r.seq for r in group], [r.prompt for r in group],
                                  [r.base for r in group], [r.computed for r in group])  # [n, V]
        except FusedDecodeUnavailable as e:
            self._fused_failed(e)
            return False
        self._prefilled(group, logits)
        return True

    def _prefilled(self, group: list[_Request], logits: torch.Tensor) -> None:
        """The prompts of `group` are now cached whole: register them for reuse, sample, stream."""
        for r in group:
            self._counters["prefill_tokens"] += len(r.prompt) - r.computed
            r.computed = len(r.prompt)
            if r.keys is not None and self._may_register(r):
                r.seq.register(r.keys)
        self._sample_and_emit(group, logits)

    def _may_register(self, r: _Request) -> bool:
        """Whether r's blocks were all computed with the current weights (checked now)."""
        return self._weights_current() and r.epoch == self._epoch

    def _prefill_chunk(self, r: _Request, n: int) -> None:
        start, P = r.computed, len(r.prompt)
        with self._threads_for(n):
            logits = prefill(self.model, self.cache, r.seq, r.prompt[start:start + n], start, r.base,
                             all_logits=r.score is not None)  # [n or 1, V]
        if r.score is not None:
            r.computed += n
            self._counters["prefill_tokens"] += n
            r.score.append(logits.cpu())
            if r.computed == P:
                self._finish(r, "length")
        elif start + n == P:
            self._prefilled([r], logits)
        else:
            r.computed += n
            self._counters["prefill_tokens"] += n

    @contextmanager
    def _threads_for(self, tokens: int):
        """One intra-op thread for a forward over `tokens` tokens with little work (class docstring)."""
        small = self.threads > 1 and tokens * self._flops_per_token < self.SMALL_FORWARD_FLOPS
        if small:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if small:
                torch.set_num_threads(self.threads)

    def _decode_step(self, reqs: list[_Request]) -> None:
        # the native kernel is one call with its own threads: torch's thread count is left alone for it
        threads = nullcontext() if isinstance(self._decoder, FusedDecode) else self._threads_for(len(reqs))
        with threads:
            logits = decode(self.model, self.cache, [r.seq for r in reqs], [r.output[-1] for r in reqs],
                            [r.computed for r in reqs], [r.base for r in reqs], self._decoder,
                            on_unavailable=self._fused_failed)  # [B, V]
        for r in reqs:
            r.computed += 1
        self._counters["decode_steps"] += 1
        self._sample_and_emit(reqs, logits)

    def _fused_failed(self, e: FusedDecodeUnavailable) -> None:
        """The native kernel cannot read the weights any more: decode with the model's forward from now on
        (said once, not at every step)."""
        log.warning("fused decode step skipped: %s; this engine decodes with the model's forward from now on", e)
        fmt = model_format(self.model)
        self._decoder, self.decode_path = None, "model" + ("" if fmt == "f32" else f"-{fmt}")

    def _sample_and_emit(self, reqs: list[_Request], logits: torch.Tensor) -> None:
        """logits [B, V] -> one new token per request, streamed; finished requests leave the batch."""
        params = [r.params for r in reqs]
        if self._vocab_limit is not None:
            logits[:, self._vocab_limit:] = float("-inf")
        tokens = sample(logits, params, [r.generator for r in reqs], [r.seen for r in reqs])  # [B]
        lps = token_logprobs(logits, tokens).tolist() if any(p.logprobs for p in params) else None
        for i, (r, t) in enumerate(zip(reqs, tokens.tolist())):
            self._append(r, t, lps[i] if lps is not None else None)
        self._counters["generated_tokens"] += len(reqs)

    def _append(self, r: _Request, t: int, lp: float | None) -> None:
        r.output.append(t)
        if r.seen is not None:
            r.seen[t] = True
        want_lp = r.params.logprobs
        if want_lp:
            r.logprobs.append(lp)
        reason, text = None, ""
        if t in r.stop_ids:
            reason = "stop"
        elif r.detok is not None:
            text, stopped = r.stopper.push(r.detok.push(t))
            reason = "stop" if stopped else None
        if reason is None and len(r.output) >= r.params.max_new_tokens:
            reason = "length"
        if reason is not None and r.detok is not None and not r.stopper.stopped:
            more, stopped = r.stopper.push(r.detok.flush())  # held-back bytes or a partial stop string
            text += more + ("" if stopped else r.stopper.flush())
            reason = "stop" if stopped else reason
        r.text.append(text)
        r.events.put(StreamDelta(text, [t], None, [lp] if want_lp else None))
        if reason is not None:
            self._finish(r, reason)

    def _finish(self, r: _Request, reason: str) -> None:
        """Free the request's cache, record its result and send the final event. Idempotent."""
        if r.done.is_set():
            return
        if r.seq is not None:
            if self.prefix_cache and r.keys is not None and r.computed > len(r.prompt) and self._may_register(r):
                # generated tokens too: the next turn of a chat sends this answer back in its prompt
                cached = (r.prompt + r.output)[:r.computed]
                r.seq.register(self.cache.prefix_keys(cached, r.base, known=r.keys))
            r.seq.free()
        if r in self._running:
            self._running.remove(r)
        elif r in self._waiting:
            self._waiting.remove(r)
        r.result = GenerationResult(prompt_token_ids=r.prompt, token_ids=list(r.output), text="".join(r.text),
                                    finish_reason=reason, logprobs=list(r.logprobs) if r.params.logprobs else None)
        r.events.put(StreamDelta("", [], reason, [] if r.params.logprobs else None))
        r.done.set()

    def _fail_all(self, err: BaseException) -> None:
        for r in list(self._running):
            r.error = err
            if r.seq is not None:
                r.seq.free()
            r.events.put(None)
            r.done.set()
        self._running.clear()


def chat_policy(engine: Engine, params: SamplingParams | None = None):
    """An agent policy backed by the engine (`puyu.agent.loop.Policy`): `policy(messages, tools=None,
    interpreter=None)` encodes the conversation with `puyu.model.chat_format.encode_chat` (only template
    markers are special ids; contents and tool results are plain text) and yields the assistant turn's
    text as it streams. It stops at `</s>` and `<|im_end|>`; with tools or the interpreter on it also stops right
    after `<|action_end|>` (the marker is yielded, so the caller sees the complete action)."""
    from puyu.model.chat_format import ACTION_END, encode_chat

    tok = engine.tokenizer
    if tok is None:
        raise EngineError("chat_policy needs an engine with a tokenizer")
    base = params or SamplingParams()
    chat_stops = set(base.stop_token_ids) | set(tok.stop_ids)
    action_end = tok.special_ids[ACTION_END]

    def policy(messages, tools=None, interpreter=None) -> Iterator[str]:
        stops = chat_stops | ({action_end} if tools or interpreter else set())
        prompt = encode_chat(tok, messages, tools, interpreter)
        p = engine.fit(prompt, replace(base, stop_token_ids=sorted(stops)))
        for delta in engine.stream(prompt, p):
            if delta.text:
                yield delta.text
            if delta.token_ids and delta.token_ids[-1] == action_end and action_end in stops:
                yield ACTION_END

    return policy
