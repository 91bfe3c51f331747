"""`puyu quantize SRC DST --weights int4`: a float checkpoint (InternLM2 or LLaMA layout, bf16/fp16/fp32) read
tensor by tensor and written packed (`puyu.model.checkpoint.save_quantized` documents the format), so it loads
again (`puyu.load_model(DST)`, `--model DST`) without re-quantizing."""

from __future__ import annotations

import argparse
from pathlib import Path

from puyu.errors import PuyuError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="float checkpoint directory")
    p.add_argument("dst", help="output directory (created; weight files in it are replaced)")
    p.add_argument("--weights", required=True, choices=["bf16", "int8", "int4"],
                   help="format of the linear layers (embeddings and head: int8 for int8/int4, bf16 for bf16)")
    p.add_argument("--group", type=int, default=64, help="int4 group size: 32, 64 or 128 (default 64)")


def run(args: argparse.Namespace) -> int:
    from puyu.model.checkpoint import save_quantized, weight_map

    src, dst = Path(args.src), Path(args.dst)
    if not src.is_dir():
        raise PuyuError(f"{src} is not a checkpoint directory")
    if src.resolve() == dst.resolve():
        raise PuyuError("DST must differ from SRC (the float weights are read while the packed ones are written)")
    weight_map(src)  # a clear error for a directory without weights
    out = save_quantized(src, dst, args.weights, args.group)
    total = sum(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors")
    print(f"wrote {out} ({args.weights} weights, {_size(total)})")
    return 0


def _size(n: int) -> str:
    """`n` bytes in GiB from 1 GiB up, else MiB from 1 MiB up, else KiB, two decimals (a nano model's few
    MiB read "0.00 GiB" when every size was in GiB)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n / 2**10:.2f} KiB"
