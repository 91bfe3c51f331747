"""Text that is valid JSON but not Unicode (lone UTF-16 surrogates, "\\ud800") in any request field: a
400 in OpenAI's error shape naming the field, never a 500. A surrogate pair is one character and is fine.
The server's own fuzz test (test_serve_fuzz.py) also plants such strings in generated requests."""

from __future__ import annotations

import json

import httpx
import pytest
import serving_fixtures as sf

from puyu.serve.app import Limits, create_app

TOOL = {"type": "function", "function": {"name": "f", "description": "d",
                                         "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def url(tiny_checkpoint, tiny_tokenizer):
    from puyu.engine.scheduler import Engine
    from puyu.model.checkpoint import load_model

    engine = Engine(load_model(tiny_checkpoint), tiny_tokenizer, max_batch_size=2, cache_tokens=2048)
    srv = sf.ServerThread(create_app(engine, tiny_tokenizer, "u", limits=Limits(max_tokens=4, default_max_tokens=2)))
    yield srv.url
    srv.stop()
    engine.close()


def _post(url: str, path: str, body: dict) -> httpx.Response:
    # json.dumps escapes the surrogate as "\ud800": the bytes on the wire are valid JSON and valid UTF-8
    return httpx.post(url + path, content=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=60)


def _chat(**kw) -> dict:
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **kw}


LONE = "a\ud800b"
CASES = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "\ud800"}]}, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "s"},
                                           {"role": "user", "content": [{"type": "text", "text": LONE}]}]},
     "messages.1.content.0.text"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q", "name": LONE}]}, "messages.0.name"),
    ("/v1/chat/completions", {"messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": "' + LONE + '"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}], "tools": [TOOL]},
     "messages.1.tool_calls.0.function.arguments"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "\udfff"}]},
     "messages.1.content"),
    ("/v1/chat/completions", {"tools": [{**TOOL, "function": {**TOOL["function"], "description": LONE}}]},
     "tools.0.function.description"),
    ("/v1/chat/completions", {"tools": [{**TOOL, "function": {**TOOL["function"], "parameters": {LONE: 1}}}]},
     "tools.0.function.parameters"),
    ("/v1/chat/completions", {"stop": ["\udbff"]}, "stop"),
    ("/v1/completions", {"prompt": LONE, "max_tokens": 2}, "prompt"),
    ("/v1/completions", {"prompt": [LONE], "max_tokens": 2}, "prompt"),
]


@pytest.mark.parametrize("path,body,field", CASES)
def test_lone_surrogate_is_a_400_naming_the_field(url, path, body, field):
    if path.endswith("chat/completions"):
        body = {**_chat(), **body}
    r = _post(url, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == field and "surrogate" in err["message"], err


def test_a_surrogate_pair_is_one_character_and_is_served(url):
    r = _post(url, "/v1/chat/completions", _chat(messages=[{"role": "user", "content": "\ud83d\ude00"}]))
    assert r.status_code == 200, r.text
