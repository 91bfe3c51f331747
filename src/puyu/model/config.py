"""`ModelConfig`: the InternLM2 architecture, read from and written to Hugging Face `config.json`,
plus named presets (the three released shapes and nano shapes for CPU work).

Architecture only: run-time knobs (dtype, device, cache size) live with the code that uses them."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from puyu.errors import ConfigError

# Keys that real InternLM2 / transformers configs carry and that do not change the architecture.
_IGNORED_KEYS = {
    "architectures", "auto_map", "attn_implementation", "hidden_act", "use_cache", "transformers_version",
    "initializer_range", "pretraining_tp", "model_type", "_name_or_path", "torch_dtype", "dtype",
}


def config_object(d: Any, path: str | Path) -> dict:
    """`d` (config.json's parsed content) when it is a JSON object; ConfigError naming what else it is."""
    if not isinstance(d, dict):
        kind = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(d), "null")
        raise ConfigError(f"{path} holds a JSON {kind}, not an object of model settings")
    return d


@dataclass
class ModelConfig:
    """Mirrors InternLM2 `config.json`. Defaults are the released 7B shape."""

    vocab_size: int = 92544
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rope_scaling: dict | None = None  # None, or {"type": "linear"|"dynamic", "factor": float >= 1}
    rms_norm_eps: float = 1e-5
    bias: bool = False  # bias on wqkv and wo only
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 2
    torch_dtype: str = "bfloat16"  # storage dtype recorded in config.json
    extra: dict = field(default_factory=dict, repr=False)  # unknown keys kept for round trips

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived ---------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def rope_type(self) -> str | None:
        if not self.rope_scaling:
            return None
        return self.rope_scaling.get("type") or self.rope_scaling.get("rope_type")

    @property
    def rope_factor(self) -> float:
        return float(self.rope_scaling.get("factor", 1.0)) if self.rope_scaling else 1.0

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Bytes of K and V cache per token: 2 * layers * kv_heads * head_dim * bytes."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes

    # ---- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        ints = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "max_position_embeddings"]
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {v!r}")
        for name in ["rope_theta", "rms_norm_eps"]:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ConfigError(f"config field '{name}' must be a positive number, got {v!r}")
        for name in ["bias", "tie_word_embeddings"]:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"config field '{name}' must be true or false, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"config field 'hidden_size' ({self.hidden_size}) must be divisible by "
                              f"'num_attention_heads' ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"config field 'num_attention_heads' ({self.num_attention_heads}) must be "
                              f"divisible by 'num_key_value_heads' ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim (hidden_size / num_attention_heads = {self.head_dim}) must be even for RoPE")
        rs = self.rope_scaling
        if rs is not None:
            if not isinstance(rs, dict):
                raise ConfigError(f"config field 'rope_scaling' must be null or a dict, got {rs!r}")
            kind = rs.get("type", rs.get("rope_type"))
            if kind not in ("linear", "dynamic"):
                raise ConfigError(f"config field 'rope_scaling.type' must be 'linear' or 'dynamic', got {kind!r}")
            factor = rs.get("factor")
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1:
                raise ConfigError(f"config field 'rope_scaling.factor' must be a number >= 1, got {factor!r}")
            self.rope_scaling = {"type": kind, "factor": float(factor)}
        if self.torch_dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"config field 'torch_dtype' must be float32, float16 or bfloat16, got {self.torch_dtype!r}")

    # ---- Hugging Face config.json ------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        d = {**self.extra, **d}
        d.update(model_type="internlm2", architectures=["InternLM2ForCausalLM"], hidden_act="silu",
                 initializer_range=0.02, use_cache=True)
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise ConfigError("config.json must hold a JSON object")
        mt = d.get("model_type", "internlm2")
        if mt != "internlm2":
            raise ConfigError(f"config field 'model_type' is {mt!r}; expected 'internlm2' "
                              f"(convert LLaMA-layout checkpoints with `puyu convert SRC DST --to internlm2`)")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in names}
        dt = d.get("torch_dtype", d.get("dtype"))
        if dt is not None:
            kwargs["torch_dtype"] = str(dt).replace("torch.", "")
        if isinstance(kwargs.get("eos_token_id"), list):  # generation-style lists: keep the first
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        extra = {k: v for k, v in d.items() if k not in names and k not in _IGNORED_KEYS}
        return cls(**kwargs, extra=extra)

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.exists():
            raise ConfigError(f"no config.json at {p}")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p} is not valid JSON: {e}") from None
        return cls.from_hf_dict(config_object(d, p))

    def save(self, path: str | Path) -> None:
        p = Path(path)
        if p.suffix != ".json":
            p.mkdir(parents=True, exist_ok=True)
            p = p / "config.json"
        p.write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n", encoding="utf-8")

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


_RELEASED = dict(vocab_size=92544, rope_theta=1_000_000.0, rms_norm_eps=1e-5, max_position_embeddings=32768)

PRESETS: dict[str, dict[str, Any]] = {
    # The published shapes (docs/internlm2.md, "Sizes").
    "internlm2-1_8b": dict(_RELEASED, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                           num_attention_heads=16, num_key_value_heads=8),
    "internlm2-7b": dict(_RELEASED, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8),
    "internlm2-20b": dict(_RELEASED, hidden_size=6144, intermediate_size=16384, num_hidden_layers=48,
                          num_attention_heads=48, num_key_value_heads=8),
    # Nano shapes for CPU work; GQA kept (4:1 and 2:1). Vocab matches the nano tokenizer recipe.
    "nano": dict(vocab_size=2048, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
                 rope_theta=10_000.0, torch_dtype="float32"),
    "nano-tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rope_theta=10_000.0, torch_dtype="float32"),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """The preset's config with `overrides` (config.json field names). Raises ConfigError for an unknown
    preset, an unknown field or an invalid shape."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    known = {f.name for f in dataclasses.fields(ModelConfig) if f.init}
    unknown = sorted(str(k) for k in overrides if k not in known)
    if unknown:
        raise ConfigError(f"unknown model config field(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
    return ModelConfig(**{**PRESETS[name], **overrides})
