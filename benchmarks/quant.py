"""Packed weights (bf16 / int8 / int4, `puyu.model.quant`) measured against float32 in one run.

    .venv/bin/python benchmarks/quant.py --model runs/nano/chat --tokens runs/nano/shards/longctx_val/tokens.bin
    .venv/bin/python benchmarks/quant.py --skip-quality --shape internlm2-1_8b --formats int8,int4
    .venv/bin/python benchmarks/quant.py --skip-quality --memory internlm2-7b --formats int4 --context 4096
    .venv/bin/python benchmarks/quant.py --skip-quality --long runs/nano/chat --kv f32,bf16,int8 --context 65536
    .venv/bin/python benchmarks/quant.py --skip-quality --long internlm2-7b --long-weights int4 --kv int8 \
        --context 200000 --prompt 64    # the issue's memory run: ~18 GiB, never on a shared machine

1. Quality (--model, a float checkpoint; --tokens, held-out token ids as a uint16 file such as a shard's
   tokens.bin): perplexity of each format over windows of the model's max_position_embeddings, relative
   to float32 (goals: int8 <= +0.5%, int4 <= +5%); greedy agreement over 128 new tokens through the engine
   (its native kernel, the path printed) from prompts cut from the same text: the share of positions whose
   token equals float32's, and the mean length of the common prefix.
2. Speed (--shape): a randomly initialised model of that preset's shape, built packed tensor by tensor (no
   float32 copy of the model: the 1.8B shape in float32 needs ~7 GB, so f32 runs only when asked for in
   --formats), single-stream decode tokens/s through the engine against the memory roofline = measured
   read bandwidth (the fastest 2-thread sum over a fresh 1 GiB buffer or over the packed weights, before
   and after) / bytes read per token (every packed weight but the embedding table, plus the KV read).
3. Memory (--memory PRESET): a 7B- or 20B-shaped packed model decoding with a KV cache reserved for
   --context tokens (in the first of --kv's formats): peak RSS and decode tokens/s. Needs ~4.5 GiB (7B int4)
   to ~13.3 GiB (20B int4, measured): run it with little else on the machine (README, Performance: the
   20B-shaped run, and the 7B-shaped one at 200K tokens through --long, 17.3 GiB).
4. Long context (--long MODEL: a checkpoint directory, or a preset whose random weights are packed in
   --long-weights): for each KV format in --kv, the engine's cache holding --context tokens of one sequence,
   and single-stream decode steps timed at that length. The cache is filled by a real prefill of --prompt
   tokens through the engine's own prefill (time to first token reported), then synthetic entries: the
   prompt's stored (already rounded) key/value blocks repeated block by block up to --context, so every
   position holds realistic values in the format under test (their RoPE positions are not those of the
   positions they sit at: the timing does not depend on that). A real 200K-token prefill of a 7B is ~1e16
   FLOP, about a day on 2 cores: it is not run. Reports bytes per cached token (`Engine.stats()`), decode
   seconds per step (median of --steps), the KV bytes a step reads and peak RSS (VmHWM), with the decode path.

5. llama.cpp (--vs-llamacpp PRESET): `bench_llamacpp` below; llama-cpp-python lives in its own environment
   (README, "llama.cpp side by side"), run as a subprocess; skipped with a message when it is absent.
       nice -n 10 .venv/bin/python benchmarks/quant.py --skip-quality --vs-llamacpp internlm2-1_8b --threads 2
The engine's decode path (kernel build and format) is printed with every figure.
"""

from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

GIB = 1 << 30


def peak_rss() -> int:
    from puyu.model.memory import peak_rss_bytes

    return peak_rss_bytes()


vm_hwm = peak_rss  # VmHWM: both names are used below


# ---- 1. quality ----------------------------------------------------------------------------------------------
def perplexity(model, tokens: torch.Tensor, window: int) -> float:
    """exp(mean next-token loss) over consecutive windows of `window` tokens."""
    return windowed_perplexity(tokens, window, lambda ids: model(ids[None])[0].float())


