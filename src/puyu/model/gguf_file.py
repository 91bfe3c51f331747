"""GGUF files (llama.cpp's format) of InternLM2- and LLaMA-layout models: read into puyu's formats, and written
from puyu checkpoints (through the `gguf` library from PyPI, llama.cpp's own Python package).

Reading (`read_gguf`; `puyu.model.checkpoint.load_gguf` builds the model from it; reached through
`puyu.load_model(path.gguf, weights=...)` and every CLI `--model`):
the header and metadata are parsed here (`_parse_header`, checked against `gguf.GGUFReader` in the tests; the
tensor types, block sizes and non-exact dequantizers are the `gguf` package's); each tensor's bytes are read with plain
`readinto` (no memory map whose touched pages would count in RSS), converted and packed one tensor at a time,
so no float32 copy of the model ever exists (at most one tensor in float32, while it is re-quantized).

Tensor types and what each becomes (`weights=None`, the default: the nearest puyu format, tensor by tensor):

============  ===========================  ==================================================================
GGUF type     weights=None                 exactness
============  ===========================  ==================================================================
F32           f32                          exact
F16           f32                          exact (every fp16 value is a float32)
BF16          bf16                         exact (same bytes)
Q8_0          int8 (per output row)        re-quantized: a fp16 scale per 32 weights becomes one float32
                                           scale per row; |w - w_gguf| <= s_row / 2, s_row = max|w_gguf| / 127
Q4_0          int4, group 32               exact: a Q4_0 block is d * (q - 8) with q a nibble, 32 weights in 16
                                           bytes, low nibble = weight i, high = weight i + 16: puyu's int4 block
                                           layout; the fp16 d becomes a float32 scale (exact)
Q4_1, Q5_0,   int8 (per output row)        dequantized with gguf's reference code, then re-quantized:
Q5_1, Q2_K,                                |w - w_gguf| <= s_row / 2
Q3_K, Q4_K,
Q5_K, Q6_K
anything      refused (`GGUFError` naming  IQ*, TQ*, MXFP4, Q8_1, Q8_K, integer and F64 tensors
else          the tensor and its type)
============  ===========================  ==================================================================

With `weights="f32"|"bf16"|"int8"|"int4"` every linear layer goes to that format and the embeddings and head
to `quant.head_format` of it (as for any checkpoint): a tensor already in that format is copied (Q4_0 -> int4
only when `group` is 32; otherwise it is dequantized and re-quantized into groups of `group`, with a logged
note), anything else is dequantized exactly to float32 and quantized (`puyu.model.quant` bounds).

Layout: llama.cpp's converters store q and k rows permuted for its RoPE ("normal" mode, adjacent pairs): per
head, row r of the Hugging Face "rotate half" layout sits at 2 * (r mod D/2) + r div (D/2) (`permute` in its
`convert_hf_to_gguf.py`, applied to q with the query heads and to k with the key/value heads; InternLM2's wqkv
is split into attn_q/attn_k/attn_v first). Reading undoes it (a row permutation, so Q4_0 rows move as
they are) and packs q, k, v back into puyu's wqkv.

Metadata: `general.architecture` "llama" or "internlm2", `{arch}.embedding_length`, `.feed_forward_length`,
`.block_count`, `.attention.head_count(_kv)`, `.context_length`, `.rope.freq_base`,
`.attention.layer_norm_rms_epsilon`, `.rope.scaling.type/factor` (linear; "dynamic" as puyu writes it);
`.rope.dimension_count` must equal the head size. Tokenizer (`tokenizer.ggml.model` "llama", SentencePiece):
`gguf_tokenizer` rebuilds a SentencePiece BPE model from `tokens`, `scores`, `token_type` (SentencePiece's
own piece types), `add_space_prefix` (default true) and byte fallback when byte pieces exist; llama.cpp's
InternLM2 converter renames piece "\\x00" to "🐉", which is undone. BOS/EOS/UNK of the rebuilt model are
the pieces <s>, </s>, <unk> when present (llama.cpp's chat conversions set EOS to <|im_end|>; puyu stops there
through its chat format anyway), else the metadata's ids.

Writing (`write_gguf`, `puyu convert SRC DST.gguf --to gguf --type f16`): arch "internlm2", tensors as
llama.cpp's converter names and permutes them, streamed tensor by tensor (header first, then each tensor is
read, converted and written). Types: f32, f16, bf16, q8_0 (every matrix Q8_0), q4_0 (linear layers Q4_0,
token embeddings and output head Q8_0, as puyu keeps them in int8; llama.cpp's own quantizer would use Q6_K for
the head); norms and biases F32. Quantization is `gguf.quants` (bit-exact with ggml's reference quantizers).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from puyu.errors import CheckpointError
from puyu.model.config import ModelConfig
from puyu.model.quant import DEFAULT_GROUP, Packed, layer_format, quantize

log = logging.getLogger(__name__)

ARCHES = ("internlm2", "llama")
EXACT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0")
REQUANT_TYPES = ("Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
WRITE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")


class GGUFError(CheckpointError):
    """A GGUF file that cannot be read as an InternLM2/LLaMA model (message names the file and the cause)."""


def is_gguf(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix.lower() == ".gguf" or (p.is_file() and _magic(p))


def _magic(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


# ---- names -------------------------------------------------------------------------------------
_LAYER = {  # puyu name inside model.layers.{i}. -> llama.cpp tensor name inside blk.{i}.
    "attention_norm.weight": "attn_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
    "attention.wo.weight": "attn_output.weight", "attention.wo.bias": "attn_output.bias",
    "feed_forward.w1.weight": "ffn_gate.weight", "feed_forward.w3.weight": "ffn_up.weight",
    "feed_forward.w2.weight": "ffn_down.weight",
}


def _permute(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """Hugging Face q/k rows -> llama.cpp's order (per head: halves [2, D/2] -> pairs [D/2, 2])."""
    shape = rows.shape
    return rows.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).transpose(1, 2).reshape(shape)


