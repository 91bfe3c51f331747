"""Engine benchmarks, as ratios measured in one run (never timed tests).

    .venv/bin/python benchmarks/engine.py                     # everything, ~3-5 min on a 2-core CPU
    .venv/bin/python benchmarks/engine.py --skip-1_8b --long-prompt 8192 --new-tokens 64   # ~1 min

1. nano preset, greedy, same weights in Hugging Face transformers (`LlamaForCausalLM` loaded from a
   `puyu convert --to llama` copy): single-stream decode tokens/s, puyu Engine vs `generate`
   (decode rate = (N - 1) / (t(N tokens) - t(1 token)), so the prompt's prefill is not counted);
   16 concurrent requests through the engine, aggregate tokens/s vs transformers single stream
   (transformers batch-16 `generate` is shown too). The greedy tokens are checked to agree.
2. a randomly initialised internlm2-1_8b-shaped model in fp32: single-stream decode tokens/s against the
   roofline = measured memory read bandwidth / bytes read per token (every weight but the embedding
   table; the KV read is added, it is tiny at this length). The bandwidth is the fastest of 2-thread
   sums over a fresh 1 GiB buffer and over the weights, measured before and after the decode.
3. KV bytes per cached token vs theory 2 * layers * kv_heads * head_dim * 4 (fp32): the KV pool's
   resident pages (/proc/self/pagemap) per cached token, and the whole process's RSS growth from a
   P/2- to a P-token prompt per extra token (after a warm-up run; allocator noise included).
4. Peak RSS of a long prompt (nano; and a short one with the 1.8B shape), and from them the longest
   prompt that fits a 24 GiB machine: (24 GiB - everything but the KV cache) / KV bytes per token.
   The 24 GiB lengths are predictions from the measured figures, not runs (a 12M-token nano prefill
   takes days on a CPU).
5. prefix reuse (nano): 8 requests one after another sharing a long system prompt, wall time with and
   without it. Items 1-4 run with prefix reuse off, so repeated prompts are prefilled like transformers'.

The engine runs its default decode path, printed with the figures: the native kernel of
`puyu/fused_decode.py` where it builds (its instruction set is in the path's name: fused-avx512,
fused-avx2, fused-portable; `PUYU_KERNEL_ISA=avx2` forces the AVX2 build, which with
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` for torch measures an AVX2-only machine's figures on
an AVX-512 one), else `DecodeStep`.

Items 2-4 run in fresh subprocesses so each peak RSS is its own. GOMP_SPINCOUNT=1000 is set before torch
loads, as `puyu` does (see puyu/cli/__init__.py: a short spin, then sleep).
"""

from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

GIB = 1 << 30


def rss() -> int:
    """Current resident set size in bytes (after giving freed heap back to the OS)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def resident_bytes(t: torch.Tensor) -> int:
    """Bytes of a CPU tensor's pages that are resident, from /proc/self/pagemap (bit 63 = present)."""
    ps = os.sysconf("SC_PAGE_SIZE")
    first, last = t.data_ptr() // ps, (t.data_ptr() + t.nbytes - 1) // ps
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        raw = f.read((last - first + 1) * 8)
    entries = memoryview(raw).cast("Q")
    return sum(1 for e in entries if e >> 63) * ps


def peak_rss() -> int:
    from puyu.model.memory import peak_rss_bytes

    return peak_rss_bytes()


def random_model(preset: str, seed: int = 0):
    """A preset-shaped model with small uniform weights, built without the slow per-layer init."""
    from puyu.model.config import get_preset
    from puyu.model.transformer import InternLM2ForCausalLM

    with torch.device("meta"):
        m = InternLM2ForCausalLM(get_preset(preset))
    m = m.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.uniform_(-0.04, 0.04, generator=g)
    return m.eval()


def decode_rate(stamps: list[float]) -> float:
    """Tokens per second between the first and the last streamed token (prefill excluded)."""
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def stream_stamps(engine, ids: list[int], n: int) -> list[float]:
    from puyu.engine.sampling import SamplingParams

    stamps = []
    for d in engine.stream(ids, SamplingParams(max_new_tokens=n, ignore_eos=True)):
        stamps += [time.perf_counter()] * len(d.token_ids)
    return stamps


