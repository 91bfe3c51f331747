"""`puyu convert SRC DST --to llama|internlm2`: write a Hugging Face directory in the other layout;
`puyu convert SRC DST.gguf --to gguf --type f16|q8_0|q4_0|bf16|f32`: write a GGUF file for llama.cpp (and for
puyu's own GGUF loader), one tensor at a time (`puyu.model.gguf_file` documents names, layout and types).

The Hugging Face result loads in transformers' `LlamaForCausalLM` (or puyu). The renaming itself lives in
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


def convert_to_gguf(src: str | Path, dst: str | Path, type: str = "f16") -> Path:
    """A checkpoint directory (InternLM2 or LLaMA layout, float or `puyu quantize` packed) or a preset name
    (random init, seed 0) -> a GGUF file of `type` (`puyu.model.gguf_file.write_gguf`). An InternLM2-layout
    safetensors checkpoint is read one tensor at a time; other layouts and packed checkpoints are loaded
    whole first. Its tokenizer.model is embedded when present."""
    from puyu.model.config import PRESETS
    from puyu.model.gguf_file import write_gguf, write_gguf_from_model

    src = Path(src)
    if not src.is_dir():
        if str(src) in PRESETS:
            return write_gguf_from_model(ck.load_model(str(src), dtype="float32", device="cpu"), dst, type)
        raise ConfigError(f"{src} is neither a checkpoint directory nor a preset")
    tok = src / "tokenizer.model"
    tok = tok if tok.exists() else None
    raw = json.loads((src / "config.json").read_text(encoding="utf-8")) if (src / "config.json").exists() else {}
    cfg = ModelConfig.from_hf_dict(raw) if detect_layout(src) == "internlm2" else None
    wm, kind = ck.weight_map(src)
    if cfg is None or ck.QUANT_KEY in cfg.extra or kind != "safetensors":
        model = ck.load_model(src, dtype="float32", device="cpu")
        return write_gguf_from_model(model, dst, type, tok)
    headers: dict[Path, tuple[dict, int]] = {}

    def get(name: str):
        import torch

        key = name if name in wm or not cfg.tie_word_embeddings else "model.tok_embeddings.weight"
        if key not in wm:
            raise ck.CheckpointError(f"{src} lacks tensor {name!r}")
        file = wm[key]
        if file not in headers:
            headers[file] = ck._st_header(file)
        header, start = headers[file]
        info = header[key]
        t = torch.empty(info["shape"], dtype=ck._ST_DTYPES[info["dtype"]])
        with open(file, "rb", buffering=0) as fh:
            ck._readinto(fh, t, start + info["data_offsets"][0])
        return t

    return write_gguf(dst, cfg, get, type, tok)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="source checkpoint directory (InternLM2 or LLaMA layout; a preset with --to gguf)")
    p.add_argument("dst", help="destination directory (--to gguf: the .gguf file)")
    p.add_argument("--to", required=True, choices=["llama", "internlm2", "gguf"], help="target layout")
    p.add_argument("--type", default="f16", choices=["f32", "f16", "bf16", "q8_0", "q4_0"],
                   help="--to gguf: tensor type (q4_0: linear layers Q4_0, embeddings and head Q8_0; default f16)")
    p.add_argument("--max-shard-size", default="5GB", help="largest shard, e.g. 2GB, 500MB (default 5GB)")


def run(args: argparse.Namespace) -> int:
    if args.to == "gguf":
        out = convert_to_gguf(args.src, args.dst, args.type)
        print(f"wrote {out} (GGUF {args.type}, {out.stat().st_size / 2**20:.1f} MiB)")
        return 0
    out = convert(args.src, args.dst, args.to, max_shard_bytes=parse_size(args.max_shard_size))
    print(f"wrote {args.to} checkpoint to {out}")
    return 0
