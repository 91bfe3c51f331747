"""AWQ 4-bit checkpoints (the AutoAWQ "GEMM" layout that LMDeploy's `lmdeploy lite auto_awq` also writes, e.g.
InternLM's `internlm2-chat-7b-4bits`): recognised, unpacked and converted into puyu's formats while loading.

Layout (per linear layer X with weight W [N = out_features, K = in_features], group size G, usually 128):

- `X.qweight` int32 [K, N / 8], `X.qzeros` int32 [K / G, N / 8], `X.scales` fp16 [K / G, N] (`X.bias` fp16 [N]
  when the layer has one); every other tensor (embeddings, norms, output head) stored as usual in fp16.
- Each int32 packs 8 4-bit values of 8 consecutive output columns 8c..8c+7: bits 4i..4i+3 hold column
  8c + ORDER[i], ORDER = (0, 2, 4, 6, 1, 3, 5, 7) (AutoAWQ's `AWQ_ORDER`); qzeros are packed the same way.
- Value: W[n, k] = (q[k, n] - z[k // G, n]) * s[k // G, n], q and z in [0, 15] (asymmetric, zero point).
- config.json `quantization_config` {"quant_method": "awq", "bits": 4, "group_size": G, "zero_point": true,
  "version": "gemm"} (or AutoAWQ's older `quant_config.json` {"w_bit", "q_group_size", "zero_point", "version"}).

puyu's int4 is symmetric (w = s (q - 8)) and its kernel has no zero point, so an AWQ value (q - z) s, which
can span [-15 s, 15 s], is not stored as is: each layer is unpacked to float32 (exact: fp16 scale times an
integer in [-15, 15]) and re-quantized, one layer at a time:

- weights=None (default) -> int4 in groups of 32 (0.625 bytes per weight against AWQ's ~0.52): added error
  |w - w_awq| <= s32 / 2, s32 = max |w_awq| over the 32-weight group / 7;
- "int8" -> per output row, |w - w_awq| <= max_row |w_awq| / 254 (twice the bytes, nearly AWQ's values);
- "f32" -> AWQ's values exactly; "bf16" -> rounded to bf16; "int4" with --group 64/128 -> larger groups.
Embeddings and head follow `quant.head_format` of the chosen format, as for any checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from puyu.errors import CheckpointError

ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
DEFAULT_FORMAT, DEFAULT_GROUP = "int4", 32


def awq_settings(path: str | Path, cfg_extra: dict | None = None) -> dict | None:
    """{"group": G} when `path` is an AWQ checkpoint of a layout puyu reads, None when it is not AWQ at all.
    Raises CheckpointError for AWQ settings it cannot read (bits != 4, no zero point, GEMV layout)."""
    path = Path(path)
    qc = (cfg_extra or {}).get("quantization_config")
    if qc is None and (path / "config.json").exists():
        try:
            qc = json.loads((path / "config.json").read_text(encoding="utf-8")).get("quantization_config")
        except (json.JSONDecodeError, UnicodeDecodeError):
            qc = None
    if qc is None and (path / "quant_config.json").exists():
        try:
            old = json.loads((path / "quant_config.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}/quant_config.json is not valid JSON ({e})") from None
        qc = {"quant_method": "awq", "bits": old.get("w_bit"), "group_size": old.get("q_group_size"),
              "zero_point": old.get("zero_point", True), "version": old.get("version", "gemm")}
    if not isinstance(qc, dict) or str(qc.get("quant_method", "")).lower() != "awq":
        if isinstance(qc, dict) and qc.get("quant_method"):
            raise CheckpointError(f"{path}: quantization method {qc.get('quant_method')!r} is not supported "
                                  f"(puyu reads AWQ 4-bit checkpoints and GGUF files)")
        return None
    bits, group = qc.get("bits", qc.get("w_bit")), qc.get("group_size", qc.get("q_group_size"))
    version = str(qc.get("version", "gemm")).lower()
    if bits != 4:
        raise CheckpointError(f"{path}: AWQ with {bits} bits is not supported (4 only)")
    if not qc.get("zero_point", True):
        raise CheckpointError(f"{path}: AWQ without zero points is not supported")
    if version != "gemm":
        raise CheckpointError(f"{path}: AWQ layout {version!r} is not supported (the GEMM layout only)")
    if not isinstance(group, int) or group <= 0:
        raise CheckpointError(f"{path}: AWQ group_size {group!r} is not a positive integer")
    return {"group": group}


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C / 8] -> int64 [R, C] in [0, 15], undoing AWQ's column order."""
    R, C8 = packed.shape
    shifts = torch.arange(0, 32, 4, dtype=torch.int64)
    nib = (packed.to(torch.int64)[:, :, None] >> shifts) & 15  # [R, C8, 8]: nibble i of each int32
    out = torch.empty(R, C8, 8, dtype=torch.int64)
    out[:, :, list(ORDER)] = nib  # nibble i holds column ORDER[i]
    return out.reshape(R, C8 * 8)


def dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int,
               name: str = "") -> torch.Tensor:
    """W float32 [N, K] of one AWQ layer (module docstring). Raises CheckpointError on inconsistent shapes."""
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise CheckpointError(f"{name}: AWQ qweight/qzeros must be int32, got {qweight.dtype}/{qzeros.dtype}")
    K, N8 = qweight.shape
    N = N8 * 8
    ng = -(-K // group)
    if tuple(qzeros.shape) != (ng, N8) or tuple(scales.shape) != (ng, N):
        raise CheckpointError(f"{name}: AWQ shapes do not agree: qweight {list(qweight.shape)}, qzeros "
                              f"{list(qzeros.shape)}, scales {list(scales.shape)} with group size {group}")
    q = unpack_int4(qweight)  # [K, N]
    z = unpack_int4(qzeros).repeat_interleave(group, dim=0)[:K]  # [K, N]
    s = scales.float().repeat_interleave(group, dim=0)[:K]
    return ((q - z).float() * s).t().contiguous()
