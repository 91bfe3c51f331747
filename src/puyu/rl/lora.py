"""LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") for the trained
models of the alignment stages, through the `peft` library (`pip install 'puyu[rl]'`).

`add_lora(model, section)` injects adapters into the InternLM2 projections named in `section.targets`
(default every attention and MLP projection: wqkv, wo, w1, w2, w3) of a puyu module (the actor, the
reward model, the critic) in place, freezes every other parameter, and leaves only the adapters (and the
reward/value `v_head`, which a reward model must learn from scratch) trainable. Each adapted linear keeps
its frozen weight W and adds (alpha / r) * B A x with A [r, in], B [out, r]; B starts at zero, so a fresh
adapter leaves the model's outputs unchanged (peft's initialisation). Optimizer state then covers only
the adapters: at 7B with r 8 on every projection that is ~0.3% of the parameters.

`merged(model)` returns a copy with every adapter folded into its weight (W + (alpha/r) B A) and the
wrappers removed: a plain model that `save_pretrained` / `save_reward_model` write in the usual layout
and that gives the same logits. `merge_into_base` / `unmerge` fold and unfold in place around engine
rollouts (the engine's native decode reads the base weights, which then hold the merged values; the
weights fingerprint changes with them, so the prefix cache never serves keys of other weights).

Defaults: r 8, alpha 16, dropout 0 (the LoRA paper uses r 1-64 with alpha a multiple of r; dropout 0
keeps rollouts and training the same function, which the PPO ratio needs).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn

from puyu.errors import ConfigError

TARGETS = ["wqkv", "wo", "w1", "w2", "w3"]


@dataclass
class LoRASection:
    """`enabled`: train LoRA adapters instead of full weights (actor, critic, reward model)."""

    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list = field(default_factory=lambda: list(TARGETS))

    def validate(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r must be at least 1, got {self.r}")
        if not self.targets:
            raise ConfigError("lora.targets must name at least one projection (wqkv, wo, w1, w2, w3)")


def _peft():
    try:
        import peft
    except ImportError as e:
        raise ConfigError("lora.enabled needs the peft library: pip install 'puyu[rl]'") from e
    return peft


def add_lora(model: nn.Module, section: LoRASection) -> nn.Module:
    """Inject adapters into `model` in place (see the module docstring); returns `model`. Raises
    ConfigError when peft is missing or no target module exists."""
    section.validate()
    peft = _peft()
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in section.targets if t not in names]
    if missing:
        raise ConfigError(f"lora.targets {missing} are not linear layers of this model (it has {sorted(names)})")
    cfg = peft.LoraConfig(r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
                          target_modules=list(section.targets), bias="none")
    peft.inject_adapter_in_model(cfg, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name or name.startswith("v_head"))
    return model


def has_lora(model: nn.Module) -> bool:
    return any("lora_" in n for n, _ in model.named_parameters())


def _lora_layers(model: nn.Module):
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def merge_into_base(model: nn.Module) -> None:
    """Fold every adapter into its base weight in place (outputs unchanged; undo with `unmerge`)."""
    for _, m in _lora_layers(model):
        m.merge()


def unmerge(model: nn.Module) -> None:
    for _, m in _lora_layers(model):
        m.unmerge()


@contextmanager
def decoding_weights(model: nn.Module):
    """Within the block the adapters are folded into the base weights (what the engine's decode reads);
    afterwards the base weights are restored bit for bit (from a copy: W + BA - BA is not W in floating
    point, and the frozen weights must not drift over hundreds of rollouts). Does nothing for a model
    without adapters."""
    layers = _lora_layers(model) if has_lora(model) else []
    saved = [m.get_base_layer().weight.detach().clone() for _, m in layers]
    for _, m in layers:
        m.merge()
    try:
        yield model
    finally:
        for (_, m), w in zip(layers, saved):
            m.unmerge()
            m.get_base_layer().weight.data.copy_(w)


def merged(model: nn.Module) -> nn.Module:
    """A plain copy of `model` with the adapters folded in and the peft wrappers replaced by their base
    linears (the model itself is unchanged). A model without adapters is returned as is."""
    if not has_lora(model):
        return model
    out = copy.deepcopy(model)
    for name, m in _lora_layers(out):
        m.merge()
        parent = out.get_submodule(name.rsplit(".", 1)[0]) if "." in name else out
        setattr(parent, name.rsplit(".", 1)[-1], m.get_base_layer())
    for p in out.parameters():
        p.requires_grad_(True)
    return out
