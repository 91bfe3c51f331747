"""Save/load round trips and every bad-input case: each must be a clear error naming what is wrong."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from puyu.errors import CheckpointError, ConfigError
from puyu.model.checkpoint import load_model, read_state_dict, save_pretrained
from puyu.model.config import get_preset
from puyu.model.transformer import InternLM2ForCausalLM


@pytest.fixture(scope="module")
def model():
    return InternLM2ForCausalLM(get_preset("nano-tiny")).reset_parameters(seed=5).eval()


def _same(a, b):
    ids = torch.randint(0, a.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a(ids), b(ids))


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("shard", [None, 40_000])
def test_round_trip(model, tmp_path, safe, shard):
    save_pretrained(model, tmp_path, max_shard_bytes=shard, safe_serialization=safe)
    names = sorted(p.name for p in tmp_path.iterdir())
    if shard:
        assert sum(n.endswith(".safetensors" if safe else ".bin") for n in names) > 2
        assert ("model.safetensors.index.json" if safe else "pytorch_model.bin.index.json") in names
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen["eos_token_id"][0] == 2
    assert _same(model, load_model(tmp_path))


def test_bf16_storage_and_compute_dtypes(model, tmp_path):
    save_pretrained(model, tmp_path, dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    m32 = load_model(tmp_path)  # fp32 compute on CPU by default
    assert next(m32.parameters()).dtype == torch.float32
    assert next(load_model(tmp_path, dtype="bf16").parameters()).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype"):
        load_model(tmp_path, dtype="int3")


def test_preset_and_bad_path():
    m = load_model("nano-tiny")
    assert m(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 512)
    with pytest.raises(CheckpointError, match="neither a checkpoint directory nor a preset"):
        load_model("/nonexistent/dir")


@pytest.fixture()
def sharded(model, tmp_path):
    save_pretrained(model, tmp_path, max_shard_bytes=40_000)
    return tmp_path


def _index(d):
    return json.loads((d / "model.safetensors.index.json").read_text())


def _rewrite_shard(d, key, fn):
    """Rewrite the shard holding `key` with fn(dict) applied."""
    shard = d / _index(d)["weight_map"][key]
    from safetensors.torch import load_file

    tensors = load_file(str(shard))
    fn(tensors)
    save_file(tensors, str(shard))
    return shard


def test_missing_key_named(sharded):
    key = "model.layers.1.feed_forward.w2.weight"
    _rewrite_shard(sharded, key, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.feed_forward\.w2\.weight"):
        load_model(sharded)


def test_missing_index_entry_named(sharded):
    idx = _index(sharded)
    del idx["weight_map"]["model.norm.weight"]
    (sharded / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match=r"missing keys.*model\.norm\.weight"):
        load_model(sharded)


def test_unexpected_key_named(sharded):
    idx = _index(sharded)
    key = "model.layers.0.attention.wqkv.weight"
    _rewrite_shard(sharded, key, lambda t: t.update({"model.layers.0.attention.extra.weight": torch.zeros(2)}))
    idx["weight_map"]["model.layers.0.attention.extra.weight"] = idx["weight_map"][key]
    (sharded / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match=r"unexpected keys.*attention\.extra\.weight"):
        load_model(sharded)


def test_wrong_shape_gives_both_shapes(sharded):
    key = "model.layers.0.attention.wo.weight"
    _rewrite_shard(sharded, key, lambda t: t.update({key: torch.zeros(64, 32)}))
    with pytest.raises(CheckpointError, match=r"wo\.weight.*\[64, 32\].*\[64, 64\]"):
        load_model(sharded)


def test_truncated_shard(sharded):
    shard = sharded / _index(sharded)["weight_map"]["output.weight"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(sharded)


def test_corrupt_header(sharded):
    shard = sharded / _index(sharded)["weight_map"]["output.weight"]
    data = bytearray(shard.read_bytes())
    data[8:20] = b"\xff" * 12
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model(sharded)


def test_index_names_missing_shard(sharded):
    idx = _index(sharded)
    idx["weight_map"]["output.weight"] = "model-99999-of-99999.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="do not exist: model-99999"):
        load_model(sharded)


def test_unknown_tensor_dtype(sharded):
    key = "model.norm.weight"
    _rewrite_shard(sharded, key, lambda t: t.update({key: t[key].to(torch.float8_e4m3fn)}))
    with pytest.raises(CheckpointError, match="unsupported dtype"):
        load_model(sharded)


def test_corrupt_bin(model, tmp_path):
    save_pretrained(model, tmp_path, safe_serialization=False)
    f = tmp_path / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path)


def test_no_weights(tmp_path):
    get_preset("nano-tiny").save(tmp_path)
    with pytest.raises(CheckpointError, match="no weights"):
        load_model(tmp_path)


def test_cli_reports_errors_without_traceback(sharded):
    (sharded / "config.json").write_text('{"model_type": "internlm2", "hidden_size": "big"}')
    r = subprocess.run([sys.executable, "-m", "puyu.cli", "info", str(sharded)], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith("error:") and "hidden_size" in r.stderr and "Traceback" not in r.stderr


def test_read_state_dict_matches(model, tmp_path):
    save_pretrained(model, tmp_path, max_shard_bytes=30_000)
    sd = read_state_dict(tmp_path)
    assert set(sd) == set(model.state_dict())
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
