"""Training throughput: puyu's training step against Hugging Face `LlamaForCausalLM` in a plain loop.

    .venv/bin/python benchmarks/train.py                       # nano shape, batch 16 x 256, fp32 CPU
    .venv/bin/python benchmarks/train.py --preset nano --batch 16 --seq 256 --steps 20 --threads 2

Both models get the same shape (hidden, intermediate, layers, heads, kv heads, vocab, RoPE base), the
same random token batch and the same AdamW; each step is forward, cross-entropy over every position,
backward, clip, optimizer step. Reported per variant: median seconds per step, training tokens/s, and
model FLOPs utilisation (MFU) against this machine's measured fp32 matmul peak (the best of a few
square matmuls, measured before and after the runs, the best kept). FLOPs per token are 6 x matmul parameters (forward and backward)
plus 6 x layers x T x hidden for causal attention scores and values.

Variants: `hf` (LlamaForCausalLM, eager, its default attention, fp32), `puyu` (the training loop's
LossModel, eager, fp32), `hf-bf16` / `puyu-bf16` (the same under bf16 autocast, which the training
loop's `precision: auto` picks on CPUs with native bf16, like this one) and `puyu-compiled` (fp32 under
`torch.compile`). MFU is against the measured peak of the variant's matmul dtype. The variants run
interleaved, step by step in rotating order, so that load from other processes on a shared machine
falls on all of them alike. Prints one JSON line per variant and a summary; `--json FILE` writes them.

On a CPU without fast bf16 (no AVX512-BF16 / AMX: a bf16 matmul there is emulated, ~1 GFLOP/s against
~160 fp32 on an AVX2 core, so one bf16 step of the default shape takes minutes) the bf16 variants are
skipped with a note, by the same test as the training loop's `precision: auto`
(`puyu.train.pretrain.cpu_bf16_is_fast`); `--allow-slow-bf16` runs them anyway. Progress (peaks,
warm-up, each round) goes to stderr as it happens, flushed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def matmul_peak(dtype=torch.float32, seconds: float = 1.0) -> float:
    """Best matmul FLOP/s in `dtype` over a few square sizes (what this machine can do at most)."""
    best = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            a @ b
        t0, it = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            a @ b
            it += 1
        best = max(best, 2 * n**3 * it / (time.perf_counter() - t0))
    return best


def _note(msg: str) -> None:
    print(f"[train bench] {msg}", file=sys.stderr, flush=True)


def flops_per_token(cfg, seq: int) -> float:
    C, L, F_, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    H, K, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    matmul_params = L * (C * (H + 2 * K) * D + H * D * C + 3 * C * F_) + C * V
    return 6 * matmul_params + 6 * L * seq * C


def autocast_wrap(step_loss):
    """The same step under bf16 autocast (fp32 weights and optimizer, bf16 matmuls)."""
    def wrapped(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return step_loss(x, y)
    return wrapped


def hf_model(cfg):
    from transformers import LlamaConfig, LlamaForCausalLM

    hc = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                     num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                     num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
                     rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=False,
                     attention_bias=False)
    m = LlamaForCausalLM(hc).float().train()

    def step_loss(x, y):
        logits = m(input_ids=x).logits  # [B, T, V]
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))
    return m, step_loss


def puyu_model(cfg, compile_: bool):
    from puyu.model.transformer import InternLM2ForCausalLM
    from puyu.train.pretrain import LossModel

    net = LossModel(InternLM2ForCausalLM(cfg).reset_parameters(seed=0), doc_mask=False).train()
    fwd = torch.compile(net) if compile_ else net

    def step_loss(x, y):
        mask = torch.ones_like(x, dtype=torch.bool)
        loss_sum, n = fwd(x, y, mask, x, x)
        return loss_sum / n
    return net, step_loss


class Runner:
    """One variant's model, loss function and AdamW; `step()` runs one full training step."""

    def __init__(self, name: str, model, step_loss, x, y):
        self.name, self.model, self.step_loss, self.x, self.y = name, model, step_loss, x, y
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
                                     weight_decay=0.1, foreach=True)
        self.times: list[float] = []
        self.loss = float("nan")

    def step(self, record: bool) -> float:
        t0 = time.perf_counter()
        loss = self.step_loss(self.x, self.y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        self.loss = float(loss.detach())
        if record:
            self.times.append(dt)
        return dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--variants", default="hf,puyu,hf-bf16,puyu-bf16",
                    help="comma list of hf, hf-bf16, puyu, puyu-bf16, puyu-compiled")
    ap.add_argument("--json", default=None)
    ap.add_argument("--allow-slow-bf16", action="store_true",
                    help="run the bf16 variants even where this CPU has no fast bf16 (can take hours)")
    args = ap.parse_args(argv)
    from puyu.model.config import get_preset
    from puyu.train.pretrain import cpu_bf16_is_fast

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    cfg = get_preset(args.preset)
    variants = [v for v in args.variants.split(",") if v]
    bf16_fast = cpu_bf16_is_fast()
    if not bf16_fast and not args.allow_slow_bf16:
        skipped = [v for v in variants if v.endswith("-bf16")]
        variants = [v for v in variants if not v.endswith("-bf16")]
        if skipped:
            print(f"skipping {', '.join(skipped)}: this CPU has no fast bf16 matmul (precision: auto trains in "
                  "fp32 here; --allow-slow-bf16 runs them anyway)", flush=True)
    if not variants:
        ap.error("no variant left to run")
    use_bf16 = any(v.endswith("-bf16") for v in variants)
    _note(f"{args.preset}: batch {args.batch} x {args.seq}, {threads} thread(s), variants {', '.join(variants)}")
    peak = matmul_peak(torch.float32)
    peak_bf16 = matmul_peak(torch.bfloat16) if use_bf16 else float("nan")
    _note(f"matmul peak: fp32 {peak / 1e9:.0f} GFLOP/s" + (f", bf16 {peak_bf16 / 1e9:.0f} GFLOP/s" if use_bf16 else ""))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=g)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    fpt = flops_per_token(cfg, args.seq)
    runners = []
    for name in variants:
        torch.manual_seed(0)
        if name in ("hf", "hf-bf16"):
            model, fn = hf_model(cfg)
        elif name in ("puyu", "puyu-bf16", "puyu-compiled"):
            model, fn = puyu_model(cfg, compile_=name == "puyu-compiled")
        else:
            ap.error(f"unknown variant {name}")
        if name.endswith("-bf16"):
            fn = autocast_wrap(fn)
        runners.append(Runner(name, model, fn, x, y))
    first = {}
    for r in runners:  # warm-up, incl. compile
        first[r.name] = sum(r.step(record=False) for _ in range(args.warmup))
        _note(f"warm-up {r.name}: {first[r.name]:.1f} s for {args.warmup} step(s)")
    # Interleave the variants in rounds so that load from other processes on a shared machine falls
    # on all of them alike; report each variant's median step time.
    for i in range(args.steps):
        for r in runners[i % len(runners):] + runners[:i % len(runners)]:
            r.step(record=True)
        _note(f"round {i + 1}/{args.steps}: " + ", ".join(f"{r.name} {r.times[-1]:.3f} s" for r in runners))
    # Measure the peaks again after the runs and keep the best: on a shared machine a single
    # measurement can be depressed by another process, which would inflate MFU.
    peak = max(peak, matmul_peak(torch.float32))
    if use_bf16:
        peak_bf16 = max(peak_bf16, matmul_peak(torch.bfloat16))
    results = []
    for r in runners:
        s_step = statistics.median(r.times)
        tok_s = args.batch * args.seq / s_step
        p = peak_bf16 if r.name.endswith("-bf16") else peak
        res = {"variant": r.name, "s_per_step": s_step, "warmup_s": first[r.name], "loss": r.loss,
               "tokens_per_s": tok_s, "mfu": tok_s * fpt / p, "preset": args.preset, "batch": args.batch,
               "seq": args.seq, "threads": threads, "peak_gflops": p / 1e9}
        results.append(res)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}), flush=True)
    by = {r["variant"]: r for r in results}
    print(f"measured matmul peak ({threads} threads): fp32 {peak / 1e9:.0f} GFLOP/s"
          + (f", bf16 {peak_bf16 / 1e9:.0f} GFLOP/s" if use_bf16 else " (bf16 variants skipped)"))
    for name, r in by.items():
        line = f"{name:14s} {r['tokens_per_s']:>9,.0f} tok/s  MFU {100 * r['mfu']:5.1f}% of {r['peak_gflops']:.0f} GFLOP/s"
        if "hf" in by and name != "hf":
            line += f"  {r['tokens_per_s'] / by['hf']['tokens_per_s']:.2f}x HF fp32"
        if name.startswith("puyu") and name.endswith("-bf16") and "hf-bf16" in by:
            line += f"  {r['tokens_per_s'] / by['hf-bf16']['tokens_per_s']:.2f}x HF bf16"
        print(line, flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
