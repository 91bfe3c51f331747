"""LoRA through peft: training moves only the adapters, and the merged model gives the same logits."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from puyu.rl.lora import LoRASection, add_lora, has_lora, merge_into_base, merged, unmerge  # noqa: E402


def _lm(tiny_checkpoint):
    from puyu.model.checkpoint import load_model

    return load_model(tiny_checkpoint, dtype="float32", device="cpu")


def test_lora_trains_only_adapters_and_merges_exactly(tiny_checkpoint, tmp_path, one_thread):
    from puyu.model.checkpoint import load_model, save_pretrained
    from puyu.train.optim import build_optimizer

    base = _lm(tiny_checkpoint).eval()
    model = add_lora(_lm(tiny_checkpoint), LoRASection(r=4, alpha=8.0))
    ids = torch.randint(3, base.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # B starts at zero: a fresh adapter changes nothing
        assert torch.equal(model(ids), base(ids))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, 1e-2, weight_decay=0.0)
    model.train()
    for _ in range(3):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable  # only adapter weights moved
    assert any("lora_B" in n for n in changed)
    with torch.no_grad():
        out = model(ids)
        assert not torch.allclose(out, base(ids), atol=1e-4)  # the adapters did learn something
        plain = merged(model)
        assert not has_lora(plain) and has_lora(model)
        assert torch.allclose(plain(ids), out, atol=1e-5)
        save_pretrained(plain, tmp_path / "merged")
        assert torch.allclose(load_model(tmp_path / "merged", dtype="float32")(ids), out, atol=1e-5)
        # in-place merge for rollouts, then unmerge: the same function either way
        merge_into_base(model)
        assert torch.allclose(model(ids), out, atol=1e-5)
        unmerge(model)
        assert torch.allclose(model(ids), out, atol=1e-6)


def test_lora_errors(tiny_checkpoint):
    from puyu.errors import ConfigError

    with pytest.raises(ConfigError, match="not linear layers"):
        add_lora(_lm(tiny_checkpoint), LoRASection(targets=["q_proj"]))
    with pytest.raises(ConfigError, match="lora.r"):
        add_lora(_lm(tiny_checkpoint), LoRASection(r=0))


@pytest.mark.slow
def test_grpo_with_lora_keeps_base_weights_bit_exact(tiny_checkpoint, tmp_path, one_thread):
    """Rollouts fold the adapters in and out; the frozen weights in the checkpoint equal the SFT model's."""
    from puyu.model.checkpoint import load_model
    from puyu.rl.grpo import run_grpo
    from puyu.rl.recipe import AlignRecipe
    from puyu.train.recipe import from_dict
    from puyu.train.state import find_latest, load_checkpoint

    r = from_dict(AlignRecipe, {"out_dir": str(tmp_path), "threads": 1, "progress": False,
                                "policy": {"init": str(tiny_checkpoint)}, "lora": {"enabled": True, "r": 4},
                                "prompts": {"weights": {"arithmetic": 1.0}, "eval_n": 2},
                                "grpo": {"group_size": 3, "prompts_per_iter": 2, "iterations": 2, "max_new_tokens": 5,
                                         "save_every": 2, "eval_every": 2, "lr": 1e-2}})
    run_grpo(r, score_fn=lambda pred, s: float(len(pred) % 2))
    st = load_checkpoint(find_latest(tmp_path / "grpo" / "checkpoints"))["actor"]
    init = load_model(tiny_checkpoint, dtype="float32").state_dict()
    lora = [k for k in st if "lora_" in k]
    assert lora and any(not torch.all(st[k] == 0) for k in lora if "lora_B" in k)  # the adapters trained
    for k, v in st.items():
        if "lora_" not in k:
            assert torch.equal(v, init[k.replace(".base_layer", "")]), k
    saved = load_model(tmp_path / "grpo" / "hf", dtype="float32")  # merged: a plain model
    assert not any("lora_" in k for k in saved.state_dict())
