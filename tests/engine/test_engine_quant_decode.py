"""The native kernel reading stored weight formats (bf16, int8, int4): its products against torch's on the
dequantized weights (tails in rows, outputs and K; every group size), its decode logits against the
quantized model's own forward (which dequantizes each layer for PyTorch's ops), in every instruction-set
build this CPU runs (others skipped), and the engine's decode path naming the format. These are the
float-activation products (act="f32"); the integer ones (act="int8", the default) are checked in
test_engine_int_dot.py."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_model

import puyu.engine.fused_decode as fd
from puyu.engine.fused_decode import FusedDecode
from puyu.engine.kv_cache import PagedKVCache, SequenceBlocks
from puyu.engine.sampling import SamplingParams
from puyu.engine.scheduler import Engine, decode, request_rope_base
from puyu.model.quant import quantize, quantize_model_

pytestmark = pytest.mark.skipif(not fd.available(), reason="no C compiler: the kernel cannot be built here")
ISAS = ["avx512", "avx2", "portable"]
FMTS = ["bf16", "int8", "int4"]


def isa_flags(isa: str) -> tuple[str, ...]:
    """The build's flags; "-amd": with fd.AMD_FLAGS (what an AMD CPU builds: one weight row at a time for a single
    input row, the L2 prefetch), the others without them, on any CPU."""
    base = isa.removesuffix("-amd")
    if base not in fd.cpu_isas():
        pytest.skip(f"this CPU cannot run the {base} build")
    flags = tuple(f for f in fd.ISA_FLAGS[base] if f not in fd.AMD_FLAGS)
    return (*flags, *fd.AMD_FLAGS) if isa.endswith("-amd") else flags


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("isa", [*ISAS, "avx512-amd", "avx2-amd"])
def test_stored_format_products_match_torch(isa, fmt):
    flags = isa_flags(isa)
    g = torch.Generator().manual_seed(0)
    for m in (1, 2, 3, 4, 5, 9):
        # K tails (not a multiple of 8, 16 or 32; a partial last group), output tails, K >= 1024
        for n, k, group in [(48, 64, 32), (45, 70, 32), (17, 33, 64), (130, 128, 128), (5, 300, 64), (13, 1056, 128),
                            (27, 1030, 32), (3, 8, 32)]:
            x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
            p = quantize(w, fmt, group)
            for bias in (b, None):
                got, ref = fd.qlinear(x, p, bias, flags=flags, act="f32"), torch.nn.functional.linear(x, p.dequantize(), bias)
                assert torch.allclose(got, ref, atol=3e-4, rtol=1e-5), (m, n, k, (got - ref).abs().max())
            assert torch.equal(fd.qrow(p, n - 1, flags=flags), p.dequantize()[n - 1])  # an embedding row


def full_logits(model, tokens, base):
    with torch.inference_mode():
        return model(torch.tensor([tokens]), rope_base=base)[0]


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("isa", ["avx512", "avx2", "avx512-amd", "avx2-amd"])
def test_quantized_decode_equals_the_models_forward(isa, fmt):
    """Logits of a quantized model through the kernel (prefill, then decode with the batch's rows split
    and with the weight rows split) against its forward on the same dequantized weights."""
    model = quantize_model_(make_model(hidden_size=128, intermediate_size=200, num_attention_heads=4,
                                       num_key_value_heads=2, bias=True), fmt, 32)
    cfg = model.config
    step = FusedDecode(model, threads=2, flags=isa_flags(isa), act="f32")
    assert step.path == f"fused-{isa.removesuffix('-amd')}-{fmt}"
    cache = PagedKVCache(cfg, num_blocks=80, block_size=8)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in (9, 30, 3, 17, 12)]
    seqs = [SequenceBlocks(cache, len(p) + 2) for p in prompts]
    bases = [request_rope_base(cfg, len(p), 2) for p in prompts]
    got = step.prefill(cache, seqs, prompts, bases)
    for p, base, row in zip(prompts, bases, got):
        assert torch.allclose(row, full_logits(model, p, base)[-1], atol=3e-5)
    nxt = torch.randint(3, cfg.vocab_size, (len(prompts),), generator=g).tolist()
    for split_rows in (1, 1000):
        step.split_rows, step.min_parallel = split_rows, 0
        got = decode(model, cache, seqs, nxt, [len(p) for p in prompts], bases, step)
        for p, t, base, row in zip(prompts, nxt, bases, got):
            assert torch.allclose(row, full_logits(model, p + [t], base)[-1], atol=3e-5)


@pytest.mark.parametrize("fmt", FMTS)
def test_engine_decodes_a_quantized_model(fmt, monkeypatch):
    monkeypatch.setenv("PUYU_QUANT_ACT", "f32")  # the model's forward multiplies float activations
    model = quantize_model_(make_model(), fmt)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 131, (n,), generator=g).tolist() for n in (3, 17, 8)]
    ref = []
    for p in prompts:
        seq = list(p)
        for _ in range(6):
            seq.append(int(full_logits(model, seq, None)[-1].argmax()))
        ref.append(seq[len(p):])
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    with Engine(model, max_batch_size=3, cache_tokens=256, block_size=4, threads=2) as eng:
        assert eng.stats()["decode_path"] == f"fused-{FusedDecode(model).isa}-{fmt}"
        assert [r.token_ids for r in eng.generate(prompts, params)] == ref
    with Engine(model, max_batch_size=3, cache_tokens=256, block_size=4, fast_decode="step") as eng:
        assert eng.stats()["decode_path"] == f"model-{fmt}"  # the torch step reads float weights: not used
        assert [r.token_ids for r in eng.generate(prompts, params)] == ref


def test_a_quantized_model_without_the_kernel_says_so(monkeypatch, caplog):
    """No silent slow path: with the kernel off, the engine names the model's forward and the format, and
    logs why (the forward dequantizes every layer at every step)."""
    monkeypatch.setenv("PUYU_FUSED_DECODE", "0")
    model = quantize_model_(make_model(), "int4")
    with Engine(model, max_batch_size=1, cache_tokens=64, block_size=4) as eng:
        assert eng.stats()["decode_path"] == "model-int4"
        assert len(eng.generate([[3, 4]], SamplingParams(max_new_tokens=3, ignore_eos=True))[0].token_ids) == 3
    assert "no native decode kernel for the int4 model" in caplog.text
