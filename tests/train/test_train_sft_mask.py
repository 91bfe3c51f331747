"""SFT masking: the loss positions are exactly the assistant tokens of the rendered conversation
(each assistant body including action markers, and its closing <|im_end|>), nothing else."""

from __future__ import annotations

import json

import pytest

from puyu.model.chat_format import IM_END, chat_tokens, interpreter_action, plugin_action, render_chat
from puyu.tasks.synthetic import TOOLS

CONVERSATION = [
    {"role": "system", "content": "You are puyu."},
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "Let me check.",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
    {"role": "tool", "content": '{"temperature_c": 3}'},
    {"role": "assistant", "content": "It is 3 degrees."},
    {"role": "user", "content": "Now 12*34 in Python."},
    {"role": "assistant", "content": "", "code": "print(12 * 34)"},
    {"role": "environment", "name": "interpreter", "content": "408"},
    {"role": "assistant", "content": "12*34 = 408."},
]


def _assistant_bodies() -> list[str]:
    """What the model must write for each assistant message, by the chat format's own helpers."""
    return [
        "Let me check." + plugin_action("get_weather", {"city": "Oslo"}) + "\n" + IM_END,
        "It is 3 degrees." + IM_END,
        interpreter_action("print(12 * 34)") + "\n" + IM_END,
        "12*34 = 408." + IM_END,
    ]


@pytest.mark.parametrize("tokenizer_name", ["tiny_tokenizer", "ref_tokenizer"])
def test_mask_is_exactly_the_assistant_tokens(tokenizer_name, request):
    tok = request.getfixturevalue(tokenizer_name)
    ids, mask = chat_tokens(tok, CONVERSATION, tools=TOOLS, interpreter=True)
    rendered = render_chat(CONVERSATION, tools=TOOLS, interpreter=True, add_generation_prompt=False)
    # Piecewise tokenization equals tokenizing the whole rendering.
    assert ids == tok.encode(rendered, allow_special=True)
    assert len(mask) == len(ids)
    # The masked tokens form one contiguous run per assistant message, equal to its body + <|im_end|>.
    runs, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    bodies = _assistant_bodies()
    assert [tok.decode(r) for r in runs] == bodies
    assert [r for r in runs] == [tok.encode(b, allow_special=True) for b in bodies]
    # Every masked run ends with <|im_end|>, and the action markers are inside the runs.
    im_end = tok.special_ids[IM_END]
    assert all(r[-1] == im_end for r in runs)
    assert sum(m for m in mask) == sum(len(r) for r in runs)
    # Nothing of the user / system / environment turns, nor the headers, is a target.
    unmasked = tok.decode([t for t, m in zip(ids, mask) if not m])
    for text in ("Weather in Oslo?", "temperature_c", "408<|im_end|>", "<|im_start|>assistant\n", "You are puyu."):
        assert text in unmasked


def test_conversation_records_go_through_shards(tmp_path, tiny_tokenizer):
    from puyu.train.shards import load_shards, tokenize_to_shard

    rec = {"messages": CONVERSATION, "tools": TOOLS, "interpreter": True}
    (tmp_path / "sft.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps({"messages": CONVERSATION[:5], "tools": TOOLS})
                                        + "\n", encoding="utf-8")
    tokenize_to_shard([tmp_path / "sft.jsonl"], tmp_path / "out", tiny_tokenizer, progress=False)
    tokens, mask, docs, _ = load_shards([tmp_path / "out"])
    ids, m = chat_tokens(tiny_tokenizer, CONVERSATION, tools=TOOLS, interpreter=True)
    assert tokens[: len(ids)].tolist() == ids and mask[: len(ids)].tolist() == m
    assert docs.tolist() == [0, len(ids)]


def test_assistant_first_and_named_system_turns(tiny_tokenizer):
    tok = tiny_tokenizer
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"}, {"role": "assistant", "content": "goodbye"}]
    ids, mask = chat_tokens(tok, msgs)
    assert ids == tok.encode(render_chat(msgs, add_generation_prompt=False), allow_special=True)
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == "hello" + IM_END + "goodbye" + IM_END
