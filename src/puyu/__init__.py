"""puyu: InternLM2 end to end.

Public API (imported lazily so `import puyu` stays light):
    load_model, load_tokenizer, render_chat, ModelConfig, SamplingParams, Engine, Interpreter
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ModelConfig": "puyu.config",
    "get_preset": "puyu.config",
    "load_model": "puyu.checkpoint",
    "save_pretrained": "puyu.checkpoint",
    "load_tokenizer": "puyu.tokenizer",
    "train_tokenizer": "puyu.tokenizer",
    "render_chat": "puyu.chat_format",
    "SamplingParams": "puyu.sampling",
    "Engine": "puyu.engine",
    "Interpreter": "puyu.interpreter",
    "Agent": "puyu.agent",
}

__all__ = list(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'puyu' has no attribute {name!r}")
