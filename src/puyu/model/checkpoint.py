"""Hugging Face InternLM2 checkpoint directories: load (tensor by tensor) and save.

Layout: `config.json`, weights as `model.safetensors` or `model-0000X-of-0000N.safetensors` with
`model.safetensors.index.json` (or the older `pytorch_model*.bin` + `pytorch_model.bin.index.json`),
`generation_config.json`, and tokenizer files beside them.

Loading builds the model on the meta device, then reads each tensor straight from the shard into its
parameter's final storage (no intermediate copy of the shard), so peak memory stays close to the weights'
size (benchmarks/load.py measures it). The safetensors header is validated with the `safetensors` library
and then read directly for the byte offsets; data is read with plain `readinto` rather than through a
memory map whose touched pages would count twice in RSS.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import torch
from torch import nn

from puyu.errors import CheckpointError, ConfigError
from puyu.model.config import PRESETS, ModelConfig, get_preset
from puyu.model.quant import (
    DEFAULT_GROUP,
    Packed,
    QuantError,
    check_format,
    layer_format,
    packed_module,
    quantize,
    quantize_model_,
)
from puyu.model.transformer import InternLM2ForCausalLM

SIDE_FILES = ["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]
ST_INDEX, BIN_INDEX = "model.safetensors.index.json", "pytorch_model.bin.index.json"
QUANT_KEY = "puyu_quantization"  # config.json entry of a packed checkpoint (save_quantized)

_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
_DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float32 on CPU (bf16 matmul is ~50x slower there); bf16 (or fp16) on CUDA."""
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPE_NAMES.values():
            raise ConfigError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
        return dtype
    key = str(dtype).replace("torch.", "").lower()
    if key not in _DTYPE_NAMES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16")
    return _DTYPE_NAMES[key]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> cuda when available, else cpu. Raises ConfigError for a name torch does not know, or for
    cuda where this torch build or machine has none (rather than torch's assertion deep in a load)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use cpu or cuda (cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: this torch build or machine has no CUDA device; use --device cpu")
    return dev


def parse_size(text: str | int | None) -> int | None:
    """'5GB' -> 5e9, '500MiB' -> 500 * 2**20, 1000 -> 1000."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B)?\s*", str(text), re.I)
    if not m:
        raise ConfigError(f"cannot read size {text!r}; write e.g. 2GB or 500MiB")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
            "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(float(m.group(1)) * mult)


# ---- finding the weight files -----------------------------------------------------------------
def weight_map(path: Path) -> tuple[dict[str, Path], str]:
    """tensor name -> shard file, and the format ('safetensors' or 'bin')."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    for index_name, fmt in ((ST_INDEX, "safetensors"), (BIN_INDEX, "bin")):
        index = path / index_name
        if index.exists():
            try:
                wm = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{index} is not a valid index file ({e})") from None
            missing_files = sorted({f for f in wm.values() if not (path / f).exists()})
            if missing_files:
                raise CheckpointError(f"{index} names shard files that do not exist: {', '.join(missing_files)}")
            return {k: path / f for k, f in wm.items()}, fmt
    if (path / "model.safetensors").exists():
        return {k: path / "model.safetensors" for k in _st_header(path / "model.safetensors")[0]}, "safetensors"
    if (path / "pytorch_model.bin").exists():
        return {k: path / "pytorch_model.bin" for k in _load_bin(path / "pytorch_model.bin")}, "bin"
    raise CheckpointError(f"no weights in {path}: expected model.safetensors, {ST_INDEX}, "
                          f"pytorch_model.bin or {BIN_INDEX}")


def _st_header(file: Path) -> tuple[dict[str, dict], int]:
    """Validated safetensors header: ({name: {dtype, shape, data_offsets}}, data start offset)."""
    from safetensors import safe_open

    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise CheckpointError(f"{file} is truncated or corrupt (header of {n} bytes in a {size}-byte file)")
            header = json.loads(f.read(n))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not a valid safetensors file ({e})") from None
    header.pop("__metadata__", None)
    start = 8 + n
    for name, info in header.items():
        if info.get("dtype") not in _ST_DTYPES:
            raise CheckpointError(f"{file}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        end = start + info["data_offsets"][1]
        if end > size:
            raise CheckpointError(f"{file} is truncated: tensor {name!r} ends at byte {end}, file has {size}")
    try:  # the library's own validation (overlaps, alignment, sizes)
        with safe_open(str(file), framework="pt"):
            pass
    except Exception as e:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"{file} is not a valid safetensors file ({e})") from None
    return header, start


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises RuntimeError / UnpicklingError / EOFError for bad files
        raise CheckpointError(f"{file} is corrupt, truncated or not a weights-only PyTorch file ({e})") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{file} does not hold a state dict")
    return sd


def _readinto(f, t: torch.Tensor, offset: int) -> None:
    buf = memoryview(t.reshape(-1).view(torch.uint8).numpy())
    f.seek(offset)
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:])
        if not n:
            raise CheckpointError(f"{f.name} ended early while reading at byte {offset + got}")
        got += n


