"""Stored weight formats for CPU inference: bf16, int8 and int4, packed as the native decode kernel reads them.

Formats (per weight matrix W [N, K], PyTorch's nn.Linear layout; `puyu/engine/fused_decode.c` reads the same
bytes, see its "stored formats" section):

- ``bf16``: W rounded to bfloat16 (round to nearest even; exact for weights released in bf16). 2 bytes per
  weight. Error: |w - deq| <= 2^-9 |w|.
- ``int8``: symmetric, one float32 scale per output row: s_n = max_k |W[n, k]| / 127, q = round(W / s_n) in
  [-127, 127]. 1 byte per weight (+ 4 bytes per row). Error: |w - deq| <= s_n / 2.
- ``int4``: symmetric, one float32 scale per group of `group` consecutive weights of a row (32, 64 or 128;
  default 64): s = max |w| / 7 over the group, q = round(w / s) + 8 in [1, 15]. Rows are padded with zeros
  to a multiple of 32 and stored in blocks of 32 weights = 16 bytes, byte i holding weight i in its low
  nibble and weight i + 16 in its high one (llama.cpp's Q4_0 block layout, with float32 scales and any
  group size). 0.5 byte per weight (+ 4 bytes per group). Error: |w - deq| <= s / 2.

`quantize(w, fmt, group)` -> `Packed`; `Packed.dequantize()` -> float32 [N, K]. `QuantLinear` and
`QuantEmbedding` hold a `Packed` in place of `nn.Linear` / `nn.Embedding` (their forward dequantizes the
weight for PyTorch's ops; the native kernel reads the packed bytes directly). `quantize_model_(model, fmt)`
swaps a float model's layers in place, one at a time, so the float and the packed copy of only one matrix
exist at once.

Defaults (llama.cpp keeps its token embeddings and output head at higher precision for the same reason):
every linear layer in the requested format; the token embeddings and the output head in int8 when the
layers are int4 or int8, in bf16 when they are bf16 (`head_format`).

A quantized model is a packed copy: the float weights it came from are dropped, so a model that must follow
changing float weights (RL rollouts during training) is decoded in float32, or quantized again after each
update (`quantize_model_` on the float model).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from puyu.errors import PuyuError

FORMATS = ("f32", "bf16", "int8", "int4")
FORMAT_CODES = {"f32": 0, "bf16": 1, "int8": 2, "int4": 3}  # the kernel's FMT_* values
GROUPS = (32, 64, 128)
DEFAULT_GROUP = 64


class QuantError(PuyuError):
    """A bad format name, group size or packed tensor."""


def check_format(fmt: str, group: int = DEFAULT_GROUP) -> None:
    if fmt not in FORMATS:
        raise QuantError(f"unknown weight format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "int4" and group not in GROUPS:
        raise QuantError(f"int4 group size {group}: expected one of {', '.join(map(str, GROUPS))}")


def head_format(fmt: str) -> str:
    """The format of the token embeddings and the output head when the linear layers use `fmt`."""
    return {"int4": "int8", "int8": "int8", "bf16": "bf16"}.get(fmt, "f32")


def bytes_per_weight(fmt: str, group: int = DEFAULT_GROUP) -> float:
    """Stored bytes per weight, scales included (rows assumed long: padding ignored)."""
    return {"f32": 4.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5 + 4.0 / group}[fmt]


class Packed:
    """One weight matrix [N, K] in a stored format: `data` (the bytes the kernel reads) and `scales`
    (float32; int8 [N], int4 [N, ceil(K / group)], else None)."""

    def __init__(self, fmt: str, shape: tuple[int, int], data: torch.Tensor, scales: torch.Tensor | None,
                 group: int = DEFAULT_GROUP):
        check_format(fmt, group)
        self.fmt, self.shape, self.data, self.scales, self.group = fmt, tuple(shape), data, scales, group
        N, K = self.shape
        want = {"f32": (torch.float32, (N, K)), "bf16": (torch.bfloat16, (N, K)), "int8": (torch.int8, (N, K)),
                "int4": (torch.uint8, (N, (K + 31) // 32 * 16))}[fmt]
        if data.dtype != want[0] or tuple(data.shape) != want[1] or not data.is_contiguous():
            raise QuantError(f"{fmt} data for a [{N}, {K}] matrix must be a contiguous {want[0]} tensor of shape "
                             f"{list(want[1])}, got {data.dtype} {list(data.shape)}")
        ws = {"int8": (N,), "int4": (N, -(-K // group))}.get(fmt)
        if ws is not None and (scales is None or scales.dtype != torch.float32 or tuple(scales.shape) != ws
                               or not scales.is_contiguous()):
            raise QuantError(f"{fmt} scales for a [{N}, {K}] matrix must be contiguous float32 {list(ws)}")

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (self.scales.nbytes if self.scales is not None else 0)

    def dequantize(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The float32 matrix [N, K] (or only `rows`, an index tensor -> [len(rows), K])."""
        N, K = self.shape
        data = self.data if rows is None else self.data[rows]
        if self.fmt in ("f32", "bf16"):
            return data.float()
        scales = self.scales if rows is None else self.scales[rows]
        if self.fmt == "int8":
            return data.float() * scales[:, None]
        n = data.shape[0]
        blocks = data.view(n, -1, 1, 16)
        q = torch.cat([blocks & 15, blocks >> 4], dim=2).reshape(n, -1)[:, :K]  # [n, K] in [0, 15]
        w = (q.float() - 8.0).view(n, -1)
        s = scales.repeat_interleave(self.group, dim=1)[:, :K]
        return w * s


