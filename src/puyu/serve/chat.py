"""From OpenAI-style requests to engine streams and back: the part of `puyu serve` that knows InternLM2.

    ChatCompletionRequest -> render_chat messages -> prompt ids -> Engine.submit -> StreamDelta
      -> ActionSplitter (plain text vs. a `<|action_start|>` tool action) -> Event(text | tool_call | finish)

The server turns the same `Event` stream into one JSON response or into SSE chunks, so streaming and
non-streaming answers cannot drift apart.

Contracts:
- Prompts are encoded by `puyu.model.chat_format.encode_chat`: only the markers the template writes
  become special ids; message contents, names, replayed tool-call arguments, tool names, descriptions
  and schemas are plain text, so "<|im_start|>" in any of them cannot forge a chat turn.
- `tool_choice`: "none" leaves the tools out of the prompt; "auto" declares them; "required" starts the
  assistant turn with `<|action_start|><|plugin|>\\n` and a named choice also writes
  `{"name": "<name>", "parameters": ` so the model can only complete the call's arguments (prefix forcing,
  the same tokens the model would have produced).
- A model action that is not a valid plugin call (bad JSON, no name, a tool not offered) is returned as
  plain text with the markers removed: nothing the model wrote is dropped, and the client never gets a
  `tool_calls` entry it cannot parse.
- `EngineStream` submits at once (a refused request is a 4xx before any byte is sent), runs the
  handle's blocking iterator in its own thread and hands the deltas to the event loop; stopping early
  (client gone, task cancelled) calls `handle.cancel()`, which frees the request's cache blocks at once.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from puyu.agent.protocol import InterpreterCall, PluginCall, StreamParser
from puyu.model.chat_format import ACTION_END, ACTION_START, EOS, IM_END, PLUGIN, encode_chat
from puyu.serve.openai_schema import APIError, ChatCompletionRequest, NamedToolChoice


@dataclass
class Prompt:
    """Prompt ids plus what the engine must know to generate the assistant turn."""

    ids: list[int]
    forced: str = ""  # assistant text already written into the prompt (tool_choice required/named)
    tool_names: tuple[str, ...] = ()  # tools declared: the model may answer with a call to one of them
    stop_token_ids: list[int] = field(default_factory=list)


@dataclass
class Event:
    """kind: "text" (text), "tool_call" (name, arguments JSON), "step" (interpreter step dict),
    "finish" (finish_reason, prompt_tokens, completion_tokens)."""

    kind: str
    text: str = ""
    name: str = ""
    arguments: str = ""
    step: dict | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


# ---- prompts ------------------------------------------------------------------------------------
def chat_messages(req: ChatCompletionRequest) -> list[dict]:
    """The request's messages as `render_chat` dicts (plain text contents)."""
    out = []
    for m in req.messages:
        role = "system" if m.role == "developer" else m.role
        d: dict = {"role": role, "content": m.text()}
        if m.name and role != "tool":
            d["name"] = m.name
        if m.tool_calls:
            d["tool_calls"] = [{"function": {"name": c.function.name, "arguments": c.function.arguments}}
                               for c in m.tool_calls]
        if m.code is not None:
            d["code"] = m.code
        out.append(d)
    return out


def chat_prompt(tokenizer, req: ChatCompletionRequest, interpreter=None) -> Prompt:
    """Build the prompt for a chat request (see the module docstring for tool_choice)."""
    tools = [t.function.model_dump(exclude_none=True) for t in req.tools or []]
    choice = req.tool_choice or "auto"
    if choice == "none":
        tools = []
    forced = ""
    if tools and choice == "required":
        forced = f"{ACTION_START}{PLUGIN}\n"
    elif tools and isinstance(choice, NamedToolChoice):
        # Ends before the space: a trailing "▁" piece would split the usual '▁{"' token (BPE boundary).
        forced = f'{ACTION_START}{PLUGIN}\n{{"name": {json.dumps(choice.function.name, ensure_ascii=False)}, "parameters":'
    stops = list(tokenizer.stop_ids)
    if tools or interpreter:
        stops.append(tokenizer.special_ids[ACTION_END])
    ids = encode_chat(tokenizer, chat_messages(req), tools or None, interpreter, forced)
    return Prompt(ids=ids, forced=forced, tool_names=tuple(t["name"] for t in tools), stop_token_ids=stops)