# ---- reading whole state dicts (conversion) ------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, in its stored dtype."""
    wm, fmt = weight_map(Path(path))
    out: dict[str, torch.Tensor] = {}
    for file in sorted(set(wm.values())):
        if fmt == "bin":
            out.update({k: v.clone() for k, v in _load_bin(file).items()})
            continue
        header, start = _st_header(file)
        with open(file, "rb", buffering=0) as f:
            for name, info in header.items():
                t = torch.empty(info["shape"], dtype=_ST_DTYPES[info["dtype"]])
                _readinto(f, t, start + info["data_offsets"][0])
                out[name] = t
    return out


# ---- loading into a model --------------------------------------------------------------------
def _set_param(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    mod_name, _, pname = name.rpartition(".")
    mod = model.get_submodule(mod_name)
    mod._parameters[pname] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())


def _trim_heap() -> None:
    """Give the heap's freed pages back to the OS (glibc keeps them otherwise, and a quantizing load frees a
    float temporary after every tensor)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _set_packed(model: nn.Module, name: str, packed: Packed) -> None:
    """Put a packed weight (`name` ends in .weight) in place of its float module, keeping any bias."""
    mod_name = name[: -len(".weight")]
    parent_name, _, attr = mod_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    new = packed_module(mod_name, packed)
    bias = old._parameters.get("bias") if isinstance(old, nn.Linear) else None
    if bias is not None:  # loaded already, or still on the meta device until its tensor is read
        new._parameters["bias"] = bias
    setattr(parent, attr, new)


def _check_weights(weights: str | None, group: int, device: torch.device, dtype=None) -> str:
    fmt = weights or "f32"
    check_format(fmt, group)
    if fmt != "f32" and device.type != "cpu":
        raise CheckpointError(f"weights={fmt!r} is a CPU format (the native decode kernel reads it); "
                              f"load on the CPU or leave weights unset")
    if fmt != "f32":
        _check_packed_dtype(f"weights={fmt!r}", dtype, device)
    return fmt


def _check_packed_dtype(what: str, dtype, device: torch.device) -> None:
    """CheckpointError unless `dtype` (of everything but the packed layers) is unset or float32."""
    resolved = resolve_dtype(dtype, device) if dtype is not None else torch.float32
    if resolved != torch.float32:
        name = str(resolved).replace("torch.", "")
        raise CheckpointError(f"{what}: the model around its packed layers runs in float32 (a 16-bit KV cache is "
                              f"--kv bf16); leave dtype unset or use float32, not {name}")


def load_checkpoint(path: str | Path, dtype=None, device=None, weights: str | None = None,
                    group: int = DEFAULT_GROUP) -> InternLM2ForCausalLM:
    path = Path(path)
    device = resolve_device(device)
    fmt = _check_weights(weights, group, device, dtype)
    from puyu.model.awq import awq_settings
    from puyu.model.llama_layout import detect_layout

    if detect_layout(path) == "llama":  # LLaMA layout: convert in memory (float copy first, then packed)
        if awq_settings(path) is not None:
            raise CheckpointError(f"{path}: AWQ checkpoints are read in the InternLM2 layout only (wqkv); "
                                  f"this one has the LLaMA layout")
        from puyu.model.llama_layout import config_from_llama, state_dict_from_llama

        cfg = config_from_llama(json.loads((path / "config.json").read_text(encoding="utf-8")))
        sd = state_dict_from_llama(read_state_dict(path), cfg)
        return quantize_model_(_from_state_dict(cfg, sd, resolve_dtype(dtype, device), device), fmt, group)
    cfg = ModelConfig.load(path)
    stored = cfg.extra.get(QUANT_KEY)
    if stored is not None:
        _check_packed_dtype(f"{path} (a packed checkpoint)", dtype, device)
        return _load_packed(path, cfg, stored, weights)
    awq = awq_settings(path, cfg.extra)
    if awq is not None:
        if device.type != "cpu":
            raise CheckpointError(f"{path}: AWQ checkpoints load on the CPU only (into puyu's packed formats)")
        return _load_awq(path, cfg, awq["group"], weights, group, resolve_dtype(dtype, device))
    dtype = resolve_dtype(dtype, device)
    wm, fmt_files = weight_map(path)
    with torch.device("meta"):
        model = InternLM2ForCausalLM(cfg)
    expected = dict(model.named_parameters())
    if cfg.tie_word_embeddings and "output.weight" not in wm:
        wm = {**wm, "output.weight": wm.get("model.tok_embeddings.weight")}
    _check_names(expected, wm, path)
    by_file: dict[Path, list[str]] = {}
    for name in expected:
        by_file.setdefault(wm[name], []).append(name)
    for file, names in sorted(by_file.items()):
        if fmt_files == "bin":
            sd = _load_bin(file)
            for name in names:
                src = sd.get(name if name in sd else "model.tok_embeddings.weight")
                _check_shape(name, tuple(src.shape), tuple(expected[name].shape), file)
                if layer_format(name, fmt) != "f32":
                    _set_packed(model, name, quantize(src, layer_format(name, fmt), group))
                else:
                    _set_param(model, name, src.to(dtype=dtype).clone().to(device))
            del sd
            continue
        header, start = _st_header(file)
        with open(file, "rb", buffering=0) as f:
            for name in names:
                key = name if name in header else ("model.tok_embeddings.weight" if cfg.tie_word_embeddings else name)
                if key not in header:
                    raise CheckpointError(f"index says {name!r} is in {file.name}, but that shard does not contain it")
                info = header[key]
                _check_shape(name, tuple(info["shape"]), tuple(expected[name].shape), file)
                src_dtype = _ST_DTYPES[info["dtype"]]
                if not src_dtype.is_floating_point:
                    raise CheckpointError(f"{file.name}: tensor {name!r} has non-float dtype {info['dtype']}")
                t = torch.empty(info["shape"], dtype=src_dtype)
                _readinto(f, t, start + info["data_offsets"][0])
                if layer_format(name, fmt) != "f32":  # packed now: one float matrix at a time
                    _set_packed(model, name, quantize(t, layer_format(name, fmt), group))
                    del t
                    _trim_heap()
                    continue
                if src_dtype != dtype:
                    t = t.to(dtype)
                _set_param(model, name, t.to(device))
    return model.eval()


def _tensor_reader(wm: dict[str, Path], kind: str, what: str):
    """read(name) -> one tensor of a checkpoint, as stored, read on its own (safetensors: straight into a fresh
    tensor from the file's header offsets; .bin: the last shard loaded is kept). `what` names the checkpoint in
    the CheckpointError for a missing tensor."""
    headers: dict[Path, tuple[dict, int]] = {}
    bins: dict[Path, dict] = {}

    def read(name: str) -> torch.Tensor:
        if name not in wm:
            raise CheckpointError(f"{what} lacks tensor {name!r}")
        file = wm[name]
        if kind == "bin":
            if file not in bins:
                bins.clear()
                bins[file] = _load_bin(file)
            return bins[file][name].clone()
        if file not in headers:
            headers[file] = _st_header(file)
        header, start = headers[file]
        info = header[name]
        t = torch.empty(info["shape"], dtype=_ST_DTYPES[info["dtype"]])
        with open(file, "rb", buffering=0) as f:
            _readinto(f, t, start + info["data_offsets"][0])
        return t

    return read


def _load_awq(path: Path, cfg: ModelConfig, awq_group: int, weights: str | None, group: int,
              float_dtype: torch.dtype) -> InternLM2ForCausalLM:
    """An AWQ checkpoint (`puyu.model.awq`: layout, and what each `weights` choice costs), one layer at a time:
    each AWQ layer unpacked to float32 and quantized into `weights` (default int4 in groups of 32)."""
    from puyu.model import awq

    fmt = weights or awq.DEFAULT_FORMAT
    g = group if weights is not None else awq.DEFAULT_GROUP
    check_format(fmt, g)
    if fmt != "f32":
        _check_packed_dtype(f"{path} (an AWQ checkpoint, unpacked into {fmt})", float_dtype, torch.device("cpu"))
    wm, kind = weight_map(path)
    read = _tensor_reader(wm, kind, f"AWQ checkpoint {path}")

    cfg = cfg.replace(extra={k: v for k, v in cfg.extra.items() if k != "quantization_config"})  # no longer AWQ
    with torch.device("meta"):
        model = InternLM2ForCausalLM(cfg)
    for name, p in list(model.named_parameters()):
        base = name[: -len(".weight")] if name.endswith(".weight") else None
        if base is not None and base + ".qweight" in wm:
            w = awq.dequantize(read(base + ".qweight"), read(base + ".qzeros"), read(base + ".scales"), awq_group, base)
        else:
            key = name if name in wm or not cfg.tie_word_embeddings else "model.tok_embeddings.weight"
            w = read(key)
            if not w.is_floating_point():
                raise CheckpointError(f"{path}: tensor {key!r} has non-float dtype {w.dtype}")
        _check_shape(name, tuple(w.shape), tuple(p.shape), path)
        f = layer_format(name, fmt)
        if f == "f32":
            _set_param(model, name, w.to(float_dtype).contiguous())
        else:
            _set_packed(model, name, quantize(w, f, g))
        del w
        _trim_heap()
    return model.eval()


def _load_packed(path: Path, cfg: ModelConfig, stored: dict, weights: str | None) -> InternLM2ForCausalLM:
    """A checkpoint written by `save_quantized` (`puyu quantize`): packed tensors read as they are."""
    fmt, group = stored.get("weights"), int(stored.get("group", DEFAULT_GROUP))
    if weights not in (None, fmt):
        raise CheckpointError(f"{path} holds {fmt} weights; it cannot be loaded as {weights} (quantize the float "
                              f"checkpoint again with `puyu quantize SRC DST --weights {weights}`)")
    try:
        check_format(fmt, group)
    except QuantError as e:
        raise CheckpointError(f"{path}/config.json: {QUANT_KEY} is invalid: {e}") from None
    wm, kind = weight_map(path)
    if kind != "safetensors":
        raise CheckpointError(f"{path}: a packed checkpoint must be stored as safetensors")
    read = _tensor_reader(wm, kind, f"packed checkpoint {path}")

    with torch.device("meta"):
        model = InternLM2ForCausalLM(cfg)
    for name, p in list(model.named_parameters()):
        f = layer_format(name, fmt)
        if f == "f32":
            t = read(name)
            _check_shape(name, tuple(t.shape), tuple(p.shape), wm[name])
            _set_param(model, name, t.float())
            continue
        base = name[: -len(".weight")]
        scales = read(base + ".scales") if f in ("int8", "int4") else None
        try:
            packed = Packed(f, tuple(p.shape), read(base + ".qweight"), scales, group)
        except QuantError as e:
            raise CheckpointError(f"{path}: {base}: {e}") from None
        _set_packed(model, name, packed)
    return model.eval()


def save_quantized(src: str | Path, dst: str | Path, weights: str, group: int = DEFAULT_GROUP,
                   max_shard_bytes: int | None = 4 << 30) -> Path:
    """Quantize a float checkpoint directory (loaded tensor by tensor, see `load_checkpoint`) and write it as a
    packed checkpoint that loads again without re-quantizing.

    Format: safetensors; for each packed matrix X (every linear layer, the token embeddings and the output
    head, in the formats of `puyu.model.quant.layer_format`): `X.qweight` (bf16 [N, K], int8 [N, K] or
    uint8 [N, ceil(K/32)*16] for int4) and `X.scales` (float32 [N] for int8, [N, ceil(K/group)] for int4);
    norms and biases float32 under their usual names. config.json records
    `"puyu_quantization": {"weights", "group", "embeddings", "output"}`. Tokenizer and generation files are
    copied."""
    import shutil

    src, dst = Path(src), Path(dst)
    model = load_checkpoint(src, dtype="float32", device="cpu", weights=weights, group=group)
    dst.mkdir(parents=True, exist_ok=True)
    sd = {k: v for k, v in model.state_dict().items() if v is not None}
    write_state_dict(sd, dst, max_shard_bytes=max_shard_bytes)
    info = {"weights": weights, "group": group, "embeddings": layer_format("model.tok_embeddings.weight", weights),
            "output": layer_format("output.weight", weights)}
    cfg = model.config.replace(torch_dtype="float32")
    cfg.extra = {**cfg.extra, QUANT_KEY: info}
    cfg.save(dst)
    for name in SIDE_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
    return dst


def _check_names(expected: dict, available: dict, path: Path) -> None:
    missing = [k for k in expected if k not in available]
    unexpected = [k for k in available if k not in expected and not k.endswith("rotary_emb.inv_freq")]
    msgs = []
    if missing:
        msgs.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        msgs.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}"
                    f"{' ...' if len(unexpected) > 8 else ''}")
    if msgs:
        raise CheckpointError(f"checkpoint {path} does not match its config: " + "; ".join(msgs))


def _check_shape(name: str, got: tuple, want: tuple, file: Path) -> None:
    if got != want:
        raise CheckpointError(f"{file.name}: tensor {name!r} has shape {list(got)}, config expects {list(want)}")


def _from_state_dict(cfg: ModelConfig, sd: dict, dtype: torch.dtype, device: torch.device) -> InternLM2ForCausalLM:
    with torch.device("meta"):
        model = InternLM2ForCausalLM(cfg)
    expected = dict(model.named_parameters())
    _check_names(expected, sd, Path("<state dict>"))
    for name, p in expected.items():
        _check_shape(name, tuple(sd[name].shape), tuple(p.shape), Path("<state dict>"))
        _set_param(model, name, sd[name].to(dtype=dtype, device=device))
    return model.eval()


def load_gguf(path: str | Path, weights: str | None = None, group: int = DEFAULT_GROUP,
              dtype=None) -> InternLM2ForCausalLM:
    """A GGUF file as an `InternLM2ForCausalLM` on the CPU, built tensor by tensor from
    `puyu.model.gguf_file.read_gguf` (which documents the types, what each becomes and the exactness).
    dtype applies to the parameters kept in float (norms, f32 layers). Raises GGUFError / QuantError."""
    from puyu.model.gguf_file import read_gguf

    float_dtype = resolve_dtype(dtype, torch.device("cpu"))
    if weights is not None:
        _check_weights(weights, group, torch.device("cpu"), dtype)
    cfg, items = read_gguf(path, weights=weights, group=group)
    with torch.device("meta"):
        model = InternLM2ForCausalLM(cfg)
    params = dict(model.named_parameters())
    for name, value in items:
        _check_shape(name, tuple(value.shape), tuple(params[name].shape), Path(path))
        if isinstance(value, torch.Tensor):
            _set_param(model, name, value.to(float_dtype))
        else:  # a quantized GGUF type kept packed (or weights=): the rest must be float32, as for any packed model
            _check_packed_dtype(f"{path} (GGUF {name} packed as {value.fmt})", dtype, torch.device("cpu"))
            _set_packed(model, name, value)
        del value
        _trim_heap()
    return model.eval()


def load_model(path_or_preset: str | Path, dtype=None, device=None, seed: int = 0, weights: str | None = None,
               group: int = DEFAULT_GROUP) -> InternLM2ForCausalLM:
    """A checkpoint directory (InternLM2 or LLaMA layout), a GGUF file (`puyu.model.gguf_file`: its types, what
    each becomes and which are exact) or a preset name (random init, `seed`).

    Returns `InternLM2ForCausalLM` in eval mode; calling it on LongTensor [B, T] gives logits [B, T, vocab].
    Defaults: float32 on CPU; bf16 (fp16 without bf16 support) on CUDA, when device is None and CUDA exists.

    weights: "bf16", "int8" or "int4" (`puyu.model.quant`; int4 groups of `group`) stores the linear layers
    (and embeddings/head, see `quant.head_format`) packed for the CPU kernel; a checkpoint is quantized
    tensor by tensor while it is read, so only one matrix exists in float32 at a time (an InternLM2-layout
    directory; a LLaMA-layout one is converted in memory first). An AWQ 4-bit checkpoint (`puyu.model.awq`) is
    unpacked layer by layer into `weights` (default int4 in groups of 32). A checkpoint written by `puyu quantize`
    loads packed as stored. Raises CheckpointError (bad files, a packed checkpoint asked for another
    format, a non-CPU device) or QuantError (unknown format or group)."""
    p = Path(path_or_preset)
    from puyu.model.gguf_file import is_gguf

    if is_gguf(p):  # a GGUF file (llama.cpp's format): puyu.model.gguf_file
        if device is not None and resolve_device(device).type != "cpu":
            raise CheckpointError(f"{p}: GGUF files load on the CPU only")
        return load_gguf(p, weights=weights, group=group, dtype=dtype)
    if p.is_dir():
        return load_checkpoint(p, dtype=dtype, device=device, weights=weights, group=group)
    if str(path_or_preset) in PRESETS:
        dev = resolve_device(device)
        fmt = _check_weights(weights, group, dev, dtype)
        model = InternLM2ForCausalLM(get_preset(str(path_or_preset))).reset_parameters(seed=seed)
        return quantize_model_(model.to(device=dev, dtype=resolve_dtype(dtype, dev)).eval(), fmt, group)
    raise CheckpointError(f"{path_or_preset!r} is neither a checkpoint directory nor a preset "
                          f"(presets: {', '.join(PRESETS)})")


# ---- saving ----------------------------------------------------------------------------------
def _remove_old_weights(dst: Path) -> None:
    for f in dst.iterdir():
        if re.fullmatch(r"(model(-\d+-of-\d+)?\.safetensors|pytorch_model(-\d+-of-\d+)?\.bin|"
                        r"model\.safetensors\.index\.json|pytorch_model\.bin\.index\.json)", f.name):
            f.unlink()


def write_state_dict(sd: dict[str, torch.Tensor], dst: str | Path, max_shard_bytes: int | None = None,
                     safe_serialization: bool = True) -> list[Path]:
    """Write tensors as shards (+ index when more than one). Each file is written then renamed."""
    from safetensors.torch import save_file

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in sd.items():
        nbytes = t.numel() * t.element_size()
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.detach().contiguous().cpu()
        size += nbytes
    _remove_old_weights(dst)
    stem, ext, index_name = (("model", "safetensors", ST_INDEX) if safe_serialization
                             else ("pytorch_model", "bin", BIN_INDEX))
    n = len(shards)
    files = []
    weight_map_: dict[str, str] = {}
    for i, shard in enumerate(shards):
        fname = f"{stem}.{ext}" if n == 1 else f"{stem}-{i + 1:05d}-of-{n:05d}.{ext}"
        tmp = dst / (fname + ".tmp")
        if safe_serialization:
            save_file(shard, str(tmp), metadata={"format": "pt"})
        else:
            torch.save(shard, tmp)
        os.replace(tmp, dst / fname)
        files.append(dst / fname)
        weight_map_.update({k: fname for k in shard})
    if n > 1:
        total = sum(t.numel() * t.element_size() for t in sd.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map_}
        (dst / index_name).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return files


def save_pretrained(model: InternLM2ForCausalLM, dst: str | Path, tokenizer=None, dtype=None,
                    max_shard_bytes: int | None = None, safe_serialization: bool = True) -> Path:
    """Save a Hugging Face InternLM2 directory: config, weights, generation config, tokenizer."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    store = resolve_dtype(dtype, torch.device("cpu")) if dtype else next(model.parameters()).dtype
    sd = {k: v.detach().to(store) for k, v in model.state_dict().items()}
    write_state_dict(sd, dst, max_shard_bytes=max_shard_bytes, safe_serialization=safe_serialization)
    cfg_out = cfg.replace(torch_dtype=str(store).replace("torch.", ""))
    cfg_out.save(dst)
    im_end = tokenizer.special_ids["<|im_end|>"] if tokenizer is not None else (92542 if cfg.vocab_size == 92544 else None)
    gen = {"bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id,
           "eos_token_id": [cfg.eos_token_id] + ([im_end] if im_end is not None else [])}
    (dst / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save(dst)
    return dst
