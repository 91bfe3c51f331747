"""Supervised fine-tuning on conversations in the InternLM2 chat format.

Data: JSONL records `{"messages": [...], "tools": [...]?, "interpreter": ...?}` (roles system, user,
assistant, environment, tool; assistant messages may carry OpenAI-style `tool_calls` or `code`),
tokenized by `puyu train tokenize` with `chat_tokens` below, so the loss mask covers exactly what the
model must learn to write: each assistant turn's text, its action markers and calls, and its closing
`<|im_end|>`. Conversations are packed whole into rows (`data.pack: docs`) with attention kept
within each conversation (`data.doc_mask: true`), and trained with the shared loop in `pretrain.py`.
"""

from __future__ import annotations

from puyu.chat_format import IM_END, IM_START, render_chat
from puyu.errors import ConfigError
from puyu.train.recipe import Recipe
from puyu.train.shards import ShardError


def chat_tokens(tok, messages: list[dict], tools=None, interpreter=None) -> tuple[list[int], list[int]]:
    """Tokens and loss mask of one rendered conversation.

    The mask is 1 exactly on the tokens of each assistant turn's body, which includes any action
    markers (`<|action_start|><|plugin|>` ... `<|action_end|>`), and on the turn's closing `<|im_end|>`;
    it is 0 on `<s>`, on every turn header (`<|im_start|>assistant\\n`), on the newline after
    `<|im_end|>`, and on all system, user and environment turns.

    The conversation is rendered one message at a time; each message's text is the difference between
    consecutive renderings, so the concatenated pieces are exactly `render_chat(messages, ...)`.
    Pieces are split at chat tokens and newlines, which the tokenizer keeps atomic, so tokenizing
    piecewise gives the same ids as tokenizing the whole rendering (tests check both)."""
    start = 1 if messages and messages[0].get("role") == "system" and not messages[0].get("name") else 0
    prev = render_chat(messages[:start], tools=tools, interpreter=interpreter, add_generation_prompt=False)
    ids = tok.encode(prev, allow_special=True)
    mask = [0] * len(ids)
    for i in range(start, len(messages)):
        cur = render_chat(messages[: i + 1], tools=tools, interpreter=interpreter, add_generation_prompt=False)
        if not cur.startswith(prev):
            raise ShardError(f"message {i}: chat rendering is not incremental; cannot mask it")
        piece = cur[len(prev):]
        prev = cur
        if messages[i].get("role") != "assistant":
            part = tok.encode(piece, allow_special=True)
            ids += part
            mask += [0] * len(part)
            continue
        # "<|im_start|>assistant[ name=x]\n" + body + "<|im_end|>" + "\n"
        header_end = piece.index("\n", len(IM_START)) + 1
        if not piece.endswith(IM_END + "\n"):
            raise ShardError(f"message {i}: assistant turn does not end with {IM_END}")
        header, body, tail = piece[:header_end], piece[header_end:-1], piece[-1:]
        for text, m in ((header, 0), (body, 1), (tail, 0)):
            part = tok.encode(text, allow_special=True)
            ids += part
            mask += [m] * len(part)
    return ids, mask


def run_sft(recipe: Recipe, resume: bool = False) -> dict:
    """Fine-tune `recipe.model.init` on conversation shards; returns the loop's summary."""
    if not recipe.model.init:
        raise ConfigError("SFT starts from trained weights: set model.init (a Hugging Face directory or a "
                          "training checkpoint)")
    if recipe.data.pack != "docs":
        raise ConfigError("SFT packs whole conversations: set data.pack to 'docs'")
    from puyu.train.pretrain import train

    return train(recipe, resume=resume, stage="sft")
