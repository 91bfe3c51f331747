"""Do GRPO-shaped rollouts gain from the engine's prefix cache? (issue 13)

    python benchmarks/rl_prefix_cache.py MODEL_DIR [--reps 2] [--iterations 4]

Each iteration samples 8 prompts x 8 replies (24 new tokens, temperature 1) through one engine, then
changes the weights in place as an optimizer step would (so the weights fingerprint must flush cached
prefixes). Prints the seconds of all iterations with and without the prefix cache, best of `--reps`.
"""

from __future__ import annotations

import argparse
import time

import torch

from puyu.engine.sampling import SamplingParams
from puyu.engine.scheduler import Engine
from puyu.model.checkpoint import load_model
from puyu.model.tokenizer import load_tokenizer
from puyu.rl.rollout import generate_rollouts
from puyu.tasks.verifiable import rl_prompts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = load_tokenizer(a.model)
    model = load_model(a.model, dtype="float32", device="cpu").eval()
    params = SamplingParams(max_new_tokens=24, temperature=1.0)
    best: dict[bool, float] = {}
    for _ in range(a.reps):
        for cache in (False, True):
            engine = Engine(model, tok, max_batch_size=64, prefix_cache=cache)
            total = 0.0
            for it in range(a.iterations):
                prompts = rl_prompts(f"bench-{it}", 8, {"arithmetic": 0.7, "tool": 0.3}, set())
                t0 = time.perf_counter()
                generate_rollouts(engine, tok, [s for s in prompts for _ in range(8)], params, seed=it)
                total += time.perf_counter() - t0
                with torch.no_grad():
                    model.model.norm.weight.mul_(1.0 + 1e-6)
            engine.close()
            best[cache] = min(best.get(cache, float("inf")), total)
    print(f"without prefix cache {best[False]:.2f} s, with {best[True]:.2f} s "
          f"({a.iterations} iterations of 64 rollouts, best of {a.reps})")


if __name__ == "__main__":
    main()
