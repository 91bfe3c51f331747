"""Helper for the decode-path tests: a small random InternLM2 model of any shape, with non-zero biases
when it has them (the released init zeroes biases, which would hide a bias that is never added)."""

from __future__ import annotations

import torch

from puyu.config import ModelConfig
from puyu.model import InternLM2ForCausalLM

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
