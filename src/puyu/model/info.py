"""`puyu info PATH_OR_PRESET`: parameter count by module group, weight bytes per dtype, KV-cache bytes per
token (float32, bfloat16, float16, and int8 with its per-token-and-head scales), and the memory needed at a
context length (`--weights`, `--kv`: the formats the engine stores; `puyu info internlm2-7b --weights int4
--kv int8 --context 200000`). Counts come from instantiating the model on the meta
device (no memory), so they are the module's own numbers, not a formula's."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from puyu.errors import PuyuError
from puyu.model.config import PRESETS, ModelConfig, get_preset
from puyu.model.transformer import InternLM2ForCausalLM

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GROUPS = [("embeddings", "model.tok_embeddings."), ("attention", ".attention."),
          ("feed_forward", ".feed_forward."), ("norms", "norm."), ("output", "output.")]


def resolve_config(path_or_preset: str) -> ModelConfig:
    p = Path(path_or_preset)
    from puyu.model.gguf_file import gguf_config, is_gguf, memory_hint

    if is_gguf(p):  # the format its linear layers load as is recorded for the memory check
        cfg = gguf_config(p)
        cfg.extra["puyu_quantization"] = memory_hint(p)
        return cfg
    if p.is_dir() or p.name == "config.json":
        from puyu.model.awq import DEFAULT_FORMAT, DEFAULT_GROUP, awq_settings
        from puyu.model.llama_layout import config_from_llama, detect_layout

        d = p if p.is_dir() else p.parent
        if detect_layout(d) == "llama":
            return config_from_llama(json.loads((d / "config.json").read_text(encoding="utf-8")))
        cfg = ModelConfig.load(p)
        if awq_settings(d, cfg.extra) is not None:  # loads as int4 (group 32) by default: for the memory check
            cfg.extra["puyu_quantization"] = {"weights": DEFAULT_FORMAT, "group": DEFAULT_GROUP}
        return cfg
    if path_or_preset in PRESETS:
        return get_preset(path_or_preset)
    raise PuyuError(f"{path_or_preset!r} is neither a checkpoint directory nor a preset ({', '.join(PRESETS)})")


def parameter_groups(cfg: ModelConfig) -> dict[str, int]:
    with torch.device("meta"):
        model = InternLM2ForCausalLM(cfg)
    counts = {g: 0 for g, _ in GROUPS}
    for name, p in model.named_parameters():
        for group, marker in GROUPS:
            if marker in name or name.startswith(marker):
                counts[group] += p.numel()
                break
        else:
            raise AssertionError(f"parameter {name} fits no group")
    counts["total"] = sum(counts.values())
    return counts


def summary(cfg: ModelConfig, context: int = 4096, kv_dtype: str = "bfloat16",
            weight_dtype: str = "bfloat16", weights: str | None = None, group: int = 64, kv: str | None = None) -> dict:
    """weights: a packed format of `puyu.model.quant` (bf16/int8/int4, embeddings and head as loading stores
    them) that replaces weight_dtype in the totals; kv: a KV cache format of the engine (f32/bf16/int8) that
    replaces kv_dtype."""
    from puyu.model.memory import weight_bytes as packed_bytes
    from puyu.model.quant import check_kv_format, kv_bytes_per_token

    groups = parameter_groups(cfg)
    total = groups["total"]
    weight_bytes = {dt: total * b for dt, b in DTYPE_BYTES.items()}
    if weights is not None:
        weight_dtype = f"packed {weights}" + (f" (group {group})" if weights == "int4" else "")
        weight_bytes[weight_dtype] = packed_bytes(cfg, weights, group)
    kv_tok = {dt: cfg.kv_bytes_per_token(b) for dt, b in DTYPE_BYTES.items()}
    kv_tok["int8"] = kv_bytes_per_token(cfg, "int8")  # scales included
    if kv is not None:
        check_kv_format(kv)
        kv_dtype = {"f32": "float32", "bf16": "bfloat16", "int8": "int8"}[kv]
    kv_ctx = kv_tok[kv_dtype] * context
    # Working memory of one prefill chunk of 2,048 tokens is small next to these; logits of one
    # position (vocab x 4 bytes) likewise. Reported separately so the sum stays honest.
    chunk = 2048
    act = chunk * (cfg.hidden_size * 4 + cfg.intermediate_size * 2 + cfg.vocab_size) * 4
    return {
        "config": {"hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size,
                   "layers": cfg.num_hidden_layers, "heads": cfg.num_attention_heads,
                   "kv_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim, "vocab": cfg.vocab_size,
                   "max_position_embeddings": cfg.max_position_embeddings, "rope_theta": cfg.rope_theta,
                   "rope_scaling": cfg.rope_scaling},
        "parameters": groups,
        "weight_bytes": weight_bytes,
        "kv_bytes_per_token": kv_tok,
        "context": context,
        "kv_dtype": kv_dtype,
        "weight_dtype": weight_dtype,
        "kv_bytes_at_context": kv_ctx,
        "activation_bytes_prefill_chunk_fp32": act,
        "total_bytes_at_context": weight_bytes[weight_dtype] + kv_ctx + act,
    }


def _gib(n: int) -> str:
    return f"{n / 2**30:,.2f} GiB"


def format_summary(s: dict) -> str:
    lines = []
    c = s["config"]
    lines.append(f"layers {c['layers']}, hidden {c['hidden']}, intermediate {c['intermediate']}, heads "
                 f"{c['heads']} (kv {c['kv_heads']}, head_dim {c['head_dim']}), vocab {c['vocab']}, "
                 f"rope_theta {c['rope_theta']:g}, rope_scaling {c['rope_scaling']}")
    lines.append("")
    lines.append(f"{'parameters':<16}{'count':>18}{'share':>9}")
    total = s["parameters"]["total"]
    for g, n in s["parameters"].items():
        lines.append(f"{g:<16}{n:>18,}{100 * n / total:>8.1f}%")
    lines.append("")
    lines.append(f"{'dtype':<16}{'weights':>18}{'KV / token':>16}")
    for dt in DTYPE_BYTES:
        lines.append(f"{dt:<16}{_gib(s['weight_bytes'][dt]):>18}{s['kv_bytes_per_token'][dt] / 1024:>13,.1f} KiB")
    lines.append(f"{'int8 KV':<16}{'':>18}{s['kv_bytes_per_token']['int8'] / 1024:>13,.1f} KiB  (scale per token and head)")
    lines.append("")
    lines.append(f"at context {s['context']:,} tokens ({s['weight_dtype']} weights, {s['kv_dtype']} KV cache):")
    lines.append(f"  weights            {_gib(s['weight_bytes'][s['weight_dtype']]):>14}")
    lines.append(f"  KV cache           {_gib(s['kv_bytes_at_context']):>14}")
    lines.append(f"  prefill workspace  {_gib(s['activation_bytes_prefill_chunk_fp32']):>14}  (2,048-token chunk, fp32)")
    lines.append(f"  total              {_gib(s['total_bytes_at_context']):>14}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint directory or preset (" + ", ".join(PRESETS) + ")")
    p.add_argument("--context", type=int, default=4096, help="context length for the memory estimate")
    p.add_argument("--kv-dtype", default="bfloat16", choices=list(DTYPE_BYTES))
    p.add_argument("--weight-dtype", default="bfloat16", choices=list(DTYPE_BYTES))
    p.add_argument("--weights", choices=["bf16", "int8", "int4"],
                   help="packed format for the totals (as `--weights` loads it; overrides --weight-dtype)")
    p.add_argument("--group", type=int, default=64, help="int4 group size")
    p.add_argument("--kv", choices=["f32", "bf16", "int8"],
                   help="KV cache format for the totals (as `--kv` stores it; overrides --kv-dtype)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    if args.context <= 0:
        raise PuyuError("--context must be positive")
    if args.weights:
        from puyu.model.quant import check_format

        check_format(args.weights, args.group)  # the group sizes the loader accepts, nothing else
    s = summary(resolve_config(args.model), args.context, args.kv_dtype, args.weight_dtype, args.weights, args.group,
                args.kv)
    print(json.dumps(s, indent=2) if args.json else format_summary(s))
    return 0
