"""Typed training recipes: nested dataclasses read from YAML, with `--set a.b=c` overrides.

One mechanism for every stage. A recipe file is a YAML mapping whose top-level sections are the fields
of `Recipe` (`model`, `data`, `optim`, `train`, `dist`); each section is a dataclass below. Rules:
- an unknown key anywhere is an error that names it and lists the allowed keys of its section;
- values are checked against the field's annotated type (int, float, bool, str, optional, list, dict);
  an int is accepted where a float is expected, nothing else is coerced;
- `--set optim.lr=3e-4` parses the value with YAML (so `true`, `null`, `[a, b]` work) and applies it
  before type checking, so overrides obey the same rules as the file.

The nano recipe (`puyu.recipes.nano`) has its own top-level dataclass built from the same sections.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from puyu.errors import ConfigError


@dataclass
class ModelSection:
    """Which model to train. `preset` names a `puyu.model.config` preset (random init with `train.seed`);
    `init` is a checkpoint to start from instead: a Hugging Face directory or a training checkpoint
    directory (`.../checkpoints/step_000100`). `overrides` change preset fields (e.g. `vocab_size`);
    `rope_theta` and `max_position_embeddings` set those fields after loading (the long-context stage)."""

    preset: str | None = "nano"
    init: str | None = None
    overrides: dict = field(default_factory=dict)
    rope_theta: float | None = None
    max_position_embeddings: int | None = None


@dataclass
class DataSection:
    """Token shards (`puyu train tokenize` output directories) and how to cut them into rows.
    `train`/`val`: lists of shard directories. `seq_len`: tokens per row (T). `doc_mask`: keep attention
    within documents (and restart positions) when documents are packed. `pack`: "stream" cuts the
    concatenated stream into windows of T + 1 (pretraining); "docs" packs whole documents into rows
    without splitting them, padding the rest (SFT conversations); `pack_fit` ("next" or "best") is how
    "docs" fills its rows (`puyu.train.dataset.DocRows`). `tokenizer`: tokenizer directory (saved with the
    final weights)."""

    train: list = field(default_factory=list)
    val: list = field(default_factory=list)
    tokenizer: str | None = None
    seq_len: int = 256
    doc_mask: bool = True
    pack: str = "stream"
    pack_fit: str = "next"


@dataclass
class OptimSection:
    """AdamW with decay on matrices only, linear warmup then cosine decay to `min_lr_ratio` * lr
    (InternLM2 report: betas 0.9/0.95, eps 1e-8, weight decay 0.1, cosine to 10% of peak)."""

    lr: float = 3e-4
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass
class TrainSection:
    """The loop. `batch_size` is the global batch in rows; each step runs `grad_accum` micro-batches of
    batch_size / (grad_accum * world_size) rows per process. `out_dir` receives metrics.jsonl,
    loss.png, checkpoints/ and (at the end) hf/ with the final Hugging Face weights."""

    out_dir: str = "runs/train"
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    seed: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    eval_every: int = 100
    eval_batches: int = 8
    log_every: int = 10
    save_every: int = 200
    keep_checkpoints: int = 2
    save_hf: bool = True
    hf_dtype: str | None = None  # storage dtype of hf/ (None: the training dtype, float32)
    progress: bool = True
    precision: str = "auto"  # "fp32", "bf16" (autocast; fp32 master weights) or "auto" (see pretrain.py)
    threads: int | str | None = None  # torch CPU threads: None = torch's default, "auto" = by system load


@dataclass
class DistSection:
    """Multi-process training under torchrun. `strategy`: "ddp" (replicated weights) or "fsdp"
    (parameters, gradients and optimizer state sharded across processes, for models that do not fit
    one device). `backend`: None picks nccl on CUDA and gloo on CPU."""

    strategy: str = "ddp"
    backend: str | None = None


@dataclass
class Recipe:
    """A pretraining, long-context or SFT stage."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    dist: DistSection = field(default_factory=DistSection)

    def validate(self) -> None:
        if self.train.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.precision must be auto, fp32 or bf16, got {self.train.precision!r}")
        check_device(self.train.device, "train.device")
        t = self.train.threads
        if (isinstance(t, str) and t != "auto") or (isinstance(t, (int, float)) and not isinstance(t, bool) and t < 1):
            raise ConfigError(f"train.threads must be a positive number, auto or null, got {t!r}")
        if self.data.pack not in ("stream", "docs"):
            raise ConfigError(f"data.pack must be 'stream' or 'docs', got {self.data.pack!r}")
        if self.data.pack_fit not in ("next", "best"):
            raise ConfigError(f"data.pack_fit must be 'next' or 'best', got {self.data.pack_fit!r}")
        if self.dist.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"dist.strategy must be 'ddp' or 'fsdp', got {self.dist.strategy!r}")
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "log_every", "save_every"):
            if getattr(self.train, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self.train, name)}")
        if self.data.seq_len < 2:
            raise ConfigError(f"data.seq_len must be at least 2, got {self.data.seq_len}")
        if len(self.optim.betas) != 2:
            raise ConfigError(f"optim.betas must hold two numbers, got {self.optim.betas!r}")
        if self.optim.lr <= 0:
            raise ConfigError(f"optim.lr must be positive, got {self.optim.lr}")
        if self.optim.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.optim.warmup_steps}")
        if self.model.preset is None and self.model.init is None:
            raise ConfigError("set model.preset or model.init")
        if self.model.init is None:  # the shape now, not after the data is read
            from puyu.model.config import get_preset

            get_preset(self.model.preset, **self.model.overrides)