def windowed_perplexity(tokens: torch.Tensor, window: int, logits_of) -> float:
    """exp(mean next-token loss) over consecutive windows of `window` tokens; `logits_of(ids)` -> [len(ids), V]."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for s in range(0, len(tokens) - 1, window):
            ids = tokens[s:s + window + 1]
            if len(ids) < 2:
                break
            logits = logits_of(ids[:-1])
            total += float(torch.nn.functional.cross_entropy(logits, ids[1:], reduction="sum"))
            count += len(ids) - 1
    return math.exp(total / count)


def kernel_perplexity(model, tokens: torch.Tensor, window: int, act: str) -> float:
    """`perplexity`, each window's logits computed by the native kernel's prefill (every position a row of one
    call), its int8 / int4 products taking activations as `act` says ("int8": integer dot products)."""
    from puyu.engine.fused_decode import FusedDecode
    from puyu.engine.kv_cache import PagedKVCache, SequenceBlocks

    step = FusedDecode(model, threads=os.cpu_count() or 1, act=act)

    def logits_of(ids: torch.Tensor) -> torch.Tensor:
        cache = PagedKVCache(model.config, num_blocks=(window + 15) // 16 + 1, block_size=16)
        return step.prefill(cache, [SequenceBlocks(cache, len(ids))], [ids.tolist()], [None], all_rows=True)

    return windowed_perplexity(tokens, window, logits_of)


def greedy_act(model, prompts: list[list[int]], n: int, act: str):
    """`greedy` with the kernel's activations for int8 / int4 products set to `act` (PUYU_QUANT_ACT)."""
    old = os.environ.get("PUYU_QUANT_ACT")
    os.environ["PUYU_QUANT_ACT"] = act
    try:
        return greedy(model, prompts, n)
    finally:
        if old is None:
            os.environ.pop("PUYU_QUANT_ACT")
        else:
            os.environ["PUYU_QUANT_ACT"] = old


def agreement(out, ref_out) -> tuple[float, float]:
    """(share of positions whose token equals the reference's, mean common-prefix length)."""
    same = sum(a == b for o, r in zip(out, ref_out) for a, b in zip(o, r)) / sum(map(len, ref_out))
    prefix = []
    for o, r in zip(out, ref_out):
        k = 0
        while k < len(r) and o[k] == r[k]:
            k += 1
        prefix.append(k)
    return same, sum(prefix) / len(prefix)


def greedy(model, prompts: list[list[int]], n: int, kv: str | None = None):
    from puyu.engine.sampling import SamplingParams
    from puyu.engine.scheduler import Engine

    with Engine(model, max_batch_size=len(prompts), cache_tokens=len(prompts) * (max(map(len, prompts)) + n) + 256,
                prefix_cache=False, kv=kv) as eng:
        out = [r.token_ids for r in eng.generate(prompts, SamplingParams(max_new_tokens=n, ignore_eos=True))]
        return out, eng.stats()["decode_path"]


def bench_quality(args) -> dict:
    from puyu.model.checkpoint import load_model

    raw = np.fromfile(args.tokens, dtype=np.uint16)[: args.eval_tokens]
    tokens = torch.from_numpy(raw.astype(np.int64))
    ref_model = load_model(args.model, weights="f32")
    window = min(ref_model.config.max_position_embeddings, 512)
    prompts = [tokens[i * 997 % max(1, len(tokens) - 64):][:32].tolist() for i in range(args.prompts)]
    n = min(128, ref_model.config.max_position_embeddings - 33)
    res = {"window": window, "eval_tokens": len(tokens), "new_tokens": n}
    ref_ppl = perplexity(ref_model, tokens, window)
    ref_out, ref_path = greedy(ref_model, prompts, n)
    res["f32"] = {"ppl": ref_ppl, "decode_path": ref_path}
    print(f"[quality] {args.model}: {len(tokens)} held-out tokens, windows of {window}; f32 perplexity "
          f"{ref_ppl:.4f} ({ref_path})", flush=True)
    del ref_model
    for fmt in [f for f in args.formats if f != "f32"]:
        model = load_model(args.model, weights=fmt, group=args.group)
        ppl = perplexity(model, tokens, window)
        out, path = greedy(model, prompts, n)
        same, common = agreement(out, ref_out)
        res[fmt] = {"ppl": ppl, "ppl_increase": ppl / ref_ppl - 1, "greedy_same_share": same,
                    "greedy_common_prefix": common, "decode_path": path}
        goal = {"int8": " (goal <= 0.5%)", "int4": " (goal <= 5%)"}.get(fmt, "")
        print(f"[quality] {fmt}: perplexity {ppl:.4f} = {100 * (ppl / ref_ppl - 1):+.2f}% vs f32{goal}; greedy "
              f"tokens equal to f32's at {100 * same:.1f}% of {len(prompts)} x {n} positions, common prefix "
              f"{common:.1f} tokens ({path})", flush=True)
        if fmt in ("int8", "int4") and args.acts:  # the kernel's two activation paths (PUYU_QUANT_ACT)
            if "kernel_f32_ppl" not in res:
                ref_model = load_model(args.model, weights="f32")
                res["kernel_f32_ppl"] = kernel_perplexity(ref_model, tokens, window, "f32")
                del ref_model
            kref = res["kernel_f32_ppl"]
            for act in args.acts:
                kppl = kernel_perplexity(model, tokens, window, act)
                kout, kpath = greedy_act(model, prompts, n, act)
                ks, kp = agreement(kout, ref_out)
                res[fmt][f"act_{act}"] = {"kernel_ppl": kppl, "ppl_increase": kppl / kref - 1, "greedy_same_share": ks,
                                          "greedy_common_prefix": kp, "decode_path": kpath}
                print(f"[quality] {fmt}, kernel activations {act}: perplexity through the kernel {kppl:.4f} = "
                      f"{100 * (kppl / kref - 1):+.2f}% vs f32 through the kernel ({kref:.4f}){goal}; greedy tokens "
                      f"equal to f32's at {100 * ks:.1f}%, common prefix {kp:.1f} tokens ({kpath})", flush=True)
        del model
    return res


