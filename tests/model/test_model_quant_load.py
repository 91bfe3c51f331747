"""Loading with packed weights: `load_model(path, weights=...)` (quantized tensor by tensor while reading)
against quantizing the float model after loading; `puyu quantize` checkpoints that reload as written; the
peak RSS of a quantizing load (a child process); the memory check before loading and its message."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_models import make_model

from puyu.cli import main
from puyu.errors import CheckpointError
from puyu.model.checkpoint import QUANT_KEY, load_model, save_pretrained
from puyu.model.config import get_preset
from puyu.model.memory import MemoryCheckError, check_fits, weight_bytes
from puyu.model.quant import QuantLinear, quantize_model_


def packed_state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fmt", ["bf16", "int8", "int4"])
def test_load_quantizes_like_the_float_model(tmp_path, fmt):
    save_pretrained(make_model(bias=True), tmp_path / "f", dtype="bfloat16")
    got = load_model(tmp_path / "f", weights=fmt, group=32)
    ref = quantize_model_(load_model(tmp_path / "f"), fmt, 32)
    assert isinstance(got.model.layers[1].feed_forward.w2, QuantLinear)
    a, b = packed_state(got), packed_state(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert got.model.layers[0].attention.wqkv.bias.abs().sum() > 0  # biases kept


def test_packed_weights_with_a_16_bit_dtype_are_refused_before_loading(tmp_path, capsys):
    """The model around packed layers runs in float32; a bf16/fp16 rest made the engine fail mid-generation
    (query float32, keys bfloat16). Refused up front, for a directory, a preset and through the CLI."""
    save_pretrained(make_model(), tmp_path / "f", dtype="bfloat16")
    for src in (tmp_path / "f", "nano"):
        for dtype in ("bfloat16", torch.float16):
            with pytest.raises(CheckpointError, match=r"runs in float32 .* leave dtype unset or use float32"):
                load_model(src, weights="int8", dtype=dtype)
    assert isinstance(load_model(tmp_path / "f", weights="bf16", dtype="float32").model.layers[0].feed_forward.w2,
                      QuantLinear)
    assert main(["generate", "--model", str(tmp_path / "f"), "--weights", "bf16", "--dtype", "bfloat16", "--ids", "1 2"]) != 0
    assert "not bfloat16" in capsys.readouterr().err
    assert main(["quantize", str(tmp_path / "f"), str(tmp_path / "q"), "--weights", "int8"]) == 0  # packed as stored
    with pytest.raises(CheckpointError, match=r"a packed checkpoint\): the model around its packed layers runs in float32"):
        load_model(tmp_path / "q", dtype="float16")
    assert isinstance(load_model(tmp_path / "q").model.layers[0].feed_forward.w2, QuantLinear)


def test_quantize_command_writes_a_checkpoint_that_reloads(tmp_path, capsys):
    save_pretrained(make_model(), tmp_path / "f", dtype="bfloat16")
    assert main(["quantize", str(tmp_path / "f"), str(tmp_path / "q"), "--weights", "int4", "--group", "32"]) == 0
    assert "int4 weights" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg[QUANT_KEY] == {"weights": "int4", "group": 32, "embeddings": "int8", "output": "int8"}
    again = load_model(tmp_path / "q")
    ref = load_model(tmp_path / "f", weights="int4", group=32)
    a, b = packed_state(again), packed_state(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.inference_mode():
        assert torch.equal(again(ids), ref(ids))
    with pytest.raises(CheckpointError, match="holds int4 weights"):
        load_model(tmp_path / "q", weights="int8")


def test_quantize_reports_a_small_checkpoint_in_mib(tmp_path, capsys):
    """The nano model's packed weights (a few MiB) were reported as "0.00 GiB"."""
    from puyu.model.transformer import InternLM2ForCausalLM

    save_pretrained(InternLM2ForCausalLM(get_preset("nano")).reset_parameters(seed=0), tmp_path / "f",
                    dtype="bfloat16")
    assert main(["quantize", str(tmp_path / "f"), str(tmp_path / "q"), "--weights", "int8"]) == 0
    out = capsys.readouterr().out
    total = sum(f.stat().st_size for f in (tmp_path / "q").glob("*.safetensors"))
    assert 2**20 < total < 2**30
    assert out.strip().endswith(f"(int8 weights, {total / 2**20:.2f} MiB)"), out

