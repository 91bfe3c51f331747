"""Peak RSS while loading a checkpoint of at least 1 GB, as a ratio to the checkpoint's bytes
(goal <= 1.3), with Hugging Face transformers loading the same weights (LLaMA layout) as the peer.

    .venv/bin/python benchmarks/load.py [--layers 6] [--runs 3] [--dir /tmp/puyu-load-bench]

Each load runs in a fresh subprocess; peak RSS is that process's `ru_maxrss`. The ratio is reported
both for the whole process and net of the interpreter + torch import baseline measured in the same
process just before loading. Medians of --runs runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024
which, path = sys.argv[1], sys.argv[2]
if which == 'puyu':
    import puyu.model.checkpoint as ck
else:
    import transformers
base = rss()
t0 = time.perf_counter()
if which == 'puyu':
    m = ck.load_model(path, dtype='bfloat16', device='cpu')
else:
    m = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16, low_cpu_mem_usage=True)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
# Touch every weight once (what the first forward pass does): memory-mapped loaders only pay here.
for p in m.parameters():
    p.view(torch.int16).max()  # max keeps the dtype: no large temporary
touched = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({'base': base, 'peak': peak, 'touched': touched, 'seconds': dt}))
"""


def make_checkpoint(d: Path, layers: int) -> None:
    import torch

    from puyu.model.checkpoint import write_state_dict
    from puyu.model.config import get_preset
    from puyu.model.convert import convert
    from puyu.model.transformer import InternLM2ForCausalLM

    if not (d / "il2" / "config.json").exists():
        cfg = get_preset("internlm2-1_8b", num_hidden_layers=layers, torch_dtype="bfloat16")
        with torch.device("meta"):
            shapes = {k: p.shape for k, p in InternLM2ForCausalLM(cfg).named_parameters()}
        g = torch.Generator().manual_seed(0)
        sd = {k: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
        write_state_dict(sd, d / "il2", max_shard_bytes=500_000_000)
        cfg.save(d / "il2")
        del sd
        convert(d / "il2", d / "llama", to="llama", max_shard_bytes=500_000_000)


def measure(which: str, path: Path, runs: int) -> dict:
    out = []
    for _ in range(runs):
        r = subprocess.run([sys.executable, "-c", CHILD, which, str(path)], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"{which} load failed:\n{r.stderr[-2000:]}")
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return {k: statistics.median(o[k] for o in out) for k in out[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6, help="1.8B-shaped layers (6 -> ~1.5 GB in bf16)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/puyu-load-bench")
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    d = Path(args.dir)
    if args.make_only:
        make_checkpoint(d, args.layers)
        return
    # Build the checkpoint in another process: ru_maxrss survives fork+exec, so a parent that held the
    # weights would inflate every child's peak.
    subprocess.run([sys.executable, __file__, "--make-only", "--layers", str(args.layers), "--dir", str(d)], check=True)
    ckpt_bytes = sum(f.stat().st_size for f in (d / "il2").glob("*.safetensors"))
    print(f"checkpoint: {ckpt_bytes / 1e9:.2f} GB of bf16 safetensors ({args.layers} layers of the 1.8B shape)")
    rows = {"puyu": measure("puyu", d / "il2", args.runs), "transformers": measure("hf", d / "llama", args.runs)}
    print(f"{'loader':<14}{'peak RSS':>10}{'ratio':>7}{'net':>7}{'after touching weights':>24}{'ratio':>7}{'seconds':>9}")
    for name, r in rows.items():
        print(f"{name:<14}{r['peak'] / 1e9:>8.2f}GB{r['peak'] / ckpt_bytes:>7.2f}"
              f"{(r['peak'] - r['base']) / ckpt_bytes:>7.2f}{r['touched'] / 1e9:>22.2f}GB"
              f"{r['touched'] / ckpt_bytes:>7.2f}{r['seconds']:>9.2f}")
    print(f"puyu / transformers peak RSS after touching weights: "
          f"{rows['puyu']['touched'] / rows['transformers']['touched']:.2f}x (goal: puyu ratio <= 1.3)")


if __name__ == "__main__":
    main()