def engine_perplexity(model, tokens: torch.Tensor, window: int, kv: str | None, chunk: int) -> float:
    """`perplexity`, but each window's logits come from the engine's chunked prefill through a KV cache of
    format `kv` (`Engine.prompt_logits`: later chunks read the stored keys/values)."""
    from puyu.engine.scheduler import Engine

    total, count = 0.0, 0
    with Engine(model, max_batch_size=1, cache_tokens=window + 64, prefill_chunk=chunk, prefix_cache=False,
                kv=kv) as eng:
        for s in range(0, len(tokens) - 1, window):
            ids = tokens[s:s + window + 1]
            if len(ids) < 2:
                break
            logits = eng.prompt_logits(ids[:-1].tolist())
            total += float(torch.nn.functional.cross_entropy(logits, ids[1:], reduction="sum"))
            count += len(ids) - 1
    return math.exp(total / count)


def bench_kv_quality(args) -> dict:
    """Each KV format of --kv against float32's: perplexity through the engine's chunked prefill (chunks of
    64, so most keys are read back from the cache) and greedy agreement over 128 new tokens."""
    from puyu.model.checkpoint import load_model

    raw = np.fromfile(args.tokens, dtype=np.uint16)[: args.eval_tokens]
    tokens = torch.from_numpy(raw.astype(np.int64))
    model = load_model(args.model)
    window = model.config.max_position_embeddings
    prompts = [tokens[i * 997 % max(1, len(tokens) - 64):][:32].tolist() for i in range(args.prompts)]
    n = min(128, window - 33)
    ref_ppl = engine_perplexity(model, tokens, window, "f32", 64)
    ref_out, path = greedy(model, prompts, n, "f32")
    res = {"f32": {"ppl": ref_ppl, "decode_path": path}}
    print(f"[kv quality] {args.model}: {len(tokens)} held-out tokens, windows of {window} in chunks of 64; f32 KV "
          f"perplexity {ref_ppl:.4f} ({path})", flush=True)
    for kv in [k for k in args.kv if k != "f32"]:
        ppl = engine_perplexity(model, tokens, window, kv, 64)
        out, _ = greedy(model, prompts, n, kv)
        same = sum(a == b for o, r in zip(out, ref_out) for a, b in zip(o, r)) / sum(map(len, ref_out))
        res[kv] = {"ppl": ppl, "ppl_increase": ppl / ref_ppl - 1, "greedy_same_share": same}
        print(f"[kv quality] {kv} KV: perplexity {ppl:.4f} = {100 * (ppl / ref_ppl - 1):+.3f}% vs f32; greedy tokens "
              f"equal to f32's at {100 * same:.1f}% of {len(prompts)} x {n} positions", flush=True)
    return res