CHILD = textwrap.dedent("""
    import ctypes, json, sys, torch
    from puyu.model.checkpoint import load_model
    from puyu.model.quant import quantize
    from puyu.model.memory import peak_rss_bytes as hwm  # VmHWM: unlike ru_maxrss, not inherited
    from puyu.model.config import get_preset
    from puyu.model.transformer import InternLM2ForCausalLM
    for f in ("int8", "int4"):  # one-time costs (the ops' first calls, ~75 MB of a first meta model), not the load's
        quantize(torch.randn(64, 512).bfloat16(), f)
    with torch.device("meta"):
        InternLM2ForCausalLM(get_preset("nano-tiny"))
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = hwm()
    model = load_model(sys.argv[1], weights="int4")
    packed = sum(t.nbytes for t in model.state_dict().values())
    print(json.dumps({"base": base, "peak": hwm(), "packed": packed}))
""")


@pytest.mark.slow
def test_quantizing_load_peak_rss(tmp_path):
    """Peak RSS above the interpreter's <= 1.3x the packed bytes + the largest tensor in float32."""
    cfg = get_preset("nano", vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=4)
    from puyu.model.transformer import InternLM2ForCausalLM

    save_pretrained(InternLM2ForCausalLM(cfg).reset_parameters(seed=0), tmp_path / "m", dtype="bfloat16")
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "m")], capture_output=True, text=True,
                         check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    largest = 32000 * 1024 * 4
    assert r["peak"] > r["base"] + r["packed"] // 2, r  # the load is measured at all
    assert r["peak"] - r["base"] <= 1.3 * r["packed"] + largest, r


def test_memory_check_names_the_options():
    cfg = get_preset("internlm2-7b")
    assert weight_bytes(cfg, "int4") < weight_bytes(cfg, "int8") < weight_bytes(cfg, "bf16") < weight_bytes(cfg)
    with pytest.raises(MemoryCheckError, match=r"--weights int4 .* or a shorter --context \(at most ~[\d,]+ with"):
        check_fits(cfg, "f32", 4, context=32768, available=12 << 30)
    figures = check_fits(cfg, "int4", 4, context=1000, available=64 << 30)
    assert figures["kv_bytes"] == cfg.kv_bytes_per_token(4) * 1000
    # int4 weights fit 20 GiB, a 200K-token float32 cache (48.8 GiB) or a bf16 one (24.4) does not: int8 does
    with pytest.raises(MemoryCheckError, match=r"48\.83 GiB of f32 KV cache .* try --kv int8 \(12\.59 GiB of KV cache\)"):
        check_fits(cfg, "int4", "f32", context=200000, available=20 << 30)
    assert check_fits(cfg, "int4", "int8", context=200000, available=20 << 30)["kv_bytes"] == 2 * 32 * 8 * 132 * 200000
    with pytest.raises(MemoryCheckError, match=r"--weights int4 --kv int8 .*at most ~[\d,]+ tokens as asked, "
                                               r"~[\d,]+ with --weights int4 --kv int8"):
        check_fits(cfg, "bf16", "bf16", context=200000, available=16 << 30)
    from puyu.model.info import summary

    s = summary(cfg, 200000, "bfloat16", weights="int4")  # puyu info --weights int4 --context 200000
    assert s["total_bytes_at_context"] == (weight_bytes(cfg, "int4") + cfg.kv_bytes_per_token(2) * 200000
                                           + s["activation_bytes_prefill_chunk_fp32"])


def test_the_cli_refuses_before_loading(capsys):
    """A 20B in float32 needs ~75 GiB of weights: refused at once with the options, not OOM-killed."""
    assert main(["generate", "--model", "internlm2-20b", "--ids", "1 2 3", "--max-new-tokens", "1"]) != 0
    err = capsys.readouterr().err
    assert "--weights" in err and "--context" in err and "GiB" in err


def test_peak_rss_of_a_child_is_its_own_not_the_parents():
    """ru_maxrss survives fork+exec on Linux; peak_rss_bytes (VmHWM) must not, or every benchmark child
    would report its parent's peak."""
    from puyu.model.memory import peak_rss_bytes

    big = torch.ones(400 << 20, dtype=torch.uint8)  # touch 400 MiB in this process
    parent = peak_rss_bytes()
    assert parent >= big.numel()
    code = "from puyu.model.memory import peak_rss_bytes; print(peak_rss_bytes())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    child = int(out.stdout)
    assert 0 < child < parent - (300 << 20)
    del big