def _unpermute(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of `_permute`."""
    shape = rows.shape
    return rows.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).transpose(1, 2).reshape(shape)


# ---- reading -----------------------------------------------------------------------------------
class _File:
    """A parsed GGUF file: metadata fields, tensor infos (name -> (type name, shape [N, K] or [K], offset,
    nbytes)) and its size. Raises GGUFError for anything unreadable."""

    def __init__(self, path: str | Path):
        import gguf

        self.path = Path(path)
        if not self.path.is_file():
            raise GGUFError(f"GGUF file {self.path} does not exist")
        self.size = self.path.stat().st_size
        if not _magic(self.path):
            raise GGUFError(f"{self.path} is not a GGUF file (it does not start with the bytes 'GGUF')")
        try:
            self.fields, infos, data_start = _parse_header(self.path)
        except struct.error as e:  # the one struct raises for a buffer too short; its name is just "error"
            raise GGUFError(f"{self.path} is truncated or corrupt: the header runs past the end of the file "
                            f"({e})") from None
        except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, MemoryError) as e:
            raise GGUFError(f"{self.path} is truncated or corrupt: {type(e).__name__}: {e}") from None
        self.tensors: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, dims, type_id, offset in infos:
            try:
                qtype = gguf.GGMLQuantizationType(type_id)
            except ValueError:
                raise GGUFError(f"{self.path}: tensor {name!r} has unknown type id {type_id}") from None
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            shape = tuple(reversed(dims))  # GGUF lists ne0 (the row length) first
            n = int(np.prod(shape)) if shape else 1
            if shape and shape[-1] % block:
                raise GGUFError(f"{self.path}: tensor {name!r} has rows of {shape[-1]}, not a multiple of "
                                f"{qtype.name}'s block of {block}")
            start, nbytes = data_start + offset, n // block * size
            if start + nbytes > self.size:
                raise GGUFError(f"{self.path} is truncated: tensor {name!r} ends at byte {start + nbytes}, the "
                                f"file has {self.size}")
            self.tensors[name] = (qtype.name, shape, start, nbytes)

    def get(self, key: str, default=None):
        return self.fields.get(key, default)

    def raw(self, name: str) -> torch.Tensor:
        """The tensor's bytes, uint8 [rows, bytes per row] (1-D tensors: [1, nbytes])."""
        tname, shape, off, nbytes = self.tensors[name]
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        buf = torch.empty(rows, nbytes // rows, dtype=torch.uint8)
        view = memoryview(buf.numpy()).cast("B")
        with open(self.path, "rb", buffering=0) as f:
            f.seek(off)
            got = 0
            while got < nbytes:
                n = f.readinto(view[got:])
                if not n:
                    raise GGUFError(f"{self.path} ended early while reading tensor {name!r}")
                got += n
        return buf


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}


def _parse_header(path: Path) -> tuple[dict, list[tuple[str, list[int], int, int]], int]:
    """The GGUF header (versions 2 and 3, little-endian; the layout `gguf.GGUFReader` reads): metadata
    {key: value} (arrays as lists), tensor infos [(name, dims ne0 first, type id, offset)], and the byte where
    tensor data starts. Parsed here with `struct` because GGUFReader builds numpy arrays per string and takes
    ~20 s on a 92,544-token vocabulary (tests compare the two on the same file). Raises struct.error /
    ValueError on a short or malformed header."""
    import mmap

    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pos = 4
        (version,) = struct.unpack_from("<I", mm, pos)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (puyu reads versions 2 and 3, little-endian)")
        n_tensors, n_kv = struct.unpack_from("<QQ", mm, pos + 4)
        pos += 20
        if n_tensors > 1 << 20 or n_kv > 1 << 20:
            raise ValueError(f"implausible counts: {n_tensors} tensors, {n_kv} metadata keys")

        def string() -> str:
            nonlocal pos
            (n,) = struct.unpack_from("<Q", mm, pos)
            if pos + 8 + n > len(mm):
                raise ValueError(f"a string of {n} bytes at byte {pos} runs past the end of the file")
            out = bytes(mm[pos + 8:pos + 8 + n]).decode("utf-8")
            pos += 8 + n
            return out

        def value(vtype: int):
            nonlocal pos
            if vtype == 8:
                return string()
            if vtype in _SCALARS:
                fmt = _SCALARS[vtype]
                (v,) = struct.unpack_from(fmt, mm, pos)
                pos += struct.calcsize(fmt)
                return v
            if vtype == 9:
                sub, count = struct.unpack_from("<IQ", mm, pos)
                pos += 12
                if sub == 8:
                    return [string() for _ in range(count)]
                if sub in _NP:
                    dt = np.dtype(_NP[sub])
                    if pos + count * dt.itemsize > len(mm):
                        raise ValueError(f"an array of {count} items at byte {pos} runs past the end of the file")
                    arr = np.frombuffer(mm, dtype=dt, count=count, offset=pos).tolist()
                    pos += count * dt.itemsize
                    return arr
                return [value(sub) for _ in range(count)]
            raise ValueError(f"unknown metadata value type {vtype} at byte {pos}")

        fields = {}
        for _ in range(n_kv):
            key = string()
            (vtype,) = struct.unpack_from("<I", mm, pos)
            pos += 4
            fields[key] = value(vtype)
        infos = []
        for _ in range(n_tensors):
            name = string()
            (nd,) = struct.unpack_from("<I", mm, pos)
            if nd > 4:
                raise ValueError(f"tensor {name!r} has {nd} dimensions")
            dims = list(struct.unpack_from(f"<{nd}Q", mm, pos + 4))
            type_id, offset = struct.unpack_from("<IQ", mm, pos + 4 + 8 * nd)
            pos += 4 + 8 * nd + 12
            infos.append((name, dims, type_id, offset))
        align = fields.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise ValueError(f"general.alignment {align!r} is not a power of two")
        return fields, infos, -(-pos // align) * align


def _arch(f: _File) -> str:
    arch = f.get("general.architecture")
    if arch not in ARCHES:
        raise GGUFError(f"{f.path}: general.architecture is {arch!r}; puyu reads {', '.join(ARCHES)} "
                        f"(InternLM2 / LLaMA layout)")
    return arch


def gguf_config(path: str | Path, _file: _File | None = None) -> ModelConfig:
    """The puyu `ModelConfig` of a GGUF file, from its metadata (module docstring lists the keys). Raises
    GGUFError for another architecture, per-layer head counts, partial rotary or a corrupt file."""
    f = _file or _File(path)
    arch = _arch(f)

    def need(key: str):
        v = f.get(f"{arch}.{key}")
        if v is None:
            raise GGUFError(f"{f.path}: metadata {arch}.{key} is missing")
        if isinstance(v, list):
            raise GGUFError(f"{f.path}: {arch}.{key} differs per layer, which puyu's model does not support")
        return v

    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    kv = f.get(f"{arch}.attention.head_count_kv", heads)
    if isinstance(kv, list):
        raise GGUFError(f"{f.path}: {arch}.attention.head_count_kv differs per layer, which puyu does not support")
    rope_dim = f.get(f"{arch}.rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != hidden // heads:
        raise GGUFError(f"{f.path}: rope.dimension_count {rope_dim} != head size {hidden // heads} (partial "
                        f"rotary embeddings are not supported)")
    if "token_embd.weight" not in f.tensors:
        raise GGUFError(f"{f.path} has no token_embd.weight tensor")
    vocab = f.tensors["token_embd.weight"][1][0]
    scaling = f.get(f"{arch}.rope.scaling.type")
    rope_scaling = None
    if scaling not in (None, "none"):
        if scaling not in ("linear", "dynamic"):
            raise GGUFError(f"{f.path}: rope scaling {scaling!r} is not supported (linear or dynamic)")
        rope_scaling = {"type": scaling, "factor": float(f.get(f"{arch}.rope.scaling.factor", 1.0))}
    ids = _special_ids(f)
    return ModelConfig(
        vocab_size=int(vocab), hidden_size=hidden, intermediate_size=int(need("feed_forward_length")),
        num_hidden_layers=int(need("block_count")), num_attention_heads=heads, num_key_value_heads=int(kv),
        max_position_embeddings=int(f.get(f"{arch}.context_length", 4096)),
        rope_theta=float(f.get(f"{arch}.rope.freq_base", 10000.0)), rope_scaling=rope_scaling,
        rms_norm_eps=float(f.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        bias="blk.0.attn_q.bias" in f.tensors, tie_word_embeddings="output.weight" not in f.tensors,
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"], torch_dtype="float32")


def _special_ids(f: _File) -> dict[str, int]:
    """bos/eos/unk/pad: the pieces <s>, </s>, <unk> when the vocabulary has them, else the metadata's ids."""
    tokens = f.get("tokenizer.ggml.tokens") or []
    index = {t: i for i, t in enumerate(tokens[:1000])}  # the special pieces sit at the front
    out = {}
    for key, piece, meta, default in (("bos", "<s>", "bos_token_id", 1), ("eos", "</s>", "eos_token_id", 2),
                                      ("unk", "<unk>", "unknown_token_id", 0)):
        out[key] = index.get(piece, f.get(f"tokenizer.ggml.{meta}", default))
    out["pad"] = f.get("tokenizer.ggml.padding_token_id", out["eos"])
    return {k: int(v) for k, v in out.items()}


def native_format(type_name: str) -> str:
    """The puyu format a GGUF tensor type loads as with weights=None (module docstring)."""
    if type_name in ("F32", "F16"):
        return "f32"
    if type_name == "BF16":
        return "bf16"
    if type_name == "Q4_0":
        return "int4"
    if type_name == "Q8_0" or type_name in REQUANT_TYPES:
        return "int8"
    raise GGUFError(f"GGUF tensor type {type_name} is not supported: puyu reads {', '.join(EXACT_TYPES)} "
                    f"(and, re-quantized to int8, {', '.join(REQUANT_TYPES)})")


def _dequantize(raw: torch.Tensor, type_name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """float32 [rows, K] of a tensor's raw bytes [rows, bytes per row]; gguf's reference dequantizers, run over
    row chunks of ~16 MB of output so their numpy temporaries stay small."""
    K = shape[-1]
    if type_name == "F32":
        return raw.view(torch.float32).reshape(-1, K)
    if type_name == "F16":
        return raw.view(torch.float16).reshape(-1, K).float()
    if type_name == "BF16":
        return raw.view(torch.bfloat16).reshape(-1, K).float()
    import gguf

    qtype = gguf.GGMLQuantizationType[type_name]
    out = torch.empty(raw.shape[0], K)
    step = max(1, (16 << 20) // (4 * K))
    for r0 in range(0, raw.shape[0], step):
        out[r0:r0 + step] = torch.from_numpy(gguf.quants.dequantize(raw[r0:r0 + step].numpy(), qtype))
    return out


class _Rows:
    """One GGUF matrix as rows that can be permuted and stacked before packing: Q4_0 as (nibbles, scales)
    exactly, BF16 as bf16, everything else as float32."""

    def __init__(self, kind: str, parts: list[torch.Tensor], K: int):
        self.kind, self.parts, self.K = kind, parts, K

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> _Rows:
        return _Rows(self.kind, [fn(p) for p in self.parts], self.K)

    @staticmethod
    def cat(rows: list[_Rows]) -> _Rows:
        kinds = {r.kind for r in rows}
        if len(kinds) > 1:  # mixed types in one wqkv: fall back to float32 for all three (exact)
            rows = [r.as_float() for r in rows]
        return _Rows(rows[0].kind, [torch.cat(ps) for ps in zip(*(r.parts for r in rows))], rows[0].K)

    def as_float(self) -> _Rows:
        if self.kind == "f32":
            return self
        if self.kind == "bf16":
            return _Rows("f32", [self.parts[0].float()], self.K)
        return _Rows("f32", [Packed("int4", (self.parts[0].shape[0], self.K), self.parts[0].contiguous(),
                                    self.parts[1].contiguous(), 32).dequantize()], self.K)

    def pack(self, fmt: str, group: int, name: str) -> Packed | torch.Tensor:
        """To puyu format `fmt` (float32 tensor for f32). Exact when the kinds match (Q4_0 -> int4 needs
        group 32); else the float32 rows are quantized (`quant.quantize`)."""
        if fmt == "int4" and self.kind == "q4_0":
            if group == 32:
                return Packed("int4", (self.parts[0].shape[0], self.K), self.parts[0].contiguous(),
                              self.parts[1].contiguous(), 32)
            log.info("%s: Q4_0 blocks of 32 re-quantized into int4 groups of %d (pass group=32 / --group 32 "
                     "to keep the file's values exactly)", name, group)
        if fmt == "bf16" and self.kind == "bf16":
            return Packed("bf16", tuple(self.parts[0].shape), self.parts[0].contiguous(), None)
        w = self.as_float().parts[0]
        if fmt == "f32":
            return w.contiguous()
        return quantize(w, fmt, group)


def _read_rows(f: _File, name: str) -> _Rows:
    type_name, shape, _, _ = f.tensors[name]
    native_format(type_name)  # refuses unsupported types with a clear message
    if len(shape) != 2 and type_name not in ("F32", "F16", "BF16"):
        raise GGUFError(f"{f.path}: 1-D tensor {name!r} is stored as {type_name}; expected F32, F16 or BF16")
    raw = f.raw(name)
    K = shape[-1]
    if type_name == "Q4_0":
        blocks = raw.view(raw.shape[0], K // 32, 18)
        scales = blocks[:, :, :2].contiguous().view(torch.float16).reshape(raw.shape[0], K // 32).float()
        nibbles = blocks[:, :, 2:].reshape(raw.shape[0], K // 2).clone()
        return _Rows("q4_0", [nibbles, scales], K)
    if type_name == "BF16":
        return _Rows("bf16", [raw.view(torch.bfloat16).reshape(-1, K)], K)
    return _Rows("f32", [_dequantize(raw, type_name, shape)], K)


def _wanted(cfg: ModelConfig) -> list[tuple[str, list[str]]]:
    """(puyu parameter name, the GGUF tensors it is made of) for every parameter of the model."""
    out = [("model.tok_embeddings.weight", ["token_embd.weight"]), ("model.norm.weight", ["output_norm.weight"]),
           ("output.weight", ["token_embd.weight" if cfg.tie_word_embeddings else "output.weight"])]
    for i in range(cfg.num_hidden_layers):
        b = f"blk.{i}."
        out.append((f"model.layers.{i}.attention.wqkv.weight", [b + "attn_q.weight", b + "attn_k.weight",
                                                                  b + "attn_v.weight"]))
        if cfg.bias:
            out.append((f"model.layers.{i}.attention.wqkv.bias", [b + "attn_q.bias", b + "attn_k.bias",
                                                                    b + "attn_v.bias"]))
        for ours, theirs in _LAYER.items():
            if ours.endswith("bias") and not cfg.bias:
                continue
            out.append((f"model.layers.{i}.{ours}", [b + theirs]))
    return out


def _qkv(cfg: ModelConfig, q: _Rows, k: _Rows, v: _Rows) -> _Rows:
    """llama.cpp's attn_q/attn_k/attn_v rows -> puyu's wqkv rows (un-permuted, grouped per key/value head)."""
    from puyu.model.llama_layout import pack_wqkv

    q = q.map(lambda t: _unpermute(t, cfg.num_attention_heads))
    k = k.map(lambda t: _unpermute(t, cfg.num_key_value_heads))
    if len({q.kind, k.kind, v.kind}) > 1:
        q, k, v = q.as_float(), k.as_float(), v.as_float()
    return _Rows(q.kind, [pack_wqkv(a, b, c, cfg) for a, b, c in zip(q.parts, k.parts, v.parts)], q.K)


def read_gguf(path: str | Path, weights: str | None = None, group: int = DEFAULT_GROUP):
    """(config, iterator of (puyu parameter name, value)) for a GGUF file, one tensor read and converted at a
    time (module docstring: types, exactness, layout). Values are float32 tensors (norms, biases and f32
    layers) or `Packed` weights. weights=None keeps each tensor in its nearest puyu format; "f32"/"bf16"/
    "int8"/"int4" converts as for any checkpoint (`puyu.model.quant.layer_format`). Raises GGUFError (corrupt
    or truncated file, unsupported type, architecture or metadata, missing tensors) or QuantError (bad format
    or group) before the first tensor is read. `puyu.model.checkpoint.load_model` builds the model from it."""
    from puyu.model.llama_layout import pack_wqkv
    from puyu.model.quant import check_format

    if weights is not None:
        check_format(weights, group)
    f = _File(path)
    cfg = gguf_config(path, f)
    plan = _wanted(cfg)
    missing = sorted({t for _, ts in plan for t in ts if t not in f.tensors})
    if missing:
        raise GGUFError(f"{f.path} lacks tensors {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''} "
                        f"(InternLM2/LLaMA layout expected)")
    for name in sorted({t for _, ts in plan for t in ts}):  # refuse before reading anything
        try:
            native_format(f.tensors[name][0])
        except GGUFError as e:
            raise GGUFError(f"{f.path}: tensor {name!r}: {e}") from None

    def items():
        for name, sources in plan:
            rows = [_read_rows(f, s) for s in sources]
            if name.endswith(".bias") or "norm" in name:
                if len(rows) == 3:  # wqkv bias
                    q, k, v = (x.as_float().parts[0].reshape(-1) for x in rows)
                    yield name, pack_wqkv(_unpermute(q, cfg.num_attention_heads),
                                          _unpermute(k, cfg.num_key_value_heads), v, cfg).contiguous()
                else:
                    yield name, rows[0].as_float().parts[0].reshape(-1).clone()
                continue
            r = _qkv(cfg, *rows) if len(rows) == 3 else rows[0]
            if weights is not None:
                fmt = layer_format(name, weights)
            else:  # the nearest format (wqkv: of all three parts, float32 when they differ)
                fmts = {native_format(f.tensors[s][0]) for s in sources}
                fmt = fmts.pop() if len(fmts) == 1 else "f32"
            g = 32 if weights is None and fmt == "int4" else group
            yield name, r.pack(fmt, g, name)

    return cfg, items()


def memory_hint(path: str | Path) -> dict:
    """{"weights", "group"}: the format the linear layers load as with weights=None (for the memory check)."""
    f = _File(path)
    t = f.tensors.get("blk.0.ffn_down.weight")
    fmt = native_format(t[0]) if t else "f32"
    return {"weights": fmt, "group": 32 if fmt == "int4" else DEFAULT_GROUP}


# ---- tokenizer -----------------------------------------------------------------------------------
def gguf_tokenizer_proto(path: str | Path) -> bytes | None:
    """A serialized SentencePiece model rebuilt from the GGUF's tokenizer metadata (module docstring), or
    None when the file has no SentencePiece ("llama") tokenizer."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    f = _File(path)
    if f.get("tokenizer.ggml.model") != "llama":
        return None
    tokens = f.get("tokenizer.ggml.tokens") or []
    scores = f.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = f.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if not (len(tokens) == len(scores) == len(types)):
        raise GGUFError(f"{f.path}: tokenizer tokens, scores and types differ in length")
    arch = f.get("general.architecture")
    m = pb.ModelProto()
    for tok, score, typ in zip(tokens, scores, types):
        p = m.pieces.add()
        p.piece = "\x00" if (arch == "internlm2" and tok == "🐉") else tok
        p.score = float(score)
        p.type = int(typ) if 1 <= int(typ) <= 6 else 1
    ids = _special_ids(f)
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = any(t == 6 for t in types)
    ts.unk_id, ts.bos_id, ts.eos_id = ids["unk"], ids["bos"], ids["eos"]
    ts.pad_id = -1
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.precompiled_charsmap = b""
    ns.add_dummy_prefix = bool(f.get("tokenizer.ggml.add_space_prefix", True))
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    return m.SerializeToString()


# ---- writing -------------------------------------------------------------------------------------
def _gguf_type(t: str, gname: str, ndim: int) -> str:
    """The GGUF type of tensor `gname` (llama.cpp's name) in a file of type `t` (module docstring)."""
    if ndim == 1:
        return "F32"
    if t == "q4_0" and gname in ("token_embd.weight", "output.weight"):
        return "Q8_0"
    return {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0"}[t]


def _gguf_tensors(cfg: ModelConfig, get: Callable[[str], torch.Tensor]) -> list[tuple[str, tuple, Callable]]:
    """(GGUF name, float shape [N, K] or [K], fetch -> float32 tensor) in llama.cpp's order and layout."""
    from puyu.model.llama_layout import unpack_wqkv

    C, F = cfg.hidden_size, cfg.intermediate_size
    D, H, KV = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    out = [("token_embd.weight", (cfg.vocab_size, C), lambda: get("model.tok_embeddings.weight"))]
    for i in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."

        def qkv(part: int, kind: str = "weight", p=p):
            q, k, v = unpack_wqkv(get(p + f"attention.wqkv.{kind}"), cfg)
            return (_permute(q, H), _permute(k, KV), v)[part]

        out.append((b + "attn_norm.weight", (C,), lambda p=p: get(p + "attention_norm.weight")))
        out += [(b + "attn_q.weight", (H * D, C), lambda q=qkv: q(0)), (b + "attn_k.weight", (KV * D, C), lambda q=qkv: q(1)),
                (b + "attn_v.weight", (KV * D, C), lambda q=qkv: q(2))]
        if cfg.bias:
            out += [(b + "attn_q.bias", (H * D,), lambda q=qkv: q(0, "bias")),
                    (b + "attn_k.bias", (KV * D,), lambda q=qkv: q(1, "bias")),
                    (b + "attn_v.bias", (KV * D,), lambda q=qkv: q(2, "bias")),
                    (b + "attn_output.bias", (C,), lambda p=p: get(p + "attention.wo.bias"))]
        out += [(b + "attn_output.weight", (C, H * D), lambda p=p: get(p + "attention.wo.weight")),
                (b + "ffn_norm.weight", (C,), lambda p=p: get(p + "ffn_norm.weight")),
                (b + "ffn_gate.weight", (F, C), lambda p=p: get(p + "feed_forward.w1.weight")),
                (b + "ffn_down.weight", (C, F), lambda p=p: get(p + "feed_forward.w2.weight")),
                (b + "ffn_up.weight", (F, C), lambda p=p: get(p + "feed_forward.w3.weight"))]
    out += [("output_norm.weight", (C,), lambda: get("model.norm.weight")),
            ("output.weight", (cfg.vocab_size, C), lambda: get("output.weight"))]
    return out


def write_gguf(dst: str | Path, cfg: ModelConfig, get: Callable[[str], torch.Tensor], type: str = "f16",
               tokenizer_model: str | Path | None = None, name: str = "puyu", arch: str = "internlm2") -> Path:
    """Write a GGUF file (arch "internlm2", or "llama": the same tensors under llama.* keys) of type `type` (WRITE_TYPES; module docstring) from a function
    `get(puyu parameter name) -> tensor` (any float dtype), called once per tensor (q/k/v: once each), so only
    one tensor is held at a time. tokenizer_model: a SentencePiece .model to embed. The file is written to
    DST.tmp and renamed. Raises GGUFError for a type the shapes do not allow (Q8_0/Q4_0 need rows that are
    multiples of 32 long)."""
    import gguf

    if type not in WRITE_TYPES:
        raise GGUFError(f"GGUF type {type!r}: expected one of {', '.join(WRITE_TYPES)}")
    if cfg.rope_scaling and cfg.rope_type not in ("linear", "dynamic"):
        raise GGUFError(f"rope scaling {cfg.rope_type!r} cannot be written")
    dst = Path(dst)
    if arch not in ARCHES:
        raise GGUFError(f"architecture {arch!r}: expected one of {', '.join(ARCHES)}")
    tmp = dst.with_name(dst.name + ".tmp")
    w = gguf.GGUFWriter(tmp, arch)
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(float(cfg.rope_theta))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    if cfg.rope_scaling:
        w.add_string(f"{arch}.rope.scaling.type", cfg.rope_type)
        w.add_rope_scaling_factor(float(cfg.rope_factor))
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
             "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[type]
    w.add_file_type(int(ftype))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if tokenizer_model is not None:
        _add_tokenizer(w, Path(tokenizer_model), cfg)
    plan = []
    for gname, shape, fetch in _gguf_tensors(cfg, get):
        gt = _gguf_type(type, gname, len(shape))
        qt = gguf.GGMLQuantizationType[gt]
        block, size = gguf.GGML_QUANT_SIZES[qt]
        if shape[-1] % block:
            raise GGUFError(f"{gname} has rows of {shape[-1]} weights; {gt} needs a multiple of {block} "
                            f"(write f16 or f32 instead)")
        nbytes = int(np.prod(shape)) // block * size
        np_dtype = {"F32": np.float32, "F16": np.float16}.get(gt, np.uint8)
        byte_shape = shape if np_dtype is not np.uint8 else (*shape[:-1], shape[-1] // block * size)
        w.add_tensor_info(gname, byte_shape, np.dtype(np_dtype), nbytes, raw_dtype=None if np_dtype is not np.uint8 else qt)
        plan.append((gname, shape, fetch, qt))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for gname, shape, fetch, qt in plan:
        t = fetch().detach().to(torch.float32).contiguous().numpy()
        if tuple(t.shape) != tuple(shape):
            w.close()
            raise GGUFError(f"{gname}: got shape {list(t.shape)}, the config says {list(shape)}")
        w.write_tensor_data(gguf.quants.quantize(t, qt))
        del t
    w.close()
    os.replace(tmp, dst)
    return dst


def _add_tokenizer(w, model_file: Path, cfg: ModelConfig) -> None:
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    try:
        m.ParseFromString(model_file.read_bytes())
    except Exception as e:  # protobuf raises DecodeError
        raise GGUFError(f"{model_file} is not a SentencePiece model ({e})") from None
    if m.trainer_spec.model_type != pb.TrainerSpec.BPE:
        raise GGUFError(f"{model_file}: only SentencePiece BPE tokenizers are written to GGUF")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([p.piece for p in m.pieces])
    w.add_token_scores([float(p.score) for p in m.pieces])
    w.add_token_types([int(p.type) for p in m.pieces])
    w.add_add_space_prefix(bool(m.normalizer_spec.add_dummy_prefix))
    ts = m.trainer_spec
    w.add_bos_token_id(ts.bos_id if ts.bos_id >= 0 else cfg.bos_token_id)
    w.add_eos_token_id(ts.eos_id if ts.eos_id >= 0 else cfg.eos_token_id)
    w.add_unk_token_id(max(ts.unk_id, 0))
    w.add_pad_token_id(cfg.pad_token_id)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def write_gguf_from_model(model, dst: str | Path, type: str = "f16", tokenizer_model=None,
                          arch: str = "internlm2") -> Path:
    """`write_gguf` from an in-memory model (float or packed: packed weights are dequantized first)."""
    from puyu.model.quant import QuantEmbedding, QuantLinear

    def get(name: str) -> torch.Tensor:
        mod_name, _, pname = name.rpartition(".")
        mod = model.get_submodule(mod_name)
        if isinstance(mod, (QuantLinear, QuantEmbedding)) and pname == "weight":
            return mod.packed.dequantize()
        return getattr(mod, pname).detach().float()

    return write_gguf(dst, model.config, get, type, tokenizer_model, arch=arch)


def describe(path: str | Path) -> Iterable[str]:
    """One line per tensor type in the file: 'Q4_0: 169 tensors -> int4 (group 32)'."""
    f = _File(path)
    counts: dict[str, int] = {}
    for t, *_ in f.tensors.values():
        counts[t] = counts.get(t, 0) + 1
    for t, n in sorted(counts.items()):
        try:
            fmt = native_format(t)
        except GGUFError:
            fmt = "refused"
        yield f"{t}: {n} tensors -> {fmt}" + (" (group 32)" if t == "Q4_0" else "")
