"""The loop learns: a short pretraining run on tiny data brings validation loss far below the uniform
loss ln(V); and the leaf helpers (schedule, weight-decay groups) follow their contracts."""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import write_recipe

from puyu.errors import ConfigError
from puyu.train.optim import lr_at, param_groups
from puyu.train.recipe import load_recipe


def test_short_pretraining_beats_uniform_by_far(tmp_path, tiny_shards):
    from puyu.model.checkpoint import load_model
    from puyu.train.metrics import read_metrics
    from puyu.train.pretrain import train

    torch.set_num_threads(1)
    rec = write_recipe(tmp_path / "r.yaml", tiny_shards,
                       train={"steps": 60, "eval_every": 20, "save_every": 60, "save_hf": True})
    summary = train(load_recipe(rec))
    vocab = 400
    uniform = math.log(vocab)
    vals = [m["loss"] for m in read_metrics(tmp_path / "out" / "metrics.jsonl") if m["kind"] == "val"]
    assert len(vals) == 3
    assert summary["val_loss"] == vals[-1]
    assert vals[-1] < 0.35 * uniform, f"validation loss {vals[-1]:.3f} vs uniform {uniform:.3f}"
    assert vals[0] > vals[-1]
    assert (tmp_path / "out" / "loss.png").stat().st_size > 1000
    # The final Hugging Face directory loads and reproduces the trained model's validation quality.
    model = load_model(tmp_path / "out" / "hf")
    assert model.config.vocab_size == vocab and (tmp_path / "out" / "hf" / "tokenizer.model").exists()


def test_schedule_warmup_cosine_to_ten_percent():
    peak, total, warm = 1e-3, 100, 10
    lrs = [lr_at(s, total, peak, warm, 0.1) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / warm) and lrs[warm - 1] == pytest.approx(peak)
    assert lrs[warm] == pytest.approx(peak)
    assert lrs[-1] == pytest.approx(0.1 * peak)
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1:]))  # monotone decay after warmup
    mid = warm + (total - 1 - warm) // 2
    assert lrs[mid] == pytest.approx(peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (mid - warm) / (total - 1 - warm)))))
    with pytest.raises(ConfigError):
        lr_at(0, 10, 1e-3, 1, min_ratio=1.5)


def test_weight_decay_on_matrices_only():
    from puyu.model.config import get_preset
    from puyu.model.transformer import InternLM2ForCausalLM

    model = InternLM2ForCausalLM(get_preset("nano-tiny", bias=True))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    assert "output.weight" in decay["names"] and "model.tok_embeddings.weight" in decay["names"]
    assert all(n.endswith(("norm.weight", ".bias")) for n in no_decay["names"])
    assert any(n.endswith("wqkv.bias") for n in no_decay["names"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_clear_errors_for_bad_setups(tmp_path, tiny_shards):
    from puyu.train.pretrain import run_longctx, train

    rec = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_shards), ["train.batch_size=6", "train.grad_accum=4"])
    with pytest.raises(ConfigError, match="multiple of world_size x grad_accum"):
        train(rec)
    rec = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_shards), ["data.seq_len=1024"])
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        train(rec)
    with pytest.raises(ConfigError, match="model.init"):
        run_longctx(load_recipe(write_recipe(tmp_path / "r.yaml", tiny_shards)))
    rec = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_shards), ["data.train=[]"])
    with pytest.raises(ConfigError, match="data.train"):
        train(rec)


def test_longctx_stage_continues_with_new_rope_theta(tmp_path, tiny_shards):
    """The long-context stage loads the pretrained weights, trains at a longer seq_len with a larger
    RoPE base, and writes that base into the saved config."""
    from puyu.model.checkpoint import load_model
    from puyu.train.pretrain import run_longctx, train

    torch.set_num_threads(1)
    (tmp_path / "pre").mkdir()
    (tmp_path / "long").mkdir()
    pre = write_recipe(tmp_path / "pre" / "r.yaml", tiny_shards, train={"steps": 6, "save_hf": True})
    train(load_recipe(pre))
    long = write_recipe(tmp_path / "long" / "r.yaml", tiny_shards,
                        model={"preset": None, "init": str(tmp_path / "pre" / "out" / "hf"), "rope_theta": 80000.0,
                               "max_position_embeddings": 256},
                        data={"seq_len": 192}, train={"steps": 4, "batch_size": 4, "save_hf": True})
    summary = run_longctx(load_recipe(long))
    assert summary["stage"] == "longctx" and math.isfinite(summary["train_loss"])
    cfg = load_model(tmp_path / "long" / "out" / "hf").config
    assert cfg.rope_theta == 80000.0 and cfg.max_position_embeddings == 256
