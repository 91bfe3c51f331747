from __future__ import annotations

import json

import pytest

from puyu.errors import ConfigError
from puyu.model.config import ModelConfig, get_preset
from puyu.model.info import parameter_groups


@pytest.mark.parametrize("name,expected", [("internlm2-1_8b", 1_889_110_016), ("internlm2-7b", 7_737_708_544),
                                           ("internlm2-20b", 19_861_149_696)])
def test_released_parameter_counts(name, expected):
    assert parameter_groups(get_preset(name))["total"] == expected


def test_kv_bytes_per_token_7b():
    assert get_preset("internlm2-7b").kv_bytes_per_token(2) == 128 * 1024


@pytest.mark.parametrize("changes,field", [
    (dict(rope_scaling={"type": "yarn", "factor": 2.0}), "rope_scaling.type"),
    (dict(rope_scaling={"type": "dynamic", "factor": 0.5}), "rope_scaling.factor"),
    (dict(num_attention_heads=32, num_key_value_heads=6), "num_key_value_heads"),
    (dict(hidden_size=-4), "hidden_size"),
    (dict(torch_dtype="float8"), "torch_dtype"),
    (dict(bias="yes"), "bias"),
])
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        get_preset("nano", **changes)


def test_config_json_round_trip_and_real_variants(tmp_path):
    cfg = get_preset("internlm2-7b", rope_scaling={"type": "dynamic", "factor": 2.0})
    cfg.save(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["model_type"] == "internlm2" and d["rope_scaling"] == {"type": "dynamic", "factor": 2.0}
    assert ModelConfig.load(tmp_path) == cfg
    # Published configs: rope_scaling null or factor 1.0, auto_map and other keys present.
    d.update(rope_scaling=None, auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config"},
             attn_implementation="eager", torch_dtype="bfloat16")
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert ModelConfig.load(tmp_path).rope_scaling is None
    d["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="model_type"):
        ModelConfig.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.load(tmp_path)


@pytest.mark.parametrize("text, kind", [("[]", "array"), ("null", "null"), ('"x"', "string"), ("3", "number")])
def test_a_config_json_that_is_not_an_object_is_a_one_line_error(tmp_path, text, kind):
    """Valid JSON of another shape (a user's truncated or mistyped file) is named, not an AttributeError."""
    from puyu.model.llama_layout import detect_layout

    (tmp_path / "config.json").write_text(text)
    for read in (detect_layout, ModelConfig.load):
        with pytest.raises(ConfigError, match=rf"config.json holds a JSON {kind}, not an object"):
            read(tmp_path)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("internlm2-70b")
