"""The OpenAI request models: what they accept, what they reject, and the error message/param they give."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from puyu.serve.openai_schema import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    CompletionRequest,
    Delta,
    NamedToolChoice,
    validation_message,
)

MSG = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "weather",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def _err(cls, body: dict) -> tuple[str, str | None]:
    with pytest.raises(ValidationError) as info:
        cls.model_validate(body)
    return validation_message(info.value.errors())


def test_minimal_and_full_chat_requests_validate():
    r = ChatCompletionRequest.model_validate({"messages": MSG})
    assert r.model is None and r.n == 1 and not r.stream and r.stop_list() == []
    r = ChatCompletionRequest.model_validate({
        "model": "m", "messages": [{"role": "system", "content": "be brief"},
                                   {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                                   {"role": "assistant", "content": None, "tool_calls": [
                                       {"id": "call_1", "type": "function",
                                        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                                   {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
        "temperature": 0, "top_p": 0.9, "max_tokens": 5, "stop": ["\n\n"], "seed": 7, "n": 1, "stream": True,
        "stream_options": {"include_usage": True}, "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "user": "u1", "top_k": 5,
        "repetition_penalty": 1.1, "response_format": {"type": "text"}, "parallel_tool_calls": False})
    assert r.messages[1].text() == "ab"
    assert isinstance(r.tool_choice, NamedToolChoice) and r.token_limit() == 5
    assert r.temperature == 0.0 and isinstance(r.temperature, float)


@pytest.mark.parametrize("body, param, words", [
    ({"messages": MSG, "temperature": "hot"}, "temperature", "valid number"),
    ({"messages": MSG, "temperature": 3}, "temperature", "less than or equal to 2"),
    ({"messages": MSG, "max_tokens": -1}, "max_tokens", "greater than or equal to 1"),
    ({"messages": MSG, "max_tokens": 1.5}, "max_tokens", "valid integer"),
    ({"messages": MSG, "max_tokens": "10"}, "max_tokens", "valid integer"),
    ({"messages": MSG, "stream": "yes"}, "stream", "valid boolean"),
    ({"messages": MSG, "n": 2}, "n", "n must be 1"),
    ({"messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"messages": MSG, "stop": 5}, "stop", ""),
    ({"messages": MSG, "top_p": 0}, "top_p", "greater than 0"),
    ({"messages": MSG, "seed": -3}, "seed", "greater than or equal to 0"),
    ({"messages": MSG, "presence_penalty": 0.5}, "presence_penalty", "not supported"),
    ({"messages": MSG, "logprobs": True}, "logprobs", "not supported"),
    ({"messages": MSG, "frobnicate": 1}, "frobnicate", "unrecognized request argument"),
    ({"messages": []}, "messages", "at least 1"),
    ({}, "messages", "missing required field"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", ""),
    ({"messages": [{"role": "user"}]}, "messages.0", "needs 'content'"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", ""),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages.0", "only 'assistant'"),
    ({"messages": [{"role": "user", "content": "x", "code": "print(1)"}]}, "messages.0", "only 'assistant'"),
    ({"messages": MSG, "tool_choice": "required"}, None, "needs at least one tool"),
    ({"messages": MSG, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     None, "not in 'tools'"),
    ({"messages": MSG, "tools": [TOOL, TOOL]}, None, "unique"),
    ({"messages": MSG, "tools": [{"type": "function", "function": {"name": "bad name!"}}]},
     "tools.0.function.name", "pattern"),
    ({"messages": MSG, "stream_options": {"include_usage": True}}, None, "only allowed when 'stream'"),
    ({"messages": MSG, "session_id": "../etc"}, "session_id", "pattern"),
])
def test_bad_chat_requests_name_the_field(body, param, words):
    message, got_param = _err(ChatCompletionRequest, body)
    if param is not None:
        assert got_param == param, message
    assert words in message, message


def test_completion_request_limits():
    r = CompletionRequest.model_validate({"prompt": ["once upon"], "max_tokens": 3})
    assert r.prompt_text() == "once upon" and r.token_limit() == 3
    for body, words in [({"prompt": ["a", "b"]}, "one prompt"), ({"prompt": "a", "suffix": "z"}, "fill-in"),
                        ({"prompt": "a", "best_of": 3}, "only 1"), ({"prompt": "a", "logprobs": 2}, "not supported"),
                        ({"prompt": 12}, ""), ({"prompt": "a", "echo": "no"}, "valid boolean")]:
        message, _ = _err(CompletionRequest, body)
        assert words in message, message


def test_json_error_message():
    message, param = validation_message([{"type": "json_invalid", "loc": ("body", 7), "msg": "JSON decode error",
                                          "ctx": {"error": "Expecting value"}}])
    assert message == "the request body is not valid JSON (Expecting value)" and param is None


def test_chunks_carry_an_explicit_null_finish_reason():
    d = ChatCompletionChunk(id="x", model="m", choices=[ChunkChoice(delta=Delta(content="a"))]).dump()
    assert d["choices"][0]["finish_reason"] is None and d["choices"][0]["delta"] == {"content": "a"}
    assert "usage" not in d
