"""Samples per second of `puyu eval` on arithmetic problems with the nano model: the local backend
(every sample submitted at once, continuous batching) vs one request at a time on the same engine, and
the API backend against `puyu serve` (uvicorn on a loopback port in this process, its own engine).

    .venv/bin/python benchmarks/eval.py [--model runs/nano/sft/hf] [--n 256] [--concurrency 16]

Without a trained model (`--model` missing) the nano preset's shapes are used with random weights and
the nano recipe's tokenizer (`--tokenizer`, default runs/nano/tokenizer): decode speed depends on the
shapes, not the weights, and random weights always use the whole budget (8 new tokens), so the three
sides do exactly the same work. The same 256 prompts (operands < 100, < 1000, < 10^4; the raw prompt
`<s>12+34=`) and greedy decoding on every side. `--avx2` measures the AVX2-only path on an AVX-512
CPU: torch with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 and the native decode kernel built with
`-mavx2 -mfma` instead of `-march=native`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
if "--avx2" in sys.argv:  # before torch is imported
    os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
    os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    from puyu.engine import fused_decode

    AVX2 = ("-O3", "-mavx2", "-mfma", "-funroll-loops", "-fno-math-errno", "-fPIC", "-shared", "-pthread")
    fused_decode.load.__defaults__ = (AVX2,)
    d = fused_decode.FusedDecode.__init__.__defaults__
    fused_decode.FusedDecode.__init__.__defaults__ = (*d[:-1], AVX2)


def build_model(args) -> str:
    if args.model and Path(args.model).exists():
        return args.model
    from puyu.model.checkpoint import save_pretrained
    from puyu.model.config import get_preset
    from puyu.model.tokenizer import load_tokenizer
    from puyu.model.transformer import InternLM2ForCausalLM

    tok = load_tokenizer(args.tokenizer)
    out = Path(tempfile.mkdtemp(prefix="puyu-bench-eval-")) / "nano-random"
    cfg = get_preset("nano", vocab_size=tok.vocab_size)
    save_pretrained(InternLM2ForCausalLM(cfg).reset_parameters(seed=0), out, tokenizer=tok)
    print(f"no trained model at {args.model}: random-weight nano ({cfg.vocab_size} vocab) in {out}")
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "runs/nano/sft/hf"))
    ap.add_argument("--tokenizer", default=str(ROOT / "runs/nano/tokenizer"))
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--skip-api", action="store_true")
    ap.add_argument("--avx2", action="store_true", help="the AVX2-only path (see the module docstring)")
    args = ap.parse_args()

    from puyu.eval import Context, get_task
    from puyu.eval.backends import APIBackend, LocalBackend

    model = build_model(args)
    local = LocalBackend(model, max_batch_size=64)
    per = -(-args.n // 3)
    samples = get_task("arithmetic").samples(Context(seed=0, tokenizer=local.tokenizer, options={"n": str(per)}))
    samples = samples[: args.n]
    items = [(s, 0) for s in samples]
    gen = {"max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    local.generate(items[:8], gen, lambda i, r: None)  # warm-up (kernel build, caches)

    def timed(label, fn) -> float:
        got = []
        t0 = time.perf_counter()
        fn(lambda i, r: got.append(r))
        dt = time.perf_counter() - t0
        assert len(got) == len(items), (label, len(got))
        toks = sum(r["completion_tokens"] or 0 for r in got)
        print(f"{label:<28} {len(items) / dt:8.1f} samples/s  ({dt:.2f} s, {toks} new tokens)")
        return len(items) / dt

    batched = timed("local, all at once", lambda cb: local.generate(items, gen, cb))

    def one_by_one(cb):
        for it in items:
            local.generate([it], gen, cb)

    single = timed("local, one at a time", one_by_one)
    print(f"batched / one at a time: {batched / single:.1f}x")
    if not args.skip_api:
        sys.path.insert(0, str(ROOT / "tests"))
        from serving_fixtures import ServerThread

        from puyu.engine.scheduler import Engine
        from puyu.serve.app import create_app

        engine = Engine(local.model, local.tokenizer, max_batch_size=64)
        srv = ServerThread(create_app(engine, local.tokenizer, "nano"))
        try:
            api = APIBackend(srv.url, concurrency=args.concurrency)
            api_items = [(s, 0) for s in samples]
            for s in samples:
                s.prompt_ids = None  # the endpoint gets the text prompt; the server adds <s>
            api.generate(api_items[:8], gen, lambda i, r: None)
            rate = timed(f"API, {args.concurrency} in flight", lambda cb: api.generate(api_items, gen, cb))
            print(f"API / local all at once: {rate / batched:.2f}x")
            api.close()
        finally:
            srv.stop()
            engine.close()
    local.close()
    import torch

    print(f"CPU: {os.cpu_count()} logical cores visible; torch threads {torch.get_num_threads()}; "
          f"torch ISA {torch.backends.cpu.get_cpu_capability()}; decode path {local.engine.decode_path}")


if __name__ == "__main__":
    main()