# ---- model output ---------------------------------------------------------------------------------
def action_text(action) -> str:
    """An action the client cannot take as a tool call, shown as the text the model wrote (no markers)."""
    if isinstance(action, InterpreterCall):
        return f"```python\n{action.code}\n```"
    return action.raw


def _strip_stops(text: str) -> str:
    """Remove stop-token texts, in case the engine's delta includes the token it stopped on."""
    return text.replace(IM_END, "").replace(EOS, "") if (IM_END in text or EOS in text) else text


def finish_reason(engine_reason: str | None) -> str:
    """Engine finish reasons -> OpenAI's: "length" stays, everything else that ends a turn is "stop"."""
    return "length" if engine_reason == "length" else "stop"


# ---- engine bridge --------------------------------------------------------------------------------
_END = object()


class EngineStream:
    """One engine request, consumed as an async iterator of `StreamDelta`s on the event loop.

    The request is submitted on construction, so one the engine refuses (a budget larger than the whole
    KV cache, a closed engine) fails before any response starts. The handle's blocking iterator runs in
    a daemon thread; `cancel()` (also run when iteration stops early) aborts the request, which frees its
    cache blocks at once. The handle is appended to `handles` so the server can cancel it synchronously
    whatever state the generator chain is in."""

    def __init__(self, engine, prompt_ids: list[int], params, handles: list | None = None):
        self.handle = engine.submit(prompt_ids, params)
        self.prompt_tokens = len(prompt_ids)
        if handles is not None:
            handles.append(self.handle)

    def cancel(self) -> None:
        if not self.handle.done:
            self.handle.cancel()

    async def deltas(self) -> AsyncIterator:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        handle = self.handle

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: the server is shutting down
                self.cancel()

        def pump() -> None:
            try:
                for delta in handle:
                    put(delta)
            except Exception as e:  # reported to the client as a 503 / an SSE error event
                put(e)
            put(_END)

        threading.Thread(target=pump, name="puyu-stream", daemon=True).start()
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise APIError(503, f"generation failed: {item}", type="server_error",
                                   code="engine_error") from item
                yield item
        finally:
            self.cancel()


async def chat_events(stream: EngineStream, prompt: Prompt) -> AsyncIterator[Event]:
    """Events of one assistant turn (no server-side tools): text pieces, at most one tool call, finish."""
    parser = StreamParser()
    if prompt.forced:
        parser.feed(prompt.forced)
    n_out, reason, shown = 0, None, 0
    async for delta in stream.deltas():
        n_out += len(delta.token_ids)
        text = parser.feed(delta.text)
        if text:
            shown += len(text)
            yield Event("text", text=text)
        reason = delta.finish_reason or reason
    turn = parser.finish()
    if len(turn.text) > shown:  # a held-back suffix that turned out to be plain text
        yield Event("text", text=turn.text[shown:])
    final = finish_reason(reason)
    action = turn.action
    if isinstance(action, PluginCall) and action.name in prompt.tool_names:
        yield Event("tool_call", name=action.name, arguments=json.dumps(action.arguments, ensure_ascii=False))
        final = "tool_calls"
    elif action is not None:
        yield Event("text", text=action_text(action))
    yield Event("finish", finish_reason=final, prompt_tokens=len(prompt.ids), completion_tokens=n_out)


async def completion_events(stream: EngineStream, echo: str = "") -> AsyncIterator[Event]:
    """Events of a raw text completion: the continuation as generated (stop-token texts removed)."""
    if echo:
        yield Event("text", text=echo)
    n_out, reason = 0, None
    async for delta in stream.deltas():
        n_out += len(delta.token_ids)
        text = _strip_stops(delta.text)
        if text:
            yield Event("text", text=text)
        reason = delta.finish_reason or reason
    yield Event("finish", finish_reason=finish_reason(reason), prompt_tokens=stream.prompt_tokens,
                completion_tokens=n_out)
