"""Will a model fit? Weights in their stored format + the KV cache for a context, against the memory this
process may use: the smaller of /proc/meminfo's MemAvailable and the cgroup's limit minus its usage
(cgroup v2 `memory.max` / `memory.current`, or v1 `memory.limit_in_bytes` / `memory.usage_in_bytes`).

`check_fits(cfg, weights, kv_bytes, context)` raises `MemoryCheckError` with the figures and the options
that shrink them (`--weights`, `--context`) before anything is loaded, instead of the process growing until
the kernel's OOM killer ends it without a message.
"""

from __future__ import annotations

from pathlib import Path

import torch

from puyu.errors import PuyuError
from puyu.model.config import ModelConfig
from puyu.model.quant import DEFAULT_GROUP, bytes_per_weight, layer_format
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


def check_fits(cfg: ModelConfig, weights: str = "f32", kv_bytes: int = 4, context: int | None = None,
               group: int = DEFAULT_GROUP, available: int | None = None) -> dict:
    """Raise MemoryCheckError unless weights + KV cache for `context` tokens (default: the model's
    max_position_embeddings) + HEADROOM fit in `available` (default: `available_bytes()`). -> the figures."""
    context = cfg.max_position_embeddings if context is None else context
    wb = weight_bytes(cfg, weights, group)
    kv = cfg.kv_bytes_per_token(kv_bytes) * context
    source = "given"
    if available is None:
        available, source = available_bytes()
    need = wb + kv + HEADROOM
    figures = {"weights_bytes": wb, "kv_bytes": kv, "context": context, "need_bytes": need,
               "available_bytes": available, "available_from": source}
    if need <= available:
        return figures
    options = []
    smaller = [f for f in ("bf16", "int8", "int4") if weight_bytes(cfg, f, group) < wb]
    for f in smaller:
        if weight_bytes(cfg, f, group) + kv + HEADROOM <= available:
            options.append(f"--weights {f} ({weight_bytes(cfg, f, group) / GIB:.2f} GiB of weights)")
            break
    else:
        if smaller:
            options.append(f"--weights {smaller[-1]} ({weight_bytes(cfg, smaller[-1], group) / GIB:.2f} GiB of weights)")
    room = available - HEADROOM - weight_bytes(cfg, smaller[-1] if smaller else weights, group)
    per_tok = cfg.kv_bytes_per_token(kv_bytes)
    if room > per_tok:
        options.append(f"a shorter --context (at most ~{room // per_tok:,} tokens with the smallest weights)")
    else:
        options.append("a shorter --context")
    raise MemoryCheckError(
        f"the model needs ~{need / GIB:.2f} GiB ({wb / GIB:.2f} GiB of {weights} weights + {kv / GIB:.2f} GiB of "
        f"KV cache for {context:,} tokens + {HEADROOM / GIB:.1f} GiB working memory) but ~{available / GIB:.2f} GiB "
        f"is available ({source}); try " + " or ".join(options))
