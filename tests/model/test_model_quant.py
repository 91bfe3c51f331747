"""Stored weight formats (puyu.model.quant): quantize/dequantize round trips within each format's stated
error bound, the packed int4 layout against an independent element-by-element reading, and a model whose
layers are swapped for packed ones computing the same as a float model holding the dequantized weights."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import make_model

from puyu.model.quant import (
    Packed,
    QuantEmbedding,
    QuantError,
    QuantLinear,
    model_format,
    quantize,
    quantize_model_,
)


@pytest.mark.parametrize("shape", [(7, 70), (16, 64), (3, 1030), (1, 5)])
def test_round_trip_error_bounds(shape):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(*shape, generator=g) * torch.rand(shape[0], 1, generator=g)  # rows of different scales
    w[0, :3] = 0.0
    w0 = w.clone()
    bf = quantize(w, "bf16").dequantize()
    assert ((bf - w).abs() <= w.abs() * 2.0 ** -8).all()  # bf16: 8 significant bits, round to nearest
    p8 = quantize(w, "int8")
    s = w.abs().amax(1, keepdim=True) / 127
    assert ((p8.dequantize() - w).abs() <= s / 2 + 1e-7).all()
    assert p8.data.abs().max() <= 127
    for group in (32, 64, 128):
        p4 = quantize(w, "int4", group)
        d = p4.dequantize()
        assert d.shape == w.shape
        ng = -(-shape[1] // group)
        assert p4.scales.shape == (shape[0], ng)
        for gi in range(ng):
            cols = slice(gi * group, min((gi + 1) * group, shape[1]))
            s = w[:, cols].abs().amax(1, keepdim=True) / 7
            assert ((d[:, cols] - w[:, cols]).abs() <= s / 2 + 1e-6).all(), group
    assert torch.equal(w, w0)  # the caller's float weights are never changed


def test_int4_layout_read_element_by_element():
    """Byte i of each 32-weight block: weight i in the low nibble, weight i + 16 in the high one."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 75, generator=g)
    p = quantize(w, "int4", 32)
    assert p.data.shape == (3, 48)  # 75 -> 96 padded weights, 2 per byte
    d = p.dequantize()
    for n in range(3):
        for k in range(75):
            byte = int(p.data[n, (k // 32) * 16 + k % 16])
            q = byte & 15 if k % 32 < 16 else byte >> 4
            assert d[n, k] == (q - 8) * p.scales[n, k // 32]
        for k in range(75, 96):  # padding stores q = 8 (zero)
            byte = int(p.data[n, (k // 32) * 16 + k % 16])
            assert (byte & 15 if k % 32 < 16 else byte >> 4) == 8


def test_bad_formats_are_refused():
    with pytest.raises(QuantError, match="unknown weight format"):
        quantize(torch.zeros(2, 2), "int3")
    with pytest.raises(QuantError, match="group size"):
        quantize(torch.zeros(2, 64), "int4", 48)
    with pytest.raises(QuantError, match="must be a contiguous"):
        Packed("int8", (2, 4), torch.zeros(2, 4), torch.ones(2))


@pytest.mark.parametrize("fmt", ["bf16", "int8", "int4"])
def test_quantized_model_equals_float_model_on_dequantized_weights(fmt):
    model = make_model(bias=True)
    ref = copy.deepcopy(model)
    quantize_model_(model, fmt, 32)
    assert model_format(model) == fmt
    assert isinstance(model.model.tok_embeddings, QuantEmbedding) and isinstance(model.output, QuantLinear)
    with torch.no_grad():  # the float model gets exactly the dequantized weights
        ref.model.tok_embeddings.weight.copy_(model.model.tok_embeddings.packed.dequantize())
        ref.output.weight.copy_(model.output.packed.dequantize())
        for lq, lf in zip(model.model.layers, ref.model.layers):
            for sub in ("attention", "feed_forward"):
                for name, mod in getattr(lq, sub).named_children():
                    if isinstance(mod, QuantLinear):
                        getattr(getattr(lf, sub), name).weight.copy_(mod.packed.dequantize())
    ids = torch.randint(3, 131, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(model(ids), ref(ids), atol=1e-5)
