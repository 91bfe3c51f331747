"""All renaming between the InternLM2 checkpoint layout and the LLaMA layout lives here.

Both layouts use the same "rotate half" RoPE, so q/k weights are copied as they are; only the packed
`wqkv` is split into (or packed from) q_proj, k_proj, v_proj. Pure functions on configs and state dicts;
`puyu.model.checkpoint` loads LLaMA-layout directories through them and `puyu.model.convert` writes
converted directories.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from puyu.errors import CheckpointError, ConfigError
from puyu.model.config import ModelConfig, config_object

_LAYER_RENAMES = [  # (InternLM2 suffix, LLaMA suffix) inside model.layers.{i}.
    ("attention.wo", "self_attn.o_proj"),
    ("feed_forward.w1", "mlp.gate_proj"),
    ("feed_forward.w3", "mlp.up_proj"),
    ("feed_forward.w2", "mlp.down_proj"),
    ("attention_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
]
_TOP_RENAMES = [("model.tok_embeddings.weight", "model.embed_tokens.weight"),
                ("model.norm.weight", "model.norm.weight"), ("output.weight", "lm_head.weight")]


def pack_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """q [H*D, ...], k/v [K*D, ...] (weights or biases) -> wqkv [(H + 2K) * D, ...]."""
    K, n_rep, D = cfg.num_key_value_heads, cfg.n_rep, cfg.head_dim
    tail = q.shape[1:]
    q = q.reshape(K, n_rep, D, *tail)
    k = k.reshape(K, 1, D, *tail)
    v = v.reshape(K, 1, D, *tail)
    return torch.cat([q, k, v], dim=1).reshape((K * (n_rep + 2) * D, *tail))


def unpack_wqkv(wqkv: torch.Tensor, cfg: ModelConfig):
    """Inverse of `pack_wqkv`: wqkv [(H + 2K) * D, ...] -> q [H*D, ...], k [K*D, ...], v [K*D, ...]."""
    K, n_rep, D = cfg.num_key_value_heads, cfg.n_rep, cfg.head_dim
    tail = wqkv.shape[1:]
    g = wqkv.reshape(K, n_rep + 2, D, *tail)
    q = g[:, :n_rep].reshape(K * n_rep * D, *tail)
    return q, g[:, n_rep].reshape(K * D, *tail), g[:, n_rep + 1].reshape(K * D, *tail)


# ---- configs ---------------------------------------------------------------------------------
def config_to_llama(cfg: ModelConfig) -> dict:
    d = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps, "hidden_act": "silu",
        "attention_bias": cfg.bias, "mlp_bias": False, "tie_word_embeddings": False,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
        "torch_dtype": cfg.torch_dtype, "attention_dropout": 0.0, "initializer_range": 0.02,
    }
    if cfg.rope_scaling:
        # Both key spellings: older transformers read "type", newer read "rope_type".
        d["rope_scaling"] = {"type": cfg.rope_type, "rope_type": cfg.rope_type, "factor": cfg.rope_factor}
    else:
        d["rope_scaling"] = None
    return d


def config_from_llama(d: dict) -> ModelConfig:
    if d.get("model_type") != "llama":
        raise ConfigError(f"expected a LLaMA config (model_type 'llama'), got {d.get('model_type')!r}")
    if d.get("mlp_bias"):
        raise ConfigError("LLaMA config has mlp_bias=true, which InternLM2 does not support")
    if d.get("tie_word_embeddings"):
        raise ConfigError("LLaMA config has tie_word_embeddings=true, which InternLM2 does not support")
    hd = d.get("head_dim")
    if hd is not None and hd != d["hidden_size"] // d["num_attention_heads"]:
        raise ConfigError(f"LLaMA config head_dim {hd} != hidden_size / num_attention_heads; not representable")
    rs = d.get("rope_scaling") or d.get("rope_parameters")
    if rs and (rs.get("type") or rs.get("rope_type")) in (None, "default"):
        rs = None
    if rs:
        rs = {"type": rs.get("type") or rs.get("rope_type"), "factor": rs.get("factor")}
    eos = d.get("eos_token_id", 2)
    return ModelConfig(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_hidden_layers=d["num_hidden_layers"], num_attention_heads=d["num_attention_heads"],
        num_key_value_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        rope_theta=float(d.get("rope_theta", 10000.0)), rope_scaling=rs, rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        bias=bool(d.get("attention_bias", False)), bos_token_id=d.get("bos_token_id", 1),
        eos_token_id=eos[0] if isinstance(eos, list) else eos, pad_token_id=d.get("pad_token_id") or 2,
        torch_dtype=str(d.get("torch_dtype") or d.get("dtype") or "float32").replace("torch.", ""),
    )


# ---- state dicts -----------------------------------------------------------------------------
def state_dict_to_llama(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
        if m:
            i, mod, kind = m.groups()
            pre = f"model.layers.{i}."
            if mod == "attention.wqkv":
                q, k, v = unpack_wqkv(t, cfg)
                out[pre + f"self_attn.q_proj.{kind}"] = q
                out[pre + f"self_attn.k_proj.{kind}"] = k
                out[pre + f"self_attn.v_proj.{kind}"] = v
                continue
            for a, b in _LAYER_RENAMES:
                if mod == a:
                    out[pre + f"{b}.{kind}"] = t
                    break
            else:
                raise CheckpointError(f"unexpected key {name!r} in InternLM2 checkpoint")
            continue
        for a, b in _TOP_RENAMES:
            if name == a:
                out[b] = t
                break
        else:
            raise CheckpointError(f"unexpected key {name!r} in InternLM2 checkpoint")
    return out


def state_dict_from_llama(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, t in sd.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue  # a buffer some old exports saved; derived, not a weight
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
        if m:
            i, mod, kind = m.groups()
            pre = f"model.layers.{i}."
            if mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                pending.setdefault((pre, kind), {})[mod[10]] = t
                continue
            for a, b in _LAYER_RENAMES:
                if mod == b:
                    out[pre + f"{a}.{kind}"] = t
                    break
            else:
                raise CheckpointError(f"unexpected key {name!r} in LLaMA checkpoint")
            continue
        for a, b in _TOP_RENAMES:
            if name == b:
                out[a] = t
                break
        else:
            raise CheckpointError(f"unexpected key {name!r} in LLaMA checkpoint")
    for (pre, kind), parts in pending.items():
        missing = [f"{p}_proj" for p in "qkv" if p not in parts]
        if missing:
            raise CheckpointError(f"LLaMA checkpoint lacks {', '.join(pre + 'self_attn.' + x + '.' + kind for x in missing)}")
        out[pre + f"attention.wqkv.{kind}"] = pack_wqkv(parts["q"], parts["k"], parts["v"], cfg)
    return out


def detect_layout(path: str | Path) -> str:
    """'internlm2' or 'llama', from config.json's model_type."""
    p = Path(path) / "config.json"
    if not p.exists():
        raise CheckpointError(f"no config.json in {path}")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p} is not valid JSON: {e}") from None
    mt = config_object(raw, p).get("model_type")
    if mt not in ("internlm2", "llama"):
        raise ConfigError(f"{p}: model_type {mt!r} is neither 'internlm2' nor 'llama'")
    return mt
