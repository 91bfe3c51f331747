"""A 200,000-token prompt through the engine's chunked prefill on the nano model: time and peak memory.

    nice -n 10 .venv/bin/python benchmarks/long_prefill.py --model runs/nano/longctx/hf --tokens 200000
    nice -n 10 .venv/bin/python benchmarks/long_prefill.py --model nano --tokens 20000     # a quick look

Never part of `make test` (minutes of CPU). The prompt is random token ids (a memory and speed measurement:
past the model's trained context its answer means nothing); the KV cache is reserved for prompt + 64 tokens,
the prompt is prefilled in chunks of --chunk tokens, then one token is decoded. Reported: time to first token,
prefill tokens/s (overall, and for the first and last chunk's share through the engine's stream), the KV
cache's size, and peak RSS as the kernel's high-water mark (VmHWM of /proc/self/status: the whole process,
interpreter and torch included), beside the load average (the machine may be shared).
"""

from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

GIB = 1 << 30


def vm(key: str) -> int:
    """A /proc/self/status figure in bytes (VmHWM: peak resident set; VmRSS: now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/nano/longctx/hf", help="checkpoint directory, GGUF file or preset")
    ap.add_argument("--weights", help="stored format of the linear layers (f32 default)")
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--chunk", type=int, default=2048, help="prompt tokens per prefill forward")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from puyu.engine.sampling import SamplingParams
    from puyu.engine.scheduler import Engine
    from puyu.model.checkpoint import load_model

    model = load_model(args.model, dtype="float32", device="cpu", weights=args.weights)
    cfg = model.config
    ids = torch.randint(3, cfg.vocab_size, (args.tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    rss_model = vm("VmRSS")
    kv_bytes = cfg.kv_bytes_per_token(4) * (args.tokens + 64)
    print(f"{args.model}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}; prompt {args.tokens:,} tokens in "
          f"chunks of {args.chunk}; KV cache {kv_bytes / GIB:.2f} GiB (float32); RSS after loading "
          f"{rss_model / GIB:.2f} GiB; threads {args.threads}; load {os.getloadavg()[0]:.1f}", flush=True)
    t0 = time.perf_counter()
    with Engine(model, max_batch_size=1, cache_tokens=args.tokens + 64, prefill_chunk=args.chunk,
                prefix_cache=False) as eng:
        out = []
        for d in eng.stream(ids, SamplingParams(max_new_tokens=1, ignore_eos=True)):
            out += d.token_ids
        ttft = time.perf_counter() - t0
        stats = eng.stats()
    res = {"model": args.model, "tokens": args.tokens, "chunk": args.chunk, "threads": args.threads,
           "first_token_s": ttft, "prefill_tok_s": args.tokens / ttft, "kv_bytes": kv_bytes,
           "peak_rss_bytes": vm("VmHWM"), "rss_after_load_bytes": rss_model, "load": os.getloadavg(),
           "decode_path": stats.get("decode_path"), "generated": out}
    print(f"first token after {ttft:.1f} s ({args.tokens / ttft:,.0f} prompt tokens/s); peak RSS (VmHWM) "
          f"{res['peak_rss_bytes'] / GIB:.2f} GiB; load {os.getloadavg()[0]:.1f}; path {res['decode_path']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