class Stamps:
    """A transformers streamer that only records when each new token arrives."""

    def __init__(self):
        self.stamps, self.first = [], True

    def put(self, value):
        if self.first:  # the prompt
            self.first = False
        else:
            self.stamps.append(time.perf_counter())

    def end(self):
        pass


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# ---- 1. nano vs transformers ----------------------------------------------------------------------------
def bench_nano(args) -> dict:
    from transformers import LlamaForCausalLM

    from puyu.engine.sampling import SamplingParams
    from puyu.engine.scheduler import Engine
    from puyu.model.checkpoint import save_pretrained
    from puyu.model.config import get_preset
    from puyu.model.convert import convert
    from puyu.model.transformer import InternLM2ForCausalLM

    model = InternLM2ForCausalLM(get_preset("nano")).reset_parameters(seed=0).eval()
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(model, Path(d) / "il2")
        convert(Path(d) / "il2", Path(d) / "llama", "llama")
        hf = LlamaForCausalLM.from_pretrained(Path(d) / "llama", dtype=torch.float32).eval()
    N, P, B = args.new_tokens, args.prompt_tokens, args.concurrent
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, model.config.vocab_size, (P,), generator=g).tolist() for _ in range(B)]

    def hf_gen(ids: list[list[int]], n: int, streamer=None):
        x = torch.tensor(ids)
        with torch.inference_mode():
            return hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=model.config.pad_token_id,
                               streamer=streamer)[:, x.shape[1]:]

    # No prefix reuse: repeated prompts would skip prefill, which transformers cannot do.
    eng = Engine(model, max_batch_size=max(B, 1), cache_tokens=B * (P + N) + 1024, prefix_cache=False)

    def ours(ids: list[list[int]], n: int):
        return eng.generate(ids, SamplingParams(max_new_tokens=n, ignore_eos=True))

    def hf_single_rate():
        st = Stamps()
        hf_gen(prompts[:1], N, st)
        return decode_rate(st.stamps)

    hf_gen(prompts[:1], 4), ours(prompts[:1], 4)  # warm up
    hf_single = max(hf_single_rate() for _ in range(3))
    pu_single = max(decode_rate(stream_stamps(eng, prompts[0], N)) for _ in range(3))
    pu_multi = B * N / timed(lambda: ours(prompts, N), repeat=2)
    hf_multi = B * N / timed(lambda: hf_gen(prompts, N), repeat=1)
    ref = hf_gen(prompts[:1], N)[0].tolist()
    got = ours(prompts[:1], N)[0].token_ids
    eos = model.config.eos_token_id
    cut = min([ref.index(eos)] if eos in ref else [N], default=N)
    path = eng.stats()["decode_path"]
    eng.close()
    return {"decode_path": path, "hf_single_tok_s": hf_single, "puyu_single_tok_s": pu_single,
            f"puyu_{B}_concurrent_tok_s": pu_multi, f"hf_batch{B}_tok_s": hf_multi,
            "single_ratio": pu_single / hf_single, "concurrent_ratio_vs_hf_single": pu_multi / hf_single,
            "greedy_tokens_agree": got[:cut] == ref[:cut], "agree_prefix": cut}


# ---- 5. prefix reuse ----------------------------------------------------------------------------------------
def bench_prefix(args) -> dict:
    """8 requests one after another (chat turns, agent steps) sharing a long system prompt, nano preset:
    wall time with prefix reuse against the same engine without it."""
    from puyu.engine.sampling import SamplingParams
    from puyu.engine.scheduler import Engine
    from puyu.model.config import get_preset
    from puyu.model.transformer import InternLM2ForCausalLM

    model = InternLM2ForCausalLM(get_preset("nano")).reset_parameters(seed=0).eval()
    g = torch.Generator().manual_seed(0)
    system = torch.randint(3, model.config.vocab_size, (args.shared_prefix,), generator=g).tolist()
    users = [torch.randint(3, model.config.vocab_size, (20,), generator=g).tolist() for _ in range(8)]
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    out = {}
    for reuse in (False, True):
        best = float("inf")
        for _ in range(2):
            with Engine(model, max_batch_size=8, cache_tokens=4 * (args.shared_prefix + 64) + 1024,
                        prefix_cache=reuse) as eng:
                eng.generate([users[0]], params)  # warm up
                t = time.perf_counter()
                for u in users:
                    eng.generate([system + u], params)
                best = min(best, time.perf_counter() - t)
                hits = eng.stats()["prefix_hit_tokens"]
        out["with" if reuse else "without"] = {"seconds": best, "prefix_hit_tokens": hits}
    out["speedup"] = out["without"]["seconds"] / out["with"]["seconds"]
    return out