# ---- reading YAML into dataclasses ---------------------------------------------------------------
def _type_ok(value: Any, tp: Any) -> bool:
    """Whether `value` fits the annotation `tp` (the few kinds recipes use)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is Any:
        return True
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list or tp is list:
        return isinstance(value, list)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def from_dict(cls: type, data: Any, where: str = "", base: Any = None):
    """Build dataclass `cls` from a mapping, recursing into dataclass-typed fields. Keys not given keep
    the value of `base` (default: the dataclass defaults, including a parent's default for a section).
    Unknown keys and wrongly typed values raise ConfigError naming the dotted key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'recipe'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(f"{where}.{k}" if where else str(k) for k in unknown)
        raise ConfigError(f"unknown recipe key(s): {names} (allowed in {where or 'the top level'}: "
                          f"{', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(tp):
            if base is not None:
                section_base = getattr(base, name)
            elif fields[name].default_factory is not dataclasses.MISSING:
                section_base = fields[name].default_factory()
            else:
                section_base = None
            kwargs[name] = from_dict(tp, value, key, section_base)
            continue
        if isinstance(tp, type) and tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not _type_ok(value, tp):
            raise ConfigError(f"recipe key {key} must be {_type_name(tp)}, got {value!r}")
        kwargs[name] = value
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def check_glued_keys(value: Any, where: str) -> None:
    """YAML reads the flow map {a:1} as one key 'a:1' without a value: raise ConfigError naming it (at any depth
    of `value`) instead of failing later on a key 'a:1'."""
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and ":" in k and v is None:
                raise ConfigError(f"{where}: YAML reads {k!r} as one key without a value; write a space after "
                                  f"each colon in a {{...}} map, e.g. {{{k.split(':', 1)[0]}: {k.split(':', 1)[1]}}}")
            check_glued_keys(v, f"{where}.{k}")
    elif isinstance(value, list):
        for v in value:
            check_glued_keys(v, where)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=3e-4' -> (['optim', 'lr'], 0.0003). The value is read as YAML."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"--set expects key=value (e.g. optim.lr=3e-4), got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set has an empty key in {text!r}")
    try:  # read as a recipe file's values are (`3e-4` is a float there too)
        value = yaml.load(raw, Loader=_recipe_loader()) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot read value {raw!r} ({e})") from None
    check_glued_keys(value, f"--set {key}")
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `--set` strings to a raw recipe mapping (nested dicts are created as needed)."""
    for text in overrides or []:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(path)}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


def check_device(device: str | None, where: str) -> None:
    """Raise ConfigError, before any work, when `device` (None: cuda if available, else cpu) is not a
    torch device name or is one this machine lacks (cuda without CUDA, mps without Metal)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{where} must be cpu, cuda, cuda:N or mps (or null: cuda when present), got {device!r}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{where} must be cpu, cuda, cuda:N or mps (or null: cuda when present), got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{where} is {device!r} but CUDA is not available on this machine; use cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{where} is {device!r} but MPS is not available on this machine; use cpu")


@functools.cache
def _recipe_loader():
    """A SafeLoader for recipe files that reads `5e-4` as the float it is (YAML 1.1 wants `5.0e-4`; PyYAML
    reads the shorter form as a string) and refuses a key written twice in one mapping (PyYAML keeps the
    last silently)."""
    import re

    import yaml

    class RecipeLoader(yaml.SafeLoader):
        pass

    RecipeLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    RecipeLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))

    def mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first on line {seen[key] + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return loader.construct_mapping(node, deep=deep)

    RecipeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return RecipeLoader


def read_yaml(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if p.is_dir():
        found = sorted(x.name for x in p.glob("*.yaml"))[:8]
        raise ConfigError(f"recipe {p} is a directory; give a YAML file in it" + (f" (there: {', '.join(found)})"
                                                                                if found else ""))
    if p.exists() and not p.is_file():
        raise ConfigError(f"recipe {p} is not a regular file; give a YAML file")
    if not p.is_file():
        raise ConfigError(f"recipe file {p} does not exist")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_recipe_loader())
    except UnicodeDecodeError as e:
        raise ConfigError(f"recipe {p} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        what = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
        raise ConfigError(f"recipe {where}: not valid YAML: {what}") from None
    check_glued_keys(data, f"recipe {p}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {p} must hold a YAML mapping at the top level")
    return data


def load_recipe(path: str | Path | None, overrides: list[str] | None = None, cls: type = Recipe):
    """Read a recipe file (or start from the defaults of `cls` when `path` is None), apply overrides, type-check.
    Without a file, `--set a.b=v` on a mapping-valued field merges into its default mapping, as it does into the
    file's mapping with one."""
    data = read_yaml(path) if path is not None else to_dict(cls())
    data = apply_overrides(data, overrides or [])
    recipe = from_dict(cls, data)
    if hasattr(recipe, "validate"):
        recipe.validate()
    return recipe


@dataclass
class TokenizeRecipe:
    """`puyu train tokenize`: `inputs` (.txt/.jsonl/.parquet files) -> shard directory `out_dir`."""

    inputs: list = field(default_factory=list)
    out_dir: str = "runs/shards/train"
    tokenizer: str = ""
    progress: bool = True

    def validate(self) -> None:
        if not self.inputs:
            raise ConfigError("tokenize: list the input files under 'inputs'")
        if not self.tokenizer:
            raise ConfigError("tokenize: set 'tokenizer' (a directory holding tokenizer.model)")
