"""puyu: InternLM2 end to end.

Public API (imported lazily so `import puyu` stays light):
    load_model, load_tokenizer, render_chat, encode_chat, ModelConfig, SamplingParams, Engine, Interpreter,
    Agent, load_reward_model

Modules inside the package never import this root (`from puyu import Engine`): that would let a lower
layer reach a higher one past the import-linter contracts (tests/test_layers.py checks it).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ModelConfig": "puyu.model.config",
    "get_preset": "puyu.model.config",
    "load_model": "puyu.model.checkpoint",
    "save_pretrained": "puyu.model.checkpoint",
    "load_tokenizer": "puyu.model.tokenizer",
    "train_tokenizer": "puyu.model.tokenizer",
    "render_chat": "puyu.model.chat_format",
    "encode_chat": "puyu.model.chat_format",
    "SamplingParams": "puyu.engine.sampling",
    "Engine": "puyu.engine.scheduler",
    "Interpreter": "puyu.agent.interpreter",
    "Agent": "puyu.agent.loop",
    "load_reward_model": "puyu.rl.reward_model",
}

__all__ = list(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'puyu' has no attribute {name!r}")
