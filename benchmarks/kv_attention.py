"""Attention over a long KV cache in the native decode kernel: one decode step of a model with InternLM2-7B's
attention shape (32 query heads, 8 kv heads, head_dim 128) and L layers whose feed-forward and vocabulary are
tiny, so the step is the attention over the cache (plus the 4096 x 6144 wqkv and 4096 x 4096 wo products,
timed alone and subtracted). Reports per KV format the step's time, the KV bytes read per step and the rate
they were read at, against this machine's read bandwidth (a 1 GiB torch sum, same thread count). Rates are per
CPU second of each thread (process CPU time / threads): on a shared machine the wall time of a niced process
mostly measures its wait for a core.

    .venv/bin/python benchmarks/kv_attention.py --context 50000 --kv f32,bf16,int8 --threads 1

The cache holds random keys and values written straight into its stored format (the timing does not depend on
their values); RSS grows with --context x layers x the format's bytes per token (int8: 16.9 KiB a token a layer).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

GIB = 1 << 30


def read_bandwidth(threads: int) -> float:
    """Bytes per CPU second per thread of the fastest of 5 sums of a fresh 1 GiB float32 buffer on `threads`
    torch threads (CPU time: on a shared machine the wall time mostly measures waiting for a core)."""
    torch.set_num_threads(threads)
    x = torch.empty(GIB // 4).uniform_()
    best = float("inf")
    for _ in range(5):
        t = time.process_time()
        x.sum()
        best = min(best, (time.process_time() - t) / threads)
    return GIB / best


def run(args) -> dict:
    from puyu.engine.fused_decode import FusedDecode
    from puyu.engine.kv_cache import PagedKVCache, SequenceBlocks
    from puyu.model.config import get_preset
    from puyu.model.transformer import InternLM2ForCausalLM

    torch.manual_seed(0)
    cfg = get_preset("internlm2-7b", num_hidden_layers=args.layers, intermediate_size=64, vocab_size=512)
    with torch.device("cpu"):
        model = InternLM2ForCausalLM(cfg).eval()
    step = FusedDecode(model, threads=args.threads)
    out = {"isa": step.isa, "threads": args.threads, "context": args.context, "layers": args.layers}
    out["bandwidth_bytes_s"] = read_bandwidth(args.threads)
    for kv in args.kv:
        cache = PagedKVCache(cfg, num_blocks=(args.context + 64) // 32 + 1, block_size=32, kv=kv)
        seq = SequenceBlocks(cache, args.context + 1)
        seq.ensure(args.context + 1)
        g = torch.Generator().manual_seed(1)
        for pool in (cache.k, cache.v):
            if kv == "int8":
                pool.copy_(torch.randint(-127, 128, pool.shape, dtype=torch.int8, generator=g))
            else:
                for layer in range(pool.shape[0]):
                    pool[layer].copy_(torch.randn(pool.shape[1:], generator=g))
        for sc in (cache.k_scale, cache.v_scale):
            if sc is not None:
                sc.copy_(torch.rand(sc.shape, generator=g) * 0.05)
        def short(cache=cache, seq=seq):  # one key: the products alone
            step.run(cache, [seq], [5], [0], [None])

        def full(cache=cache, seq=seq):
            step.run(cache, [seq], [5], [args.context], [None])

        def timed(fn, n):
            walls, cpus = [], []
            for _ in range(n):
                t, c = time.perf_counter(), time.process_time()
                fn()
                walls.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c)
            return sorted(walls)[n // 2], min(walls), sorted(cpus)[n // 2]

        timed(full, 1)
        base = timed(short, 3)
        wall, fastest, cpu = timed(full, args.steps)
        kv_bytes = cache.bytes_per_token * (args.context + 1)
        att = max(cpu - base[2], 1e-9) / args.threads  # CPU seconds of attention per thread
        out[kv] = {"step_s": wall, "fastest_s": fastest, "cpu_s": cpu, "products_cpu_s": base[2],
                   "attention_cpu_s_per_thread": att, "kv_bytes": kv_bytes, "kv_read_bytes_s": kv_bytes / att}
        print(f"[{step.isa}, {args.threads} thr, {kv} KV, {args.context:,} tokens x {args.layers} layers] step "
              f"{wall * 1e3:.1f} ms median wall (fastest {fastest * 1e3:.1f}), CPU {cpu * 1e3:.1f} ms; products "
              f"alone CPU {base[2] * 1e3:.1f} ms; attention {att * 1e3:.1f} CPU ms per thread reading "
              f"{kv_bytes / GIB:.3f} GiB = {kv_bytes / att / 1e9:.2f} GB/s per thread-CPU-second (1 GiB sum: "
              f"{out['bandwidth_bytes_s'] / 1e9:.1f} GB/s per thread-CPU-second)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", type=int, default=50000)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--kv", default="f32,bf16,int8")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    args.kv = args.kv.split(",")
    res = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
