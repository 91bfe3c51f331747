"""`puyu convert SRC DST --to llama|internlm2`: write a Hugging Face directory in the other layout.

The result loads in transformers' `LlamaForCausalLM` (or puyu). The renaming itself lives in
`puyu.model.llama_layout`; this module reads, renames and writes whole checkpoint directories.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from puyu.errors import ConfigError
from puyu.model import checkpoint as ck
from puyu.model.checkpoint import parse_size
from puyu.model.config import ModelConfig
from puyu.model.llama_layout import (
    config_from_llama,
    config_to_llama,
    detect_layout,
    state_dict_from_llama,
    state_dict_to_llama,
)


def convert(src: str | Path, dst: str | Path, to: str, max_shard_bytes: int | None = None) -> Path:
    """Convert the checkpoint directory `src` to the layout `to` ('llama' or 'internlm2') in `dst`."""
    if to not in ("llama", "internlm2"):
        raise ConfigError(f"--to must be 'llama' or 'internlm2', got {to!r}")
    src, dst = Path(src), Path(dst)
    layout = detect_layout(src)
    raw = json.loads((src / "config.json").read_text(encoding="utf-8"))
    cfg = ModelConfig.from_hf_dict(raw) if layout == "internlm2" else config_from_llama(raw)
    sd = ck.read_state_dict(src)
    if layout == to:
        new_sd = sd
    elif to == "llama":
        new_sd = state_dict_to_llama(sd, cfg)
    else:
        new_sd = state_dict_from_llama(sd, cfg)
    dst.mkdir(parents=True, exist_ok=True)
    ck.write_state_dict(new_sd, dst, max_shard_bytes=max_shard_bytes)
    cfg_dict = config_to_llama(cfg) if to == "llama" else cfg.to_hf_dict()
    (dst / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n", encoding="utf-8")
    for name in ck.SIDE_FILES:  # tokenizer and generation files travel unchanged
        if (src / name).exists() and src.resolve() != dst.resolve():
            shutil.copy2(src / name, dst / name)
    return dst


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="source checkpoint directory (InternLM2 or LLaMA layout)")
    p.add_argument("dst", help="destination directory")
    p.add_argument("--to", required=True, choices=["llama", "internlm2"], help="target layout")
    p.add_argument("--max-shard-size", default="5GB", help="largest shard, e.g. 2GB, 500MB (default 5GB)")


def run(args: argparse.Namespace) -> int:
    out = convert(args.src, args.dst, args.to, max_shard_bytes=parse_size(args.max_shard_size))
    print(f"wrote {args.to} checkpoint to {out}")
    return 0