def quantize(w: torch.Tensor, fmt: str, group: int = DEFAULT_GROUP) -> Packed:
    """A [N, K] weight (any float dtype) in format `fmt` (module docstring gives each format's rounding and
    error bound). Rows are converted to float32 in chunks of ~4 MB, so the temporaries stay small next to
    the packed result (what bounds peak memory while loading)."""
    check_format(fmt, group)
    if w.dim() != 2:
        raise QuantError(f"quantize expects a 2-D weight, got shape {list(w.shape)}")
    if not w.is_floating_point():
        raise QuantError(f"quantize expects a float weight, got {w.dtype}")
    N, K = w.shape
    w = w.detach().to("cpu")
    if fmt == "f32":
        return Packed(fmt, (N, K), w.float().contiguous(), None)
    if fmt == "bf16":
        return Packed(fmt, (N, K), w.to(torch.bfloat16).contiguous(), None)
    rows = max(1, (4 << 20) // (4 * max(K, 1)))
    if fmt == "int8":
        data, scales = torch.empty(N, K, dtype=torch.int8), torch.empty(N)
        for r0 in range(0, N, rows):
            c = w[r0:r0 + rows].to(torch.float32, copy=True)  # never the caller's tensor: changed in place below
            s = c.abs().amax(dim=1) / 127.0
            s = torch.where(s > 0, s, torch.ones_like(s))
            data[r0:r0 + rows] = c.div_(s[:, None]).round_().clamp_(-127, 127).to(torch.int8)
            scales[r0:r0 + rows] = s
        return Packed(fmt, (N, K), data, scales)
    ng, Kp = -(-K // group), -(-K // 32) * 32
    width = max(ng * group, Kp)
    data, scales = torch.empty(N, Kp // 2, dtype=torch.uint8), torch.empty(N, ng)
    for r0 in range(0, N, rows):
        c = w[r0:r0 + rows].to(torch.float32, copy=True)  # never the caller's tensor: changed in place below
        n = c.shape[0]
        padded = torch.zeros(n, width)
        padded[:, :K] = c
        g = padded[:, :ng * group].view(n, ng, group)
        s = g.abs().amax(dim=2) / 7.0  # [n, ng]
        s = torch.where(s > 0, s, torch.ones_like(s))
        g.div_(s[:, :, None]).round_().clamp_(-7, 7).add_(8)
        padded[:, K:] = 8.0  # padding dequantizes to 0
        blocks = padded[:, :Kp].to(torch.uint8).view(n, Kp // 32, 2, 16)
        data[r0:r0 + rows] = (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n, Kp // 2)
        scales[r0:r0 + rows] = s
    return Packed(fmt, (N, K), data, scales, group)


class QuantLinear(nn.Module):
    """nn.Linear with its weight stored packed (`Packed`); float32 bias. forward(x [..., K]) -> [..., N]
    dequantizes the weight for the product (the native decode kernel reads the packed bytes instead)."""

    def __init__(self, packed: Packed, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = packed.shape
        self.fmt, self.group = packed.fmt, packed.group
        self.register_buffer("qweight", packed.data)
        self.register_buffer("scales", packed.scales)
        self.register_parameter("bias", None if bias is None else
                                nn.Parameter(bias.detach().float().contiguous(), requires_grad=False))

    @property
    def packed(self) -> Packed:
        return Packed(self.fmt, (self.out_features, self.in_features), self.qweight, self.scales, self.group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.packed.dequantize().to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        g = f", group={self.group}" if self.fmt == "int4" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt}{g}"


class QuantEmbedding(nn.Module):
    """nn.Embedding with its table stored packed; forward(ids) dequantizes only the rows looked up."""

    def __init__(self, packed: Packed):
        super().__init__()
        self.num_embeddings, self.embedding_dim = packed.shape
        self.fmt, self.group = packed.fmt, packed.group
        self.register_buffer("qweight", packed.data)
        self.register_buffer("scales", packed.scales)

    @property
    def packed(self) -> Packed:
        return Packed(self.fmt, (self.num_embeddings, self.embedding_dim), self.qweight, self.scales, self.group)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        return self.packed.dequantize(flat).view(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, fmt={self.fmt}"


LINEAR_NAMES = ("attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w3", "feed_forward.w2")


def layer_format(name: str, fmt: str) -> str:
    """The stored format of the parameter `name` (a state-dict key) when the model's layers use `fmt`:
    linear layers `fmt`, embeddings and output head `head_format(fmt)`, norms and biases float32."""
    if not name.endswith(".weight") or "norm" in name:
        return "f32"
    if "tok_embeddings" in name or name.startswith("output."):
        return head_format(fmt)
    return fmt


def packed_module(name: str, packed: Packed, bias: torch.Tensor | None = None) -> nn.Module:
    return QuantEmbedding(packed) if "tok_embeddings" in name else QuantLinear(packed, bias)


def quantize_model_(model, fmt: str, group: int = DEFAULT_GROUP):
    """Replace the linear layers and embeddings of an `InternLM2ForCausalLM` by packed ones, in place, one at
    a time (module docstring gives the formats used). `fmt` "f32" leaves the model as it is. -> model."""
    check_format(fmt, group)
    if fmt == "f32":
        return model
    m = model.model
    targets = [("model.tok_embeddings", m, "tok_embeddings"), ("output", model, "output")]
    for i, layer in enumerate(m.layers):
        for sub, attr in (("attention", "wqkv"), ("attention", "wo"), ("feed_forward", "w1"),
                          ("feed_forward", "w3"), ("feed_forward", "w2")):
            targets.append((f"model.layers.{i}.{sub}.{attr}", getattr(layer, sub), attr))
    for name, parent, attr in targets:
        old = getattr(parent, attr)
        if isinstance(old, (QuantLinear, QuantEmbedding)):
            continue
        f = layer_format(name + ".weight", fmt)
        packed = quantize(old.weight.data, f, group)
        bias = getattr(old, "bias", None)
        setattr(parent, attr, packed_module(name, packed, None if bias is None else bias.data))
        del old
    return model


def model_format(model) -> str:
    """The stored format of a model's linear layers ("f32" when none is packed)."""
    for mod in model.modules():
        if isinstance(mod, QuantLinear) and mod.in_features and mod.out_features and mod.fmt:
            if mod is not getattr(model, "output", None):
                return mod.fmt
    return "f32"


# ---- the KV cache's formats ----------------------------------------------------------------------------------
# The engine's paged KV cache (puyu.engine.kv_cache) stores keys and values in one of these; the native decode
# kernel (puyu/engine/fused_decode.c, "KV formats") writes and reads the same bytes.
#   f32   float32, 4 bytes per element
#   bf16  bfloat16 (round to nearest even), 2 bytes per element; |x - deq| <= 2^-9 |x|
#   int8  symmetric, one float32 scale per token and kv head (over its head_dim elements):
#         s = max_d |x_d| / 127, q_d = round_half_even(x_d / s) in [-127, 127] (s = 0, q = 0 for an all-zero
#         row); D + 4 bytes per head and token; |x_d - q_d s| <= s / 2
KV_FORMATS = ("f32", "bf16", "int8")
KV_CODES = {"f32": 0, "bf16": 1, "int8": 2}  # the kernel's KV_* values


def check_kv_format(kv: str) -> None:
    if kv not in KV_FORMATS:
        raise QuantError(f"unknown KV cache format {kv!r}: expected one of {', '.join(KV_FORMATS)}")


def kv_bytes_per_token(cfg, kv: str = "f32") -> int:
    """Bytes of K and V cache per token in format `kv`: 2 * layers * kv_heads * (head_dim * element bytes, plus
    the 4-byte scale of each head in int8)."""
    check_kv_format(kv)
    per_head = {"f32": 4 * cfg.head_dim, "bf16": 2 * cfg.head_dim, "int8": cfg.head_dim + 4}[kv]
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * per_head


def quantize_kv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 keys or values: x [..., D] (any float dtype) -> (q int8 [..., D], scales float32 [...]), one scale
    per row of D (a token's head). The rounding is the kernel's, bit for bit (tests/engine/test_engine_kv_quant.py)."""
    x = x.float()
    s = x.abs().amax(dim=-1) / 127.0  # [...]
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q = (x / safe[..., None]).round_().clamp_(-127, 127).to(torch.int8)
    return q, s


def dequantize_kv(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(q int8 [..., D], scales [...]) -> float32 [..., D] = q * s (one new tensor: scaled in place)."""
    return q.to(torch.float32, copy=True).mul_(s[..., None])
