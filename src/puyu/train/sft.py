"""Supervised fine-tuning on conversations in the InternLM2 chat format.

Data: JSONL records `{"messages": [...], "tools": [...]?, "interpreter": ...?}` (roles system, user,
assistant, environment, tool; assistant messages may carry OpenAI-style `tool_calls` or `code`),
tokenized by `puyu train tokenize` with `puyu.model.chat_format.chat_tokens`, so the loss mask covers exactly what the
model must learn to write: each assistant turn's text, its action markers and calls, and its closing
`<|im_end|>`. Conversations are packed whole into rows (`data.pack: docs`) with attention kept
within each conversation (`data.doc_mask: true`), and trained with the shared loop in `pretrain.py`.
"""

from __future__ import annotations

from puyu.errors import ConfigError
from puyu.train.recipe import Recipe


def run_sft(recipe: Recipe, resume: bool = False) -> dict:
    """Fine-tune `recipe.model.init` on conversation shards; returns the loop's summary."""
    if not recipe.model.init:
        raise ConfigError("SFT starts from trained weights: set model.init (a Hugging Face directory or a "
                          "training checkpoint)")
    if recipe.data.pack != "docs":
        raise ConfigError("SFT packs whole conversations: set data.pack to 'docs'")
    from puyu.train.pretrain import train

    return train(recipe, resume=resume, stage="sft")