# ---- 2-3. speed and memory -------------------------------------------------------------------------------------
def packed_random_model(preset: str, fmt: str, group: int, seed: int = 0):
    """A preset-shaped model with small uniform weights, each matrix created in float32 and packed at once
    (one float matrix at a time)."""
    from puyu.model.checkpoint import _set_packed, _set_param
    from puyu.model.config import get_preset
    from puyu.model.quant import layer_format, quantize
    from puyu.model.transformer import InternLM2ForCausalLM

    with torch.device("meta"):
        m = InternLM2ForCausalLM(get_preset(preset))
    g = torch.Generator().manual_seed(seed)
    for name, p in list(m.named_parameters()):
        if name.endswith("norm.weight"):
            _set_param(m, name, torch.ones(p.shape))
            continue
        t = torch.empty(p.shape).uniform_(-0.04, 0.04, generator=g)
        f = layer_format(name, fmt)
        if f == "f32":
            _set_param(m, name, t)
        else:
            _set_packed(m, name, quantize(t, f, group))
        del t
    return m.eval()


def read_bytes(model) -> int:
    """Bytes a decode step reads: every weight tensor but the embedding table (one row of it is read)."""
    return sum(t.nbytes for n, t in model.state_dict().items() if "tok_embeddings" not in n)


def bandwidth(model) -> float:
    """The fastest 2-thread read measured (bytes/s): a fresh 1 GiB buffer, or the model's own tensors."""
    fresh = torch.empty(GIB // 4).uniform_()
    tensors = [t for t in model.state_dict().values()]
    nbytes = sum(t.nbytes for t in tensors)

    def best(fn, n):
        out = float("inf")
        for _ in range(n):
            t = time.perf_counter()
            fn()
            out = min(out, time.perf_counter() - t)
        return out

    def touch():
        for t in tensors:
            t.reshape(-1).view(torch.uint8).max()  # reads every byte, no widened copy

    return max(GIB / best(fresh.sum, 5), nbytes / best(touch, 3))


def decode_speed(model, prompt: int, new: int, context: int | None = None, kv: str | None = None,
                 ids: list[int] | None = None) -> dict:
    from puyu.engine.sampling import SamplingParams
    from puyu.engine.scheduler import Engine

    cfg = model.config
    if ids is None:
        ids = torch.randint(3, cfg.vocab_size, (prompt,), generator=torch.Generator().manual_seed(0)).tolist()
    with Engine(model, max_batch_size=1, cache_tokens=context or (prompt + new + 64), prefix_cache=False,
                kv=kv) as eng:
        stamps, cpu = [], []
        t0 = time.perf_counter()
        for d in eng.stream(ids, SamplingParams(max_new_tokens=new, ignore_eos=True)):
            stamps += [time.perf_counter()] * len(d.token_ids)
            cpu += [time.process_time()] * len(d.token_ids)
        path, kv_format = eng.stats()["decode_path"], eng.stats()["kv_format"]
    return {"tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]), "first_token_s": stamps[0] - t0,
            "decode_path": path, "kv_format": kv_format,
            "cpu_s_per_token": (cpu[-1] - cpu[0]) / max(1, len(cpu) - 1)}  # all threads' CPU, decode only


def decode_speed_act(model, prompt: int, new: int, act: str | None) -> dict:
    """`decode_speed` with PUYU_QUANT_ACT set to `act` (None: as it is)."""
    old = os.environ.get("PUYU_QUANT_ACT")
    if act is not None:
        os.environ["PUYU_QUANT_ACT"] = act
    try:
        return decode_speed(model, prompt, new)
    finally:
        if old is None:
            os.environ.pop("PUYU_QUANT_ACT", None)
        else:
            os.environ["PUYU_QUANT_ACT"] = old


def bench_speed(args) -> dict:
    res = {}
    for fmt in args.formats:
        model = packed_random_model(args.shape, fmt, args.group)
        kv = (args.prompt + args.new_tokens / 2) * model.config.kv_bytes_per_token(4)
        per_token = read_bytes(model) + kv
        # --speed-acts: the kernel's activation paths alternated on this model, --speed-rounds times (a before /
        # after in the same minutes); otherwise one run as PUYU_QUANT_ACT says
        acts = args.speed_acts if fmt in ("int8", "int4") and args.speed_acts else [None]
        for rnd in range(args.speed_rounds if acts != [None] else 1):
            for act in acts:
                bw = bandwidth(model)
                r = decode_speed_act(model, args.prompt, args.new_tokens, act)
                bw = max(bw, bandwidth(model))
                roof = bw / per_token
                key = fmt if act is None else f"{fmt}/act_{act}/round{rnd}"
                res[key] = {**r, "bytes_per_token": per_token, "bandwidth_GBs": bw / 1e9, "roofline_tok_s": roof,
                            "roofline_fraction": r["tok_s"] / roof, "peak_rss_bytes": peak_rss(),
                            "load": os.getloadavg()[0]}
                print(f"[{args.shape} {fmt}{'' if act is None else f' act {act}'}] decode {r['tok_s']:.2f} tok/s "
                      f"(CPU {r['cpu_s_per_token'] * 1e3:.0f} ms/token); roofline {roof:.2f} tok/s ({bw / 1e9:.1f} GB/s"
                      f" / {per_token / 1e9:.3f} GB per token) -> {100 * r['tok_s'] / roof:.0f}% (goal >= 80%); path "
                      f"{r['decode_path']}; load {os.getloadavg()[0]:.1f}; peak RSS so far {peak_rss() / GIB:.2f} GiB",
                      flush=True)
        del model
    return res


def bench_memory(args) -> dict:
    """Run only where the memory allows (module docstring)."""
    res = {}
    for fmt in args.formats:
        model = packed_random_model(args.memory, fmt, args.group)
        r = decode_speed(model, args.prompt, args.new_tokens, context=args.context, kv=args.kv[0])
        res[fmt] = {**r, "context_reserved": args.context, "peak_rss_bytes": vm_hwm()}
        print(f"[{args.memory} {fmt}] {r['kv_format']} KV cache reserved for {args.context:,} tokens: decode "
              f"{r['tok_s']:.3f} tok/s, first token {r['first_token_s']:.1f} s, peak RSS {vm_hwm() / GIB:.2f} GiB "
              f"({r['decode_path']})", flush=True)
        del model
    return res


# ---- 4. long context -------------------------------------------------------------------------------------------
def fill_synthetic(cache, seq, real_blocks: int, tokens: int) -> None:
    """Blocks of `seq` after its first `real_blocks` (computed by a real prefill) up to `tokens` tokens: copies
    of the real ones, block by block, in the cache's own stored format (scales too)."""
    seq.ensure(tokens)
    first = seq.blocks[0]
    if seq.blocks != list(range(first, first + len(seq.blocks))):
        raise RuntimeError("the sequence's blocks are not contiguous")
    pools = [cache.k, cache.v] + ([cache.k_scale, cache.v_scale] if cache.k_scale is not None else [])
    done = real_blocks
    while done < len(seq.blocks):
        n = min(done, len(seq.blocks) - done)  # doubling copies: log2(blocks) copy calls
        for pool in pools:
            pool[:, first + done:first + done + n] = pool[:, first:first + n]
        done += n


def long_model(args):
    from puyu.model.checkpoint import load_model

    if Path(args.long).is_dir():
        return load_model(args.long, weights=args.long_weights, group=args.group)
    return packed_random_model(args.long, args.long_weights, args.group)


def bench_long(args) -> dict:
    from puyu.engine.fused_decode import FusedDecode
    from puyu.engine.kv_cache import SequenceBlocks
    from puyu.engine.scheduler import Engine, decode, prefill

    model = long_model(args)
    cfg = model.config
    ids = torch.randint(3, cfg.vocab_size, (args.prompt,), generator=torch.Generator().manual_seed(0)).tolist()
    res = {}
    for kv in args.kv:
        with Engine(model, max_batch_size=1, cache_tokens=args.context + 64, prefix_cache=False, kv=kv,
                    block_size=32) as eng:
            cache, step = eng.cache, eng._decoder
            seq = SequenceBlocks(cache, args.context + args.steps + 1)
            t0 = time.perf_counter()
            with torch.inference_mode():
                if isinstance(step, FusedDecode) and step.can_prefill([ids]):
                    logits = step.prefill(cache, [seq], [ids], [None])
                else:
                    logits = prefill(model, cache, seq, ids, 0, None)
            ttft = time.perf_counter() - t0
            real = args.prompt // cache.block_size
            if real < 1:
                raise SystemExit(f"--prompt must cover at least one block of {cache.block_size} tokens")
            t1 = time.perf_counter()
            fill_synthetic(cache, seq, real, args.context)
            fill_s = time.perf_counter() - t1
            tok = int(logits[-1].argmax())
            times, cpu = [], []
            for i in range(args.steps):
                t, c = time.perf_counter(), time.process_time()
                logits = decode(model, cache, [seq], [tok], [args.context + i], [None], step)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)  # this process's threads: less than wall on a busy machine
                tok = int(logits[-1].argmax())
            st = eng.stats()
            step_s, cpu_s = sorted(times)[len(times) // 2], sorted(cpu)[len(cpu) // 2]
            seq.free()
        kv_read = st["kv_bytes_per_token"] * args.context
        res[st["kv_format"]] = {"context": args.context, "prompt": args.prompt, "first_token_s": ttft,
                                "fill_s": fill_s, "step_s": step_s, "step_cpu_s": cpu_s, "tok_s": 1 / step_s,
                                "steps_s": times,
                                "kv_bytes_per_token": st["kv_bytes_per_token"], "kv_bytes_read_per_step": kv_read,
                                "decode_path": st["decode_path"], "peak_rss_bytes": vm_hwm()}
        print(f"[long {args.long} {args.long_weights} weights, {st['kv_format']} KV] {st['kv_bytes_per_token']} bytes "
              f"per cached token; prefill of {args.prompt} tokens {ttft:.2f} s, synthetic fill to {args.context:,} "
              f"{fill_s:.1f} s; decode step at {args.context:,} tokens {step_s * 1e3:.1f} ms (median of "
              f"{args.steps}; fastest {min(times) * 1e3:.1f}; CPU time {cpu_s * 1e3:.1f}) = {1 / step_s:.2f} tok/s, reading {kv_read / GIB:.2f} GiB of KV; peak RSS "
              f"{vm_hwm() / GIB:.2f} GiB ({st['decode_path']})", flush=True)


# ---- 5. llama.cpp side by side --------------------------------------------------------------------------------
PEER_PYTHON = os.environ.get("PUYU_LLAMACPP_PYTHON", "/work/venvs/llamacpp/bin/python")
REAL_TOKENIZER = "/work/shared/reference/internlm2/tokenizer.model"
# Run by the peer environment's Python: loads one GGUF with llama-cpp-python, prefills the prompt, then decodes
# greedily one token per llama_decode call (argmax in numpy, as puyu's engine takes the argmax), timing each.
PEER_SCRIPT = r"""
import json, sys, time
import numpy as np
import llama_cpp
import llama_cpp.llama_cpp as low
a = json.loads(sys.argv[1])
default_params = low.llama_model_default_params
def model_params():  # llama.cpp's "extra buffer types" (AMX, repacked weights): on or off as asked
    p = default_params()
    p.use_extra_bufts = a["extra_bufts"]
    return p
low.llama_model_default_params = model_params
llm = llama_cpp.Llama(model_path=a["path"], n_ctx=a["n_ctx"], n_threads=a["threads"], n_threads_batch=a["threads"],
                      n_batch=512, logits_all=False, verbose=False)
V = llm.n_vocab()
def last():
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(V,)).copy()
t0 = time.perf_counter()
llm.eval(a["ids"])
logits = last()
tok = int(logits.argmax())
stamps, toks = [time.perf_counter()], [tok]
for _ in range(a["new"] - 1):
    llm.eval([tok])
    tok = int(last().argmax())
    stamps.append(time.perf_counter())
    toks.append(tok)
print(json.dumps({"tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]), "first_token_s": stamps[0] - t0,
                  "logits": logits.tolist(), "tokens": toks, "version": llama_cpp.__version__,
                  "system": llama_cpp.llama_print_system_info().decode()}))
"""


def synthetic_weights(cfg, seed: int = 0):
    """get(puyu parameter name) -> float32 tensor, the same values on every call (seeded by the name): weights
    ~ U(-0.04, 0.04) (as `packed_random_model`), norms 1."""
    import zlib

    from puyu.model.transformer import InternLM2ForCausalLM

    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in InternLM2ForCausalLM(cfg).named_parameters()}

    def get(name: str) -> torch.Tensor:
        if name.endswith("norm.weight"):
            return torch.ones(shapes[name])
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        return torch.empty(shapes[name]).uniform_(-0.04, 0.04, generator=g)

    return get


