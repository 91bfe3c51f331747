"""Helpers for the engine and agent tests: a small random InternLM2 model of any shape, with non-zero biases
when it has them (the released init zeroes biases, which would hide a bias that is never added), and a
scripted model whose output is known exactly."""

from __future__ import annotations

import torch
from torch import nn

from puyu.model.config import ModelConfig, get_preset
from puyu.model.transformer import InternLM2ForCausalLM

BASE = dict(vocab_size=131, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32, rope_theta=10000.0, torch_dtype="float32")


def make_model(**kw) -> InternLM2ForCausalLM:
    model = InternLM2ForCausalLM(ModelConfig(**{**BASE, **kw})).reset_parameters(std=0.1, seed=1).eval()
    if kw.get("bias"):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.uniform_(-0.2, 0.2)
    return model


class ScriptedModel(nn.Module):
    """Stands in for the transformer: the logits at position p put all their mass on `sequence[p + 1]`
    (eos past its end), so detokenisation, stop strings and streaming are checked on known text."""

    def __init__(self, vocab_size: int, sequence: list[int]):
        super().__init__()
        self.config = get_preset("nano-tiny", vocab_size=vocab_size)
        self.sequence = sequence
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the engine a device and dtype
        self.output = nn.Identity()

    def forward(self, input_ids, position_ids=None, cache=None, rope_base=None, return_hidden=False):
        eos, seq = self.config.eos_token_id, self.sequence
        nxt = [[seq[p + 1] if p + 1 < len(seq) else eos for p in row] for row in position_ids.tolist()]
        return nn.functional.one_hot(torch.tensor(nxt), self.config.vocab_size).float() * 10  # [B, T, V]
