"""A/B of native-kernel build variants on one packed preset-shaped model, alternated in one process.

    PYTHONPATH=src python benchmarks/weights_ab.py --weights bf16 --rounds 4 \\
        --variant old=-DPUYU_FROWS1=0 --variant new=
    PUYU_KERNEL_ISA=avx2 PYTHONPATH=src python benchmarks/weights_ab.py ...          # the AVX2 build
    git show REV:src/puyu/engine/fused_decode.c > /tmp/old.c
    PYTHONPATH=src python benchmarks/weights_ab.py --weights int4 --variant old=src:/tmp/old.c --variant new=

Each variant is `name=extra compiler flags` added to the build of `PUYU_KERNEL_ISA` (default: the CPU's widest),
optionally with `src:PATH` to build another copy of fused_decode.c. The model (random weights in the shape of
`--shape`, packed in `--weights`, one matrix at a time: `benchmarks/quant.py`'s `packed_random_model`) is made
once, then every round decodes `--new-tokens` tokens after a `--prompt`-token prompt with each variant, in
alternating order, and prints the single-stream rate (what `benchmarks/quant.py` measures, prefill excluded)
with the 1-minute load; at the end, per variant, the median, min and max. Every variant is built before the model
is made (a build error stops the A/B), and a round that did not decode on the native kernel stops it too. Meant
for the 1.8B / 7B shapes: a nano step is too short for a per-token rate.

Why one process: on the 2-core VMs of this project the same build decoded the 1.8B shape at 19-50 tok/s in
different processes (the host's memory bandwidth moved alike), while variants alternated within one process kept
their order round after round. `benchmarks/kernel_ab.py` does the same for the nano engine with a fresh process
per run (its model is made in milliseconds).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
from pathlib import Path


def _quant_bench():
    spec = importlib.util.spec_from_file_location("puyu_bench_quant", Path(__file__).with_name("quant.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse_variant(text: str) -> tuple[str, Path | None, tuple[str, ...]]:
    """"name=flags" or "name=src:PATH flags" -> (name, source or None, flags)."""
    if "=" not in text or not text.split("=", 1)[0]:
        raise SystemExit(f"--variant {text!r}: expected NAME=FLAGS (FLAGS may be empty, or start with src:PATH)")
    name, rest = text.split("=", 1)
    toks = rest.split()
    src = [Path(t[4:]) for t in toks if t.startswith("src:")]
    if src and not src[0].is_file():
        raise SystemExit(f"--variant {name}: no source file {src[0]}")
    return name, (src[0] if src else None), tuple(t for t in toks if not t.startswith("src:"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", choices=("bf16", "int8", "int4"), required=True)
    ap.add_argument("--shape", default="internlm2-1_8b", help="a preset name (default internlm2-1_8b)")
    ap.add_argument("--group", type=int, default=32, help="int4 group size (default 32)")
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=FLAGS")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    variants = [parse_variant(v) for v in args.variant]
    if len({n for n, _, _ in variants}) != len(variants):
        raise SystemExit("--variant names must differ")
    if args.rounds < 1 or args.new_tokens < 8 or args.prompt < 1 or args.threads < 1:
        raise SystemExit("--rounds, --prompt and --threads must be >= 1 and --new-tokens >= 8")

    import torch

    import puyu.engine.fused_decode as fd
    from puyu.model.config import PRESETS

    if args.shape not in PRESETS:
        raise SystemExit(f"--shape {args.shape!r} is not a preset ({', '.join(PRESETS)})")
    source, base = fd.SOURCE, fd.default_flags()

    def use(i: int, src: Path | None, extra: tuple[str, ...]) -> None:
        fd.SOURCE = src or source
        # a macro of the variant's index keys the kernel's build cache (by flags) apart for each variant
        fd.default_flags = lambda: (*base, *extra, f"-DPUYU_AB_VARIANT={i}")

    try:
        for i, (name, src, extra) in enumerate(variants):  # every build before the (slow) model: errors first
            use(i, src, extra)
            try:
                fd.load()
            except fd.FusedDecodeUnavailable as e:
                raise SystemExit(f"--variant {name}: the kernel does not build: {e}") from None
        qb = _quant_bench()
        torch.set_num_threads(args.threads)
        print(f"[weights_ab] packing a {args.shape}-shaped model in {args.weights} (group {args.group}) ...", flush=True)
        model = qb.packed_random_model(args.shape, args.weights, args.group)
        rates: dict[str, list[float]] = {n: [] for n, _, _ in variants}
        order = list(enumerate(variants))
        for r in range(args.rounds):
            for i, (name, src, extra) in order if r % 2 == 0 else order[::-1]:
                use(i, src, extra)
                out = qb.decode_speed(model, args.prompt, args.new_tokens)
                if not out["decode_path"].startswith("fused"):
                    raise SystemExit(f"--variant {name} decoded on {out['decode_path']}, not the native kernel")
                rates[name].append(out["tok_s"])
                print(f"round {r} {name}: {out['tok_s']:.2f} tok/s, CPU {out['cpu_s_per_token'] * 1e3:.0f} ms/token, "
                      f"path {out['decode_path']}, load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        fd.SOURCE, fd.default_flags = source, lambda: base
    for name, v in rates.items():
        print(f"{name}: median {statistics.median(v):.2f} tok/s (min {min(v):.2f}, max {max(v):.2f}, {len(v)} rounds)")


if __name__ == "__main__":
    sys.exit(main())
