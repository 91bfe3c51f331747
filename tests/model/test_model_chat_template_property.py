"""`render_chat` and the Jinja template saved with the tokenizer (rendered by Hugging Face's own
`apply_chat_template`) on generated OpenAI-shaped conversations: strings, lists of text parts, null
content beside tool calls, arguments as a JSON string / an object / null, several system messages, the
developer role, several tool calls in one turn, names, tools, the interpreter. Shapes InternLM2 has no
equivalent for (image parts) and bad roles must fail in both with the same message.
Checkpoints saved with the older template: warned about on load, rewritten by a command."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from puyu.model.chat_format import ChatFormatError, chat_template, render_chat
from puyu.model.tokenizer import load_tokenizer, template_status, update_template

transformers = pytest.importorskip("transformers")
jinja2 = pytest.importorskip("jinja2")


@pytest.fixture(scope="module")
def hf(tiny_tokenizer, tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_tok")
    tiny_tokenizer.save(d)
    return transformers.AutoTokenizer.from_pretrained(d)


TEXT = st.one_of(st.text(st.characters(exclude_categories=("Cs",)), max_size=10),
                 st.sampled_from(["<|im_end|>\n<|im_start|>system\n", "{{ x }}", "{% if %}", "\n", '"}', "plugin"]))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3), max_leaves=6)
OBJ = st.dictionaries(TEXT, JSON, max_size=3)
ARGS = st.one_of(st.none(), OBJ, OBJ.map(json.dumps), OBJ.map(lambda o: json.dumps(o, ensure_ascii=False)))
PART = st.builds(lambda t: {"type": "text", "text": t}, TEXT)
IMAGE = st.just({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}})
CONTENT = st.one_of(TEXT, st.none(), st.lists(PART, max_size=3))
BAD_CONTENT = st.lists(st.one_of(PART, IMAGE), min_size=1, max_size=3)
NAME = st.one_of(st.none(), st.sampled_from(["plugin", "interpreter", "file", "<|plugin|>", ""]), TEXT)
CALL = st.one_of(
    st.fixed_dictionaries({"id": st.just("call_1"), "type": st.just("function"),
                           "function": st.fixed_dictionaries({"name": TEXT, "arguments": ARGS})}),
    st.fixed_dictionaries({"name": TEXT, "parameters": ARGS}),
)
ROLE = st.sampled_from(["system", "developer", "user", "assistant", "tool", "environment"])


@st.composite
def message(draw, bad: bool = False):
    role = draw(ROLE)
    m = {"role": role, "content": draw(BAD_CONTENT if bad and draw(st.booleans()) else CONTENT)}
    name = draw(NAME)
    if name is not None and role != "tool":
        m["name"] = name
    if role == "assistant":
        if draw(st.booleans()):
            m["tool_calls"] = draw(st.lists(CALL, min_size=1, max_size=3))
        if draw(st.integers(0, 3)) == 0:
            m["code"] = draw(TEXT)
    if role == "tool":
        m["tool_call_id"] = "call_1"
    if bad and draw(st.integers(0, 5)) == 0:
        m["role"] = draw(st.sampled_from(["wizard", "function"]))
    return m


TOOL = st.one_of(
    st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": TEXT, "description": TEXT, "parameters": OBJ})}),
    st.fixed_dictionaries({"name": TEXT, "parameters": OBJ}),
)
CONVERSATION = st.tuples(st.lists(message(), min_size=1, max_size=6), st.one_of(st.none(), st.lists(TOOL, min_size=1, max_size=2)),
                         st.one_of(st.none(), st.booleans(), TEXT), st.booleans())


def _both(hf, msgs, tools, interpreter, gen):
    try:
        ours = ("ok", render_chat(msgs, tools=tools, interpreter=interpreter, add_generation_prompt=gen))
    except ChatFormatError as e:
        ours = ("error", str(e))
    try:
        theirs = ("ok", hf.apply_chat_template(msgs, tools=tools, interpreter=interpreter, tokenize=False,
                                               add_generation_prompt=gen))
    except jinja2.TemplateError as e:
        theirs = ("error", str(e))
    return ours, theirs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(conv=CONVERSATION)
def test_render_chat_equals_the_saved_jinja_template(hf, conv):
    msgs, tools, interpreter, gen = conv
    ours, theirs = _both(hf, msgs, tools, interpreter, gen)
    assert ours[0] == "ok", ours  # every OpenAI text shape renders
    assert ours == theirs


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(msgs=st.lists(message(bad=True), min_size=1, max_size=4))
def test_shapes_without_an_equivalent_fail_alike(hf, msgs):
    ours, theirs = _both(hf, msgs, None, None, True)
    assert ours == theirs


def test_the_issue_examples(hf):
    msgs = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, {"role": "user", "content": "Hi"}]
    want = "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert _both(hf, msgs, None, None, True) == (("ok", want), ("ok", want))
    call = [{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": None}}]}]
    ours, theirs = _both(hf, call, None, None, False)
    assert ours == theirs and '"parameters": {}}<|action_end|>\n<|im_end|>' in ours[1]
    img = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    ours, theirs = _both(hf, img, None, None, True)
    assert ours == theirs == ("error", "message 0: content part 0 is not a text part (InternLM2 chat takes text only)")


@pytest.mark.parametrize("args, want", [
    ("", ("ok", '"parameters": {}}')),
    ("  ", ("ok", '"parameters": {}}')),
    ('{"city": "Oslo"}', ("ok", '"parameters": {"city": "Oslo"}}')),
    ("x y", ("error", "message 0: tool call arguments must be a JSON object")),
    ("[1, 2]", ("error", "message 0: tool call arguments must be a JSON object")),
])
def test_argument_strings_render_or_fail_alike(hf, args, want):
    """Clients replay "" for calls without arguments; strings that cannot be a JSON object fail alike."""
    call = [{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": args}}]}]
    ours, theirs = _both(hf, call, None, None, False)
    assert ours == theirs
    assert ours[0] == want[0] and want[1] in ours[1]


# ---- checkpoints saved with the older template -------------------------------------------------------
V1 = Path(__file__).with_name("chat_template_v1.jinja")


def _old_checkpoint(tiny_tokenizer, d: Path) -> Path:
    tiny_tokenizer.save(d)
    f = d / "tokenizer_config.json"
    cfg = json.loads(f.read_text(encoding="utf-8"))
    cfg["chat_template"] = V1.read_text(encoding="utf-8")
    del cfg["puyu_chat_template_version"]
    f.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
    return d


def test_old_template_is_warned_about_and_rewritten(tiny_tokenizer, tmp_path, caplog, capsys):
    from puyu.cli import main

    d = _old_checkpoint(tiny_tokenizer, tmp_path / "ckpt")
    assert template_status(d) == "outdated"
    with caplog.at_level(logging.WARNING, logger="puyu.model.tokenizer"):
        load_tokenizer(d)
    assert "puyu tokenizer update-template" in caplog.text
    assert main(["tokenizer", "update-template", str(d), "--check"]) == 1
    assert main(["tokenizer", "update-template", str(d)]) == 0
    assert "rewritten" in capsys.readouterr().out
    cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["chat_template"] == chat_template() and template_status(d) == "current"
    assert cfg["additional_special_tokens"] == tiny_tokenizer.hf_config()["additional_special_tokens"]
    # a template puyu did not write (InternLM's own) is left alone without --force
    cfg["chat_template"] = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    del cfg["puyu_chat_template_version"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    assert update_template(d) == "foreign" and template_status(d) == "foreign"


def test_a_missing_template_is_reported_and_written(tiny_tokenizer, tmp_path):
    from puyu.cli import main

    tiny_tokenizer.save(tmp_path)
    f = tmp_path / "tokenizer_config.json"
    cfg = json.loads(f.read_text(encoding="utf-8"))
    del cfg["chat_template"]
    f.write_text(json.dumps(cfg), encoding="utf-8")
    assert main(["tokenizer", "update-template", str(tmp_path), "--check"]) == 1
    assert main(["tokenizer", "update-template", str(tmp_path)]) == 0
    assert template_status(tmp_path) == "current"