# ---- 2-4. children -----------------------------------------------------------------------------------------
def child_long(args) -> dict:
    """nano: a long prompt through chunked prefill; resident KV bytes per token and peak RSS."""
    from puyu.engine.sampling import SamplingParams
    from puyu.engine.scheduler import Engine

    model = random_model("nano")
    P = args.long_prompt
    eng = Engine(model, max_batch_size=1, cache_tokens=P + 64, block_size=32, prefix_cache=False)
    ids = torch.randint(3, model.config.vocab_size, (P,), generator=torch.Generator().manual_seed(0)).tolist()
    one = SamplingParams(max_new_tokens=1)
    # Half-length prompts first (twice: the first run also warms the allocator), so the RSS growth to
    # the full prompt is what the extra cached tokens cost. The KV pool's own resident pages are
    # counted directly as well.
    eng.generate([ids[:P // 2]], one)
    eng.generate([ids[:P // 2]], one)
    base, base_tokens = rss(), eng.cache.blocks_for(P // 2 + 1) * eng.cache.block_size
    t = time.perf_counter()
    eng.generate([ids], one)
    dt = time.perf_counter() - t
    after, tokens = rss(), eng.cache.blocks_for(P + 1) * eng.cache.block_size
    resident = resident_bytes(eng.cache.k) + resident_bytes(eng.cache.v)
    theory = model.config.kv_bytes_per_token(4)
    return {"prompt": P, "prefill_s": dt, "prefill_tok_s": P / dt,
            "kv_bytes_per_token_rss": (after - base) / (tokens - base_tokens),
            "kv_bytes_per_token_resident": resident / tokens,
            "kv_bytes_per_token_theory": theory, "kv_bytes_per_token_cache": eng.cache.bytes_per_token,
            "kv_pool_bytes": eng.cache.k.nbytes + eng.cache.v.nbytes,
            "peak_rss_bytes": peak_rss(), "mask_bytes": eng.mask_bytes}


def child_big(args) -> dict:
    """1.8B shape fp32: memory bandwidth, decode tokens/s vs the roofline, peak RSS of a short prompt."""
    from puyu.engine.scheduler import Engine

    model = random_model("internlm2-1_8b")
    cfg = model.config
    weights = [p for n, p in model.named_parameters() if "tok_embeddings" not in n]
    weight_bytes = sum(p.nbytes for p in weights)

    def bandwidth() -> float:
        """The fastest read measured: a fresh 1 GiB buffer, or the weights themselves (2-thread sums).
        On this VM the same sum reads 50 GB/s in one process and 80 GB/s in another; taking the
        highest of both, before and after the decode, keeps the roofline an upper bound."""
        fresh = torch.empty(GIB // 4).uniform_()
        return max(GIB / timed(fresh.sum, repeat=5),
                   weight_bytes / timed(lambda: [p.sum() for p in weights], repeat=3))

    bw = bandwidth()
    P, N = args.big_prompt, args.big_new_tokens
    eng = Engine(model, max_batch_size=1, cache_tokens=P + N + 64, prefix_cache=False)
    ids = torch.randint(3, cfg.vocab_size, (P,), generator=torch.Generator().manual_seed(0)).tolist()
    t = time.perf_counter()
    stamps = stream_stamps(eng, ids, N)
    t1 = stamps[0] - t  # prefill and the first token
    tok_s = decode_rate(stamps)
    bw = max(bw, bandwidth())
    kv_read = (P + N / 2) * cfg.kv_bytes_per_token(4)
    roofline = bw / (weight_bytes + kv_read)
    return {"bandwidth_GBs": bw / 1e9, "weight_bytes_per_token": weight_bytes, "decode_tok_s": tok_s,
            "roofline_tok_s": roofline, "roofline_fraction": tok_s / roofline, "prompt": P,
            "prefill_s": t1, "peak_rss_bytes": peak_rss(), "kv_bytes_per_token": cfg.kv_bytes_per_token(4),
            "mask_bytes": eng.mask_bytes, "decode_path": eng.stats()["decode_path"]}


def run_child(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--threads", str(args.threads),
           "--long-prompt", str(args.long_prompt), "--big-prompt", str(args.big_prompt),
           "--big-new-tokens", str(args.big_new_tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fits_24gib(peak: int, prompt: int, per_token: int) -> int:
    """Longest prompt for a 24 GiB machine: the peak minus its KV part is the fixed cost."""
    fixed = peak - prompt * per_token
    return int((24 * GIB - fixed) // per_token)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens per request in the nano runs")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--concurrent", type=int, default=16)
    ap.add_argument("--long-prompt", type=int, default=32768, help="nano prompt for the KV / RSS figures")
    ap.add_argument("--big-prompt", type=int, default=256, help="1.8B prompt for the RSS figure")
    ap.add_argument("--big-new-tokens", type=int, default=12)
    ap.add_argument("--shared-prefix", type=int, default=1000, help="system prompt tokens in the prefix-reuse run")
    ap.add_argument("--skip-1_8b", action="store_true", help="skip the 1.8B roofline (needs ~9 GB RAM)")
    ap.add_argument("--nano-only", action="store_true", help="only item 1 (nano vs transformers)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps({"long": child_long, "big": child_big}[args.child](args)))
        return
    res = {"threads": args.threads, "torch": torch.__version__, "nano": bench_nano(args)}
    n = res["nano"]
    from puyu.engine.fused_decode import cpu_isas

    print(f"threads={args.threads}  torch {torch.__version__}  engine decode path: {n['decode_path']}  "
          f"(PUYU_KERNEL_ISA={os.environ.get('PUYU_KERNEL_ISA', 'unset')}; this CPU runs {sorted(cpu_isas())}; "
          f"torch ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'default')})")
    print(f"[nano] single stream: puyu {n['puyu_single_tok_s']:.0f} tok/s vs transformers "
          f"{n['hf_single_tok_s']:.0f} tok/s -> {n['single_ratio']:.2f}x (goal >= 5x)")
    c = args.concurrent
    print(f"[nano] {c} concurrent: puyu {n[f'puyu_{c}_concurrent_tok_s']:.0f} tok/s aggregate -> "
          f"{n['concurrent_ratio_vs_hf_single']:.1f}x transformers single stream (goal >= 30x); "
          f"transformers batch-{c} generate {n[f'hf_batch{c}_tok_s']:.0f} tok/s")
    print(f"[nano] greedy tokens agree with transformers over {n['agree_prefix']} tokens: {n['greedy_tokens_agree']}")
    if args.nano_only:
        return
    long = res["long"] = run_child("long", args)
    theory = long["kv_bytes_per_token_theory"]
    print(f"[nano] KV bytes/token (theory {theory}, cache accounting {long['kv_bytes_per_token_cache']}): "
          f"resident pages of the KV pool {long['kv_bytes_per_token_resident']:.0f} "
          f"({long['kv_bytes_per_token_resident'] / theory:.3f}x); whole-process RSS growth from a "
          f"{long['prompt'] // 2}- to a {long['prompt']}-token prompt {long['kv_bytes_per_token_rss']:.0f} "
          f"({long['kv_bytes_per_token_rss'] / theory:.3f}x) (goal <= 1.05x)")
    nano_max = fits_24gib(long["peak_rss_bytes"], long["prompt"], long["kv_bytes_per_token_theory"])
    print(f"[nano] {long['prompt']}-token prompt: prefill {long['prefill_tok_s']:.0f} tok/s, peak RSS "
          f"{long['peak_rss_bytes'] / GIB:.2f} GiB -> longest prompt in 24 GiB ~{nano_max:,} tokens (predicted)")
    res["nano_24gib_tokens"] = nano_max
    if not args.skip_1_8b:
        big = res["big"] = run_child("big", args)
        big_max = fits_24gib(big["peak_rss_bytes"], big["prompt"], big["kv_bytes_per_token"])
        res["big_24gib_tokens"] = big_max
        print(f"[1.8B fp32] decode {big['decode_tok_s']:.3f} tok/s; roofline {big['roofline_tok_s']:.3f} tok/s "
              f"({big['bandwidth_GBs']:.1f} GB/s / {big['weight_bytes_per_token'] / 1e9:.2f} GB per token) -> "
              f"{100 * big['roofline_fraction']:.0f}% (goal >= 80%)")
        print(f"[1.8B fp32] {big['prompt']}-token prompt: peak RSS {big['peak_rss_bytes'] / GIB:.2f} GiB -> "
              f"longest prompt in 24 GiB ~{big_max:,} tokens (predicted)")
    pre = res["prefix"] = bench_prefix(args)
    print(f"[nano] 8 requests in turn sharing a {args.shared_prefix}-token prefix: {pre['with']['seconds'] * 1e3:.0f} ms "
          f"with prefix reuse vs {pre['without']['seconds'] * 1e3:.0f} ms without -> {pre['speedup']:.1f}x "
          f"({pre['with']['prefix_hit_tokens']} prompt tokens adopted from the cache)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
