from __future__ import annotations

import json

import jinja2
import pytest

from puyu.model.chat_format import DEFAULT_INTERPRETER_PROMPT, ChatFormatError, chat_template, render_chat

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "天气 lookup",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}},
         {"name": "add", "description": "add numbers", "parameters": {"type": "object", "properties": {}}}]

CONVERSATIONS = [
    ([{"role": "user", "content": "Hello"}], {}),
    ([{"role": "system", "content": "You are InternLM2-Chat."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "上海天气?"}], {"tools": TOOLS}),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "plot data.csv"},
      {"role": "user", "name": "file", "content": '[{"path": "data.csv"}]'},
      {"role": "assistant", "content": "Let me look.", "code": "import pandas as pd\nprint(pd.read_csv('data.csv'))"},
      {"role": "environment", "name": "interpreter", "content": "   a  b\n0  1  2"},
      {"role": "assistant", "content": "Done."}], {"interpreter": True, "tools": TOOLS}),
    ([{"role": "user", "content": "weather?"},
      {"role": "assistant", "content": None, "tool_calls": [
          {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}]},
      {"role": "tool", "content": "{\"t\": 3}"}], {"tools": TOOLS, "interpreter": "custom env"}),
]


def test_exact_format_of_a_tool_conversation():
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": "ok", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
            {"role": "tool", "content": "2"}]
    expected = ("<s><|im_start|>system\nsys<|im_end|>\n"
                "<|im_start|>system name=<|interpreter|>\n" + DEFAULT_INTERPRETER_PROMPT + "<|im_end|>\n"
                '<|im_start|>system name=<|plugin|>\n[{"name": "f", "parameters": {}}]<|im_end|>\n'
                "<|im_start|>user\nq<|im_end|>\n"
                '<|im_start|>assistant\nok<|action_start|><|plugin|>\n{"name": "f", "parameters": {"x": 1}}'
                "<|action_end|>\n<|im_end|>\n"  # the SFT format's newline (xtuner, Lagent)
                "<|im_start|>environment name=<|plugin|>\n2<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert render_chat(msgs, tools=[{"name": "f", "parameters": {}}], interpreter=True) == expected
    assert render_chat(msgs[:2], add_generation_prompt=False).endswith("q<|im_end|>\n")


def _hf_env():
    # Hugging Face renders chat templates with this tojson (json.dumps, non-ASCII kept).
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    return env


@pytest.mark.parametrize("i", range(len(CONVERSATIONS)))
def test_jinja_template_renders_identically(i):
    msgs, kw = CONVERSATIONS[i]
    tmpl = _hf_env().from_string(chat_template())
    for gen in (True, False):
        assert tmpl.render(messages=msgs, add_generation_prompt=gen, **kw) == render_chat(msgs, add_generation_prompt=gen, **kw)


def test_transformers_apply_chat_template_matches(tiny_tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    tiny_tokenizer.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for msgs, kw in CONVERSATIONS:
        got = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kw)
        assert got == render_chat(msgs, **kw)


def test_bad_messages():
    with pytest.raises(ChatFormatError, match="role"):
        render_chat([{"role": "wizard", "content": "x"}])
    with pytest.raises(ChatFormatError, match="not valid JSON"):
        render_chat([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}])
