"""Time the native kernel's decode step alone (no engine, no sampling), variants interleaved in one process.

    PUYU_KERNEL_ISA=avx2 .venv/bin/python benchmarks/decode_step.py --rows 16 --threads 2 \\
      --variant rows:split_rows=4 --variant weights:split_rows=1000 [--variant old:src=old.c] [--profile]

A model of `--preset` shape (default nano) with random weights (seed 0; `--weights int8|int4|bf16` packs them
as `benchmarks/quant.py` does), a float32 paged cache holding `--keys` cached tokens for
each of `--rows` sequences; each repetition times `--steps` calls of `FusedDecode.run` per variant, the
variants in turn, and prints the median step time (wall µs) per variant over the repetitions, with min
and max, and the calling thread's CPU time per step (on a loaded machine the figure to compare for
one-thread variants: time spent preempted is not in it). A variant is `name:key=value,...` with FusedDecode options (threads, split_rows, min_parallel)
and `src=PATH` (another copy of fused_decode.c, built with the same flags) or `defines=-DX=1;-DY`.
`--profile` builds with -DPUYU_PROFILE and prints each variant's per-phase share of the calling thread's
CPU time (the phases of `forward` in fused_decode.c: norm + wqkv, RoPE + cache store, attention, wo,
norm + w1/w3 + SiLU, w2, final norm + head).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time
from pathlib import Path

import torch

PHASES = ["embed", "norm+wqkv", "rope+store", "attention", "wo", "norm+w1/w3+silu", "w2", "head"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--keys", type=int, default=97, help="cached tokens per sequence at the timed steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--preset", default="nano", help="model shape (e.g. internlm2-1_8b: use --rows 1)")
    ap.add_argument("--weights", default="f32", choices=["f32", "bf16", "int8", "int4"],
                    help="packed weight format (random weights packed one matrix at a time, as benchmarks/quant.py)")
    ap.add_argument("--group", type=int, default=32, help="int4 group size")
    args = ap.parse_args()

    import puyu.engine.fused_decode as fd
    from puyu.engine.fused_decode import FusedDecode
    from puyu.engine.kv_cache import PagedKVCache, SequenceBlocks
    from puyu.model.config import get_preset
    from puyu.model.transformer import InternLM2ForCausalLM

    torch.set_num_threads(1)
    if args.weights == "f32":
        model = InternLM2ForCausalLM(get_preset(args.preset)).reset_parameters(seed=0).eval()
    else:
        import importlib.util

        spec = importlib.util.spec_from_file_location("quant_bench", Path(__file__).with_name("quant.py"))
        quant_bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(quant_bench)
        model = quant_bench.packed_random_model(args.preset, args.weights, args.group)
    cfg = model.config
    B = args.rows
    cache = PagedKVCache(cfg, num_blocks=B * (args.keys // 16 + 2), block_size=16)
    seqs = [SequenceBlocks(cache, args.keys + 1) for _ in range(B)]
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, cfg.vocab_size, (args.keys,), generator=g).tolist() for _ in range(B)]
    base_flags = fd.default_flags() + (("-DPUYU_PROFILE",) if args.profile else ())
    variants = []
    for spec in args.variant or ["default:"]:
        name, _, opts = spec.partition(":")
        kw = {"threads": args.threads}
        src, defines = None, ()
        for item in filter(None, opts.split(",")):
            k, v = item.split("=", 1)
            if k == "src":
                src = Path(v)
            elif k == "defines":
                defines = tuple(v.split(";"))
            else:
                kw[k] = int(v)
        if src is not None:  # load() hashes the source's text: point it at the copy while it builds
            keep, fd.SOURCE = fd.SOURCE, src
            lib = fd.load(base_flags + defines)
            fd.SOURCE = keep
        else:
            lib = fd.load(base_flags + defines)
        flags = base_flags + defines
        step = FusedDecode(model, flags=flags, **kw)
        assert step.lib is lib
        variants.append((name, step))
    first = variants[0][1]
    with torch.inference_mode():
        first.prefill(cache, seqs, prompts, [None] * B)  # every variant decodes over the same cached keys
    tokens, positions = [5] * B, [args.keys] * B
    times = {n: [] for n, _ in variants}
    cpu = {n: [] for n, _ in variants}
    prof = {n: [0.0] * 8 for n, _ in variants}
    ref = None
    for _ in range(args.reps):
        for name, step in variants:
            buf = (ctypes.c_double * 8).in_dll(step.lib, "puyu_prof") if args.profile else None
            before = list(buf) if buf is not None else None
            t, c = time.perf_counter(), time.thread_time()
            for _ in range(args.steps):
                out = step.run(cache, seqs, tokens, positions, [None] * B)
            times[name].append((time.perf_counter() - t) / args.steps * 1e6)
            cpu[name].append((time.thread_time() - c) / args.steps * 1e6)
            if buf is not None:
                prof[name] = [p + (a - b) for p, a, b in zip(prof[name], buf, before)]
            if ref is None:
                ref = out
            elif not torch.allclose(out, ref, atol=1e-4):
                raise SystemExit(f"{name}: logits differ from the first variant by {(out - ref).abs().max():.2e}")
    load = os.getloadavg()[0]
    print(f"{args.preset} {args.weights}, {B} rows x {args.keys} keys, {args.threads} threads, isa {first.isa}, "
          f"{args.reps} x {args.steps} steps, load {load:.2f}")
    for name, _ in variants:
        v = times[name]
        line = (f"{name:>12}: median {statistics.median(v):8.0f} µs  min {min(v):8.0f}  max {max(v):8.0f}; caller's "
                f"CPU median {statistics.median(cpu[name]):7.0f} µs  min {min(cpu[name]):7.0f}")
        if args.profile:
            total = sum(prof[name]) or 1.0
            line += "  | " + ", ".join(f"{p} {100 * x / total:.0f}%" for p, x in zip(PHASES, prof[name]))
        print(line, flush=True)


if __name__ == "__main__":
    main()
