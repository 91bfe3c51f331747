"""Will a model fit? Weights in their stored format + the KV cache for a context, against the memory this
process may use: the smaller of /proc/meminfo's MemAvailable and the cgroup's limit minus its usage
(cgroup v2 `memory.max` / `memory.current`, or v1 `memory.limit_in_bytes` / `memory.usage_in_bytes`).

`check_fits(cfg, weights, kv, context)` raises `MemoryCheckError` with the figures and the options that
shrink them (`--weights`, `--kv`, a shorter `--context`) before anything is loaded, instead of the process
growing until the kernel's OOM killer ends it without a message. The KV cache is counted in its stored
format (`puyu.model.quant.kv_bytes_per_token`: f32, bf16, or int8 with its scales).
"""

from __future__ import annotations

from pathlib import Path

import torch

from puyu.errors import PuyuError
from puyu.model.config import ModelConfig
from puyu.model.quant import DEFAULT_GROUP, KV_FORMATS, bytes_per_weight, kv_bytes_per_token, layer_format
from puyu.model.transformer import InternLM2ForCausalLM

GIB = 1 << 30
HEADROOM = 512 << 20  # interpreter, torch, tokenizer and the prefill workspace of short prompts


class MemoryCheckError(PuyuError):
    """The model would not fit in the memory available (the message names the options that help)."""


def weight_bytes(cfg: ModelConfig, weights: str = "f32", group: int = DEFAULT_GROUP) -> int:
    """Bytes of the model's weights when its layers are stored in `weights` (`puyu.model.quant` formats;
    embeddings/head in `quant.head_format`, norms and biases float32). From the meta model's own shapes."""
    with torch.device("meta"):
        model = InternLM2ForCausalLM(cfg)
    return int(sum(p.numel() * bytes_per_weight(layer_format(n, weights), group) for n, p in model.named_parameters()))


def peak_rss_bytes() -> int:
    """This process's peak resident set in bytes: `VmHWM` from /proc/self/status.

    Unlike `getrusage().ru_maxrss`, which Linux carries over from the parent across fork and exec,
    VmHWM starts afresh in an exec'd child, so a benchmark's child reports its own peak. Falls back to
    ru_maxrss where /proc is absent.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_bytes() -> tuple[int, str]:
    """(bytes this process can still use, where the figure comes from)."""
    best, source = None, "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                best, source = int(line.split()[1]) * 1024, "MemAvailable"
    except (OSError, ValueError, IndexError):
        pass
    for limit_f, usage_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                             ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(Path(limit_f)), _read_int(Path(usage_f))
        if limit is not None and usage is not None and limit < 1 << 60:
            room = max(0, limit - usage)
            if best is None or room < best:
                best, source = room, f"cgroup limit {limit / GIB:.1f} GiB minus usage"
    if best is None:
        import os

        best, source = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free pages"
    return best, source


def check_fits(cfg: ModelConfig, weights: str = "f32", kv: str | int = "f32", context: int | None = None,
               group: int = DEFAULT_GROUP, available: int | None = None) -> dict:
    """Raise MemoryCheckError unless weights (stored as `weights`) + a KV cache of `context` tokens (default:
    the model's max_position_embeddings) stored as `kv` ("f32", "bf16", "int8"; or an element size in
    bytes, 4 or 2) + HEADROOM fit in `available` (default: `available_bytes()`). -> the figures.

    The message gives the figures and the options that make it fit, smallest change first: a smaller
    weight format, a smaller KV format, and the longest context that fits with the smallest of both."""
    if isinstance(kv, int):
        kv = {4: "f32", 2: "bf16"}[kv]
    context = cfg.max_position_embeddings if context is None else context
    wb = weight_bytes(cfg, weights, group)
    per_tok = kv_bytes_per_token(cfg, kv)
    kvb = per_tok * context
    source = "given"
    if available is None:
        available, source = available_bytes()
    need = wb + kvb + HEADROOM
    figures = {"weights_bytes": wb, "kv_bytes": kvb, "kv_format": kv, "context": context, "need_bytes": need,
               "available_bytes": available, "available_from": source}
    if need <= available:
        return figures
    options = []
    smaller_w = [f for f in ("bf16", "int8", "int4") if weight_bytes(cfg, f, group) < wb]
    smaller_kv = [f for f in KV_FORMATS if kv_bytes_per_token(cfg, f) < per_tok]
    w_small = weight_bytes(cfg, smaller_w[-1], group) if smaller_w else wb
    kv_small = kv_bytes_per_token(cfg, smaller_kv[-1]) if smaller_kv else per_tok
    # one change alone where one suffices (the smallest such), else the smallest formats of both
    w_fix = next((f for f in smaller_w if weight_bytes(cfg, f, group) + kvb + HEADROOM <= available), None)
    kv_fix = next((f for f in smaller_kv if wb + kv_bytes_per_token(cfg, f) * context + HEADROOM <= available), None)
    if w_fix:
        options.append(f"--weights {w_fix} ({weight_bytes(cfg, w_fix, group) / GIB:.2f} GiB of weights)")
    if kv_fix:
        options.append(f"--kv {kv_fix} ({kv_bytes_per_token(cfg, kv_fix) * context / GIB:.2f} GiB of KV cache)")
    if not w_fix and not kv_fix and (smaller_w or smaller_kv):
        both = " ".join(([f"--weights {smaller_w[-1]}"] if smaller_w else [])
                        + ([f"--kv {smaller_kv[-1]}"] if smaller_kv else []))
        fits = w_small + kv_small * context + HEADROOM <= available
        options.append(f"{both} ({(w_small + kv_small * context) / GIB:.2f} GiB" + (")" if fits else ", still too much)"))
    # the longest context: in the formats asked for, and in the smallest ones
    limits = []
    if available - HEADROOM - wb > per_tok:
        limits.append(f"~{(available - HEADROOM - wb) // per_tok:,} tokens as asked")
    smallest = " ".join(([f"--weights {smaller_w[-1]}"] if smaller_w else [])
                        + ([f"--kv {smaller_kv[-1]}"] if smaller_kv else []))
    if smallest and available - HEADROOM - w_small > kv_small:
        limits.append(f"~{(available - HEADROOM - w_small) // kv_small:,} with {smallest}")
    options.append("a shorter --context" + (f" (at most {', '.join(limits)})" if limits else ""))
    raise MemoryCheckError(
        f"the model needs ~{need / GIB:.2f} GiB ({wb / GIB:.2f} GiB of {weights} weights + {kvb / GIB:.2f} GiB of "
        f"{kv} KV cache for {context:,} tokens + {HEADROOM / GIB:.1f} GiB working memory) but ~{available / GIB:.2f} "
        f"GiB is available ({source}); try " + " or ".join(options))
