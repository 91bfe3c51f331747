"""Recipes: typed YAML, `--set` overrides, unknown keys named, example recipes parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from puyu.errors import ConfigError
from puyu.train.recipe import Recipe, load_recipe, parse_override

REPO = Path(__file__).resolve().parents[2]


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("optim:\n  lr: 0.001\ntrain:\n  steps: 7\n", encoding="utf-8")
    r = load_recipe(f, ["optim.lr=3e-4", "train.batch_size=4", "data.doc_mask=false", "model.preset=nano-tiny"])
    assert r.optim.lr == pytest.approx(3e-4) and isinstance(r.optim.lr, float)
    assert r.train.steps == 7 and r.train.batch_size == 4
    assert r.data.doc_mask is False and r.model.preset == "nano-tiny"
    assert r.optim.betas == [0.9, 0.95]  # untouched default


def test_unknown_keys_are_named(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("optim:\n  lr: 0.001\n  learning_rate: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"optim\.learning_rate"):
        load_recipe(f)
    with pytest.raises(ConfigError, match=r"trian"):
        load_recipe(None, ["trian.steps=3"])
    with pytest.raises(ConfigError, match=r"train\.stepz"):
        load_recipe(None, ["train.stepz=3"])


def test_types_are_checked():
    with pytest.raises(ConfigError, match=r"train\.steps must be int"):
        load_recipe(None, ["train.steps=ten"])
    with pytest.raises(ConfigError, match=r"data\.doc_mask must be bool"):
        load_recipe(None, ["data.doc_mask=3"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="data.pack"):
        load_recipe(None, ["data.pack=random"])
    # a flow map without spaces after the colons: YAML's keys 'hidden_size:192' etc., named as such
    with pytest.raises(ConfigError, match="'hidden_size:192' as one key without a value; write a space"):
        parse_override("model.overrides={hidden_size:192,num_attention_heads:6}")
    assert parse_override("model.overrides={hidden_size: 192}") == (["model", "overrides"], {"hidden_size": 192})


def test_nested_section_keeps_parent_defaults():
    from puyu.recipes.nano import NanoRecipe

    r = load_recipe(None, ["longctx.steps=3"], cls=NanoRecipe)
    assert r.longctx.steps == 3
    assert r.longctx.rope_theta == NanoRecipe().longctx.rope_theta  # the parent's default, not StageSection's
    assert r.longctx.seq_len == NanoRecipe().longctx.seq_len


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_example_recipes_parse(path):
    from puyu.recipes.nano import NanoRecipe
    from puyu.rl.recipe import AlignRecipe
    from puyu.train.recipe import TokenizeRecipe

    header = path.read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith("# ") and "puyu" in header, f"{path.name}: first line must be the command"
    kind = "nano" if path.name == "nano.yaml" else header.split("puyu train ")[-1].split()[0] if "puyu train" in header else ""
    cls = {"nano": NanoRecipe, "tokenize": TokenizeRecipe, **dict.fromkeys(("rm", "ppo", "dpo", "grpo"), AlignRecipe)
           }.get(kind, Recipe)
    load_recipe(path, cls=cls)


def test_nano_yaml_matches_builtin_defaults():
    """`make demo` uses recipes/nano.yaml when present, the built-in defaults otherwise: keep them equal."""
    from puyu.recipes.nano import NanoRecipe
    from puyu.train.recipe import to_dict

    assert to_dict(load_recipe(REPO / "recipes" / "nano.yaml", cls=NanoRecipe)) == to_dict(NanoRecipe())


def test_bad_recipe_files_fail_with_one_line(tmp_path):
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("out_dir: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml is not UTF-8 text \(byte 12"):
        load_recipe(latin)
    broken = tmp_path / "broken.yaml"
    broken.write_text("out_dir: x\ntrain: {steps: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken.yaml:3:1: not valid YAML") as e:
        load_recipe(broken)
    assert "\n" not in str(e.value)
    glued = tmp_path / "glued.yaml"
    glued.write_text("model_overrides: {hidden_size:192}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"glued.yaml.model_overrides: YAML reads 'hidden_size:192'.*\{hidden_size: 192\}"):
        load_recipe(glued)
    with pytest.raises(ConfigError, match=r"--set corpus.chat_weights: YAML reads 'tool:0.5'"):
        parse_override("corpus={chat_weights: {tool:0.5}}")


def test_nano_recipe_is_checked_before_any_stage_runs():
    """Wrong values fail in load_recipe (before the corpus, tokenizer and shards stages), one line each."""
    from puyu.recipes.nano import NanoRecipe

    cases = {
        "model_overrides.hidden_size=190": r"pretrain: .*'hidden_size' \(190\) must be divisible by 'num_attention_heads' \(6\)",
        "model_overrides.nonsense=1": r"unknown model config field\(s\) 'nonsense'; known: .*hidden_size",
        "threads=0": r"pretrain: train.threads must be a positive number, auto or null, got 0",
        "corpus.docs_chars=-1": r"corpus.docs_chars must be >= 0, got -1",
        "corpus.val_fraction=2": r"corpus.val_fraction must be in \[0, 1\), got 2",
        "corpus.chat_weights={tool: -1}": r"corpus.chat_weights must map chat kinds to numbers >= 0",
        "pretrain.eval_every=0": r"pretrain: train.eval_every must be positive, got 0",
        "longctx.warmup_steps=-1": r"longctx: optim.warmup_steps must be >= 0, got -1",
        "precision=fp16": r"pretrain: train.precision must be auto, fp32 or bf16, got 'fp16'",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_recipe(None, [text], cls=NanoRecipe)
    # without a recipe file a dotted --set merges into the default model_overrides, as it does into nano.yaml's
    r = load_recipe(None, ["model_overrides.hidden_size=256", "model_overrides.num_attention_heads=8"], cls=NanoRecipe)
    assert r.model_overrides == {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 8,
                                 "num_key_value_heads": 2}


def test_a_recipe_file_reads_5e_4_as_a_float_and_refuses_a_key_written_twice(tmp_path):
    from puyu.errors import ConfigError
    from puyu.train.recipe import read_yaml

    f = tmp_path / "r.yaml"
    f.write_text("optim: {lr: 5e-4, min_lr_ratio: .1E+0}\nname: 1e5x\n")
    assert read_yaml(f) == {"optim": {"lr": 0.0005, "min_lr_ratio": 0.1}, "name": "1e5x"}
    f.write_text("seed: 1\noptim: {lr: 0.1}\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"r\.yaml:3:1: .*key 'seed' appears twice in one mapping \(first on line 1\)"):
        read_yaml(f)
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_yaml("/dev/null")