def bench_llamacpp(args) -> dict:
    """puyu bf16 / int8 / int4 against llama.cpp f16 / q8_0 / q4_0 on the same synthetic weights, written once as
    GGUF files (`puyu.model.gguf_file.write_gguf`) under --workdir: puyu loads the very same files (f16 -> bf16
    rounded; q8_0 -> int8 per row, re-quantized; q4_0 -> int4 in groups of 32, the file's blocks exactly).
    Same prompt ids, same thread count, one process at a time (puyu here, llama.cpp in a subprocess of the peer
    environment), so their memory never adds up. Prints tok/s, the ratio, and the last prompt position's logits
    compared (max |difference| / max |logit|, and whether the argmax agrees)."""
    import gc
    import subprocess

    from puyu.model.checkpoint import load_model
    from puyu.model.config import get_preset
    from puyu.model.gguf_file import write_gguf

    peer = Path(args.llamacpp_python)
    if not peer.exists():
        print(f"[llama.cpp] skipped: no peer environment at {peer} (build it: README 'llama.cpp side by side'; "
              f"or set PUYU_LLAMACPP_PYTHON / --llamacpp-python)", flush=True)
        return {"skipped": f"no {peer}"}
    probe = subprocess.run([str(peer), "-c", "import llama_cpp; print(llama_cpp.__version__)"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        print(f"[llama.cpp] skipped: {peer} cannot import llama_cpp ({probe.stderr.strip().splitlines()[-1:]})")
        return {"skipped": "llama_cpp import failed"}
    cfg = get_preset(args.vs_llamacpp)
    tok = Path(args.tokenizer)
    if not tok.exists():
        print(f"[llama.cpp] skipped: llama.cpp needs a vocabulary in the GGUF and {tok} is absent (--tokenizer)")
        return {"skipped": f"no {tok}"}
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    get = synthetic_weights(cfg)
    ids = torch.randint(3, cfg.vocab_size, (args.prompt,), generator=torch.Generator().manual_seed(0)).tolist()
    pairs = [p.split(":") for p in args.pairs.split(",")]
    res = {"llamacpp_extra_bufts": args.llamacpp_extra_bufts, "threads": args.threads, "prompt": args.prompt, "new_tokens": args.new_tokens, "shape": args.vs_llamacpp,
           "llama_cpp_version": probe.stdout.strip(), "load_before": os.getloadavg()}
    for gtype, fmt in pairs:
        path = work / f"{args.vs_llamacpp}-{gtype}.gguf"
        if not path.exists():
            t = time.perf_counter()
            write_gguf(path, cfg, get, gtype, tok)
            print(f"[llama.cpp] wrote {path} ({path.stat().st_size / GIB:.2f} GiB, {time.perf_counter() - t:.0f} s)",
                  flush=True)
        model = load_model(path, weights=fmt if gtype == "f16" else None)
        with torch.inference_mode():
            ours_logits = model(torch.tensor([ids]))[0, -1].float()
        ours = decode_speed(model, args.prompt, args.new_tokens, ids=ids)
        del model
        gc.collect()
        arg = json.dumps({"path": str(path), "n_ctx": args.prompt + args.new_tokens + 16, "threads": args.threads,
                          "ids": ids, "new": args.new_tokens, "extra_bufts": args.llamacpp_extra_bufts})
        r = subprocess.run([str(peer), "-c", PEER_SCRIPT, arg], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"[llama.cpp {gtype}] failed: {r.stderr.strip()[-2000:]}", flush=True)
            res[gtype] = {"puyu": ours, "error": r.stderr.strip()[-2000:]}
            continue
        peer_res = json.loads(r.stdout.strip().splitlines()[-1])
        theirs_logits = torch.tensor(peer_res.pop("logits"))
        diff = float((ours_logits - theirs_logits).abs().max() / theirs_logits.abs().max())
        agree = int(ours_logits.argmax()) == int(theirs_logits.argmax())
        ratio = ours["tok_s"] / peer_res["tok_s"]
        res[gtype] = {"puyu_format": fmt, "puyu": ours, "llama_cpp": {k: v for k, v in peer_res.items() if k != "system"},
                      "ratio": ratio, "logits_max_rel_diff": diff, "argmax_agrees": agree}
        print(f"[{args.vs_llamacpp}] puyu {fmt} {ours['tok_s']:.2f} tok/s ({ours['decode_path']}) vs llama.cpp {gtype} "
              f"{peer_res['tok_s']:.2f} tok/s -> {ratio:.2f}x (goal >= 1.0); first token {ours['first_token_s']:.2f} "
              f"vs {peer_res['first_token_s']:.2f} s; logits max|diff|/max|logit| {diff:.3g}, argmax "
              f"{'agrees' if agree else 'differs'}; load {os.getloadavg()[0]:.1f}", flush=True)
    res["load_after"] = os.getloadavg()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--formats", default="f32,bf16,int8,int4", help="comma-separated, of f32,bf16,int8,int4")
    ap.add_argument("--group", type=int, default=64, help="int4 group size")
    ap.add_argument("--model", default="runs/nano/chat", help="float checkpoint for the quality figures")
    ap.add_argument("--tokens", default="runs/nano/shards/longctx_val/tokens.bin", help="held-out ids (uint16)")
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--speed-acts", default="", help="with --shape: alternate these kernel activation paths "
                    "(f32,int8) on each int8 / int4 model, --speed-rounds times")
    ap.add_argument("--speed-rounds", type=int, default=2)
    ap.add_argument("--acts", default="f32,int8", help="kernel activation paths (PUYU_QUANT_ACT) whose perplexity "
                    "through the kernel and greedy agreement the quality run reports for int8 / int4 (empty: none)")
    ap.add_argument("--shape", help="preset for the speed figures, e.g. internlm2-1_8b (f32 there needs ~7 GB)")
    ap.add_argument("--memory", help="preset for the memory figures (internlm2-7b / internlm2-20b; never on a "
                                     "shared machine)")
    ap.add_argument("--context", type=int, default=4096, help="KV tokens reserved in --memory and --long runs")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--kv", default="f32", help="KV cache formats (comma-separated, of f32,bf16,int8) for --long; "
                                                 "--memory uses the first")
    ap.add_argument("--kv-quality", action="store_true", help="quality of each --kv format on --model, --tokens")
    ap.add_argument("--long", help="model (checkpoint directory or preset) for the long-context figures")
    ap.add_argument("--long-weights", default="f32", help="weight format of --long (f32, bf16, int8, int4)")
    ap.add_argument("--steps", type=int, default=5, help="decode steps timed in --long runs")
    ap.add_argument("--vs-llamacpp", metavar="PRESET", help="compare with llama.cpp on this preset's shape, e.g. "
                    "internlm2-1_8b (needs the peer environment; skipped with a message without it)")
    ap.add_argument("--pairs", default="f16:bf16,q8_0:int8,q4_0:int4",
                    help="GGUF type:puyu format pairs for --vs-llamacpp")
    ap.add_argument("--llamacpp-python", default=PEER_PYTHON, help="Python of the llama-cpp-python environment")
    ap.add_argument("--llamacpp-extra-bufts", action="store_true",
                    help="let llama.cpp use its extra buffer types (AMX / repacked weights; off by default: on this "
                         "project's KVM machine its AMX kernels stop with SIGILL on Q8_0/Q4_0)")
    ap.add_argument("--tokenizer", default=REAL_TOKENIZER, help="SentencePiece model written into the GGUF files "
                    "(its vocabulary must match the preset's)")
    ap.add_argument("--workdir", default="/tmp/puyu_llamacpp", help="where the GGUF files are written (and reused)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    args.acts = [a.strip() for a in args.acts.split(",") if a.strip()]
    args.speed_acts = [a.strip() for a in args.speed_acts.split(",") if a.strip()]
    args.kv = [f.strip() for f in args.kv.split(",") if f.strip()]
    torch.set_num_threads(args.threads)
    from puyu.engine.fused_decode import cpu_isas, default_isa

    print(f"threads={args.threads}  torch {torch.__version__}  kernel build {default_isa()} (CPU runs "
          f"{sorted(cpu_isas())}; PUYU_KERNEL_ISA={os.environ.get('PUYU_KERNEL_ISA', 'unset')})", flush=True)
    res = {"threads": args.threads}
    if not args.skip_quality:
        res["quality"] = bench_quality(args)
    if args.shape:
        res["speed"] = bench_speed(args)
    if args.memory:
        res["memory"] = bench_memory(args)
    if args.kv_quality:
        res["kv_quality"] = bench_kv_quality(args)
    if args.long:
        res["long"] = bench_long(args)
    if args.vs_llamacpp:
        res["llama_cpp"] = bench_llamacpp(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
