from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from puyu.errors import CheckpointError
from puyu.model.checkpoint import load_model, save_pretrained
from puyu.model.config import get_preset
from puyu.model.convert import convert
from puyu.model.llama_layout import pack_wqkv, unpack_wqkv
from puyu.model.transformer import InternLM2ForCausalLM


def test_pack_unpack_inverse_for_weights_and_biases():
    cfg = get_preset("nano")
    H, K, D, C = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
    q, k, v = torch.randn(H * D, C), torch.randn(K * D, C), torch.randn(K * D, C)
    q2, k2, v2 = unpack_wqkv(pack_wqkv(q, k, v, cfg), cfg)
    assert torch.equal(q, q2) and torch.equal(k, k2) and torch.equal(v, v2)
    qb, kb, vb = torch.randn(H * D), torch.randn(K * D), torch.randn(K * D)
    out = unpack_wqkv(pack_wqkv(qb, kb, vb, cfg), cfg)
    assert all(torch.equal(a, b) for a, b in zip(out, (qb, kb, vb)))


def test_cli_round_trip_internlm2_llama_internlm2(tmp_path):
    cfg = get_preset("nano-tiny", bias=True, rope_scaling={"type": "dynamic", "factor": 2.0})
    model = InternLM2ForCausalLM(cfg).reset_parameters(seed=0)
    save_pretrained(model, tmp_path / "a")
    for src, dst, to in (("a", "b", "llama"), ("b", "c", "internlm2")):
        r = subprocess.run([sys.executable, "-m", "puyu.cli", "convert", str(tmp_path / src), str(tmp_path / dst),
                            "--to", to, "--max-shard-size", "50KB"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    llama_cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert llama_cfg["model_type"] == "llama" and llama_cfg["attention_bias"] is True
    assert "model.layers.0.self_attn.q_proj.weight" in json.loads(
        (tmp_path / "b" / "model.safetensors.index.json").read_text())["weight_map"]
    ids = torch.randint(0, cfg.vocab_size, (1, 300))  # past max_position_embeddings (256)
    with torch.no_grad():
        ref = model(ids)
        assert torch.equal(load_model(tmp_path / "c")(ids), ref)
        assert torch.equal(load_model(tmp_path / "b")(ids), ref)  # LLaMA layout loads directly too


def test_llama_checkpoint_with_missing_projection(tmp_path):
    model = InternLM2ForCausalLM(get_preset("nano-tiny")).reset_parameters(seed=0)
    save_pretrained(model, tmp_path / "a")
    convert(tmp_path / "a", tmp_path / "b", to="llama")
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tmp_path / "b" / "model.safetensors"))
    del sd["model.layers.1.self_attn.k_proj.weight"]
    save_file(sd, str(tmp_path / "b" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight"):
        convert(tmp_path / "b", tmp_path / "c", to="internlm2")
