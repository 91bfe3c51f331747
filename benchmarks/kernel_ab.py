"""A/B of native-kernel build variants on the nano engine, alternated in the same minutes (medians, spreads).

    PUYU_KERNEL_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \\
      .venv/bin/python benchmarks/kernel_ab.py --rounds 10 \\
      --variant any=-DPUYU_PREEMPT_RULE=1 --variant off=-DPUYU_PREEMPT_RULE=0 --variant rate3=-DPUYU_PREEMPT_RULE=3

Each variant is `name=extra compiler flags` (added to the build of `PUYU_KERNEL_ISA`, default the CPU's
widest). Every round runs each variant once, in a fresh subprocess, in a rotated order (so no variant
always follows the same one); a run measures what `benchmarks/engine.py --nano-only` measures for puyu:
one stream's decode rate (best of 3, prefill excluded) and 16 concurrent requests' aggregate tokens/s
(best of 2, prefill included), nano preset with random weights (seed 0), prefix reuse off. Printed per
run as it finishes (with the 1-minute load average), then per variant: median, min and max.

On a shared machine the spread between rounds is large; only variants measured in the same minutes
compare, and the medians of many rounds are the figure to quote (with the load).
"""

from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def child(defines: list[str], args) -> dict:
    import torch

    import puyu.engine.fused_decode as fd
    from puyu.engine.sampling import SamplingParams
    from puyu.engine.scheduler import Engine
    from puyu.model.config import get_preset
    from puyu.model.transformer import InternLM2ForCausalLM

    base = fd.default_flags()
    fd.default_flags = lambda: (*base, *defines)  # the engine's kernel is built with the variant's flags
    if args.source:
        fd.SOURCE = Path(args.source)
    torch.set_num_threads(args.threads)
    model = InternLM2ForCausalLM(get_preset("nano")).reset_parameters(seed=0).eval()
    N, P, B = args.new_tokens, args.prompt_tokens, args.concurrent
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, model.config.vocab_size, (P,), generator=g).tolist() for _ in range(B)]
    eng = Engine(model, max_batch_size=B, cache_tokens=B * (P + N) + 1024, prefix_cache=False, threads=args.threads)
    params = SamplingParams(max_new_tokens=N, ignore_eos=True)
    eng.generate(prompts[:1], SamplingParams(max_new_tokens=4, ignore_eos=True))  # warm up

    def single() -> float:
        stamps = []
        for d in eng.stream(prompts[0], params):
            stamps += [time.perf_counter()] * len(d.token_ids)
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    def multi() -> float:
        t = time.perf_counter()
        eng.generate(prompts, params)
        return B * N / (time.perf_counter() - t)

    out = {"path": eng.stats()["decode_path"], "single": max(single() for _ in range(3)),
           "multi": max(multi() for _ in range(2))}
    eng.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", action="append", default=[], help="name=extra compiler flags (repeatable)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--concurrent", type=int, default=16)
    ap.add_argument("--json", help="also write every run to this file")
    ap.add_argument("--source", help="the C file to build (default: the kernel's; copied at the start, so edits "
                    "made while the A/B runs do not reach it)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child.split(), args)))
        return
    variants = [v.split("=", 1) if "=" in v else (v, "") for v in args.variant] or [("default", "")]
    import puyu.engine.fused_decode as fd

    frozen = Path(tempfile.mkdtemp(prefix="kernel_ab-")) / "fused_decode.c"
    frozen.write_text(Path(args.source or fd.SOURCE).read_text())
    fd.SOURCE = frozen
    for name, defines in variants:  # build every variant first (the builds are cached by source and flags)
        fd.load((*fd.default_flags(), *defines.split()))
        print(f"built {name}", flush=True)
    runs = []
    for r in range(args.rounds):
        for i in range(len(variants)):
            name, defines = variants[(i + r) % len(variants)]
            cmd = [sys.executable, __file__, f"--child={defines}", f"--source={frozen}", "--threads", str(args.threads),
                   "--new-tokens", str(args.new_tokens), "--prompt-tokens", str(args.prompt_tokens),
                   "--concurrent", str(args.concurrent)]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            res.update(variant=name, round=r, load1=os.getloadavg()[0])
            runs.append(res)
            print(f"round {r} {name:>10} {res['path']:>13}: single {res['single']:7.0f} tok/s  "
                  f"{args.concurrent} concurrent {res['multi']:7.0f} tok/s  (load {res['load1']:.2f})", flush=True)
    print()
    for name, _ in variants:
        mine = [x for x in runs if x["variant"] == name]
        for key in ("single", "multi"):
            v = [x[key] for x in mine]
            print(f"{name:>10} {key:>6}: median {statistics.median(v):7.0f}  min {min(v):7.0f}  max {max(v):7.0f}  "
                  f"(n={len(v)})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
