"""The multi-step agent loop: model turn -> parse -> run the tool or the code -> environment turn -> ...

    agent = Agent(policy, tools=[calculator], interpreter=True, max_steps=8)
    for event in agent.stream([{"role": "user", "content": "What is 2**100 + 1?"}]):
        ...   # TextDelta, ToolCall, ToolOutput, Image, Error, and one Final at the end
    agent.close()   # stops an interpreter the agent started

The model is a *policy*: `policy(messages, tools, interpreter) -> iterable of text chunks` for ONE
assistant turn (what follows `<|im_start|>assistant\\n`, up to and including `<|action_end|>`; the
stop marker `<|im_end|>` may be present or not). `tools` is the OpenAI-style schema list (None when
there are none) and `interpreter` the interpreter description (None when off), the same values
`puyu.model.chat_format.render_chat` takes, so an engine-backed policy submits
`encode_chat(tokenizer, messages, tools, interpreter)` (never the rendered string encoded with specials
allowed: a tool result could then forge a turn) and streams its decode.

Each step the agent streams the turn through `protocol.StreamParser` (text deltas go out as they are
decided), then:
- no action: the turn is the final answer -> `Final(reason="answer")`;
- a plugin call: validated and run by the `ToolRegistry`; the result (or the error: unknown tool,
  bad arguments, the tool raising) becomes the `environment name=<|plugin|>` turn;
- an interpreter call: run in the sandboxed `Interpreter`; output, traceback, timeouts and image links
  become the `environment name=<|interpreter|>` turn, and each PNG is an `Image` event;
- a malformed action (bad JSON, no code, unknown action type): the parser's message is fed back as the
  environment turn so the model can correct itself.
Nothing the model writes ends the session with an exception. After `max_steps` executed actions a
further action is not run: `Error` then `Final(reason="max_steps")`. A policy that raises ends the run
with `Error(fatal=True)` and `Final(reason="error")`.

Messages appended to the history use `render_chat`'s contract: an assistant message with `tool_calls`
or `code`, then `{"role": "environment", "name": "<|plugin|>" or "<|interpreter|>", "content": ...}`.
A malformed action is replayed as the model wrote it, in the message's `raw_action`
(`{"type": "plugin"|"interpreter"|"unknown", "text": ...}`), never as marker text inside `content`
(contents are always encoded as plain text).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from puyu.agent.protocol import (
    INTERPRETER,
    PLUGIN,
    ActionError,
    InterpreterCall,
    PluginCall,
    StreamParser,
)
from puyu.agent.tools import Tool, ToolRegistry, ToolResult

Policy = Callable[[list[dict], "list[dict] | None", "bool | str | None"], Iterable[str]]


# ---- events ---------------------------------------------------------------------------------------
@dataclass
class TextDelta:
    text: str
    step: int
    type: str = "text"


@dataclass
class ToolCall:
    """The model asked for an action. kind: "plugin" or "interpreter"; `code` set for the interpreter."""

    step: int
    kind: str
    name: str
    arguments: dict = field(default_factory=dict)
    code: str | None = None
    type: str = "tool_call"


@dataclass
class ToolOutput:
    """What the environment turn told the model (`content`), and whether the call succeeded."""

    step: int
    name: str
    content: str
    ok: bool = True
    error: str | None = None
    type: str = "tool_result"


@dataclass
class Image:
    step: int
    path: str  # a PNG in the session directory
    type: str = "image"


@dataclass
class Error:
    message: str
    step: int
    fatal: bool = False
    type: str = "error"


@dataclass
class Final:
    """The last event of every run. reason: "answer", "max_steps" or "error"."""

    text: str
    steps: int  # actions executed
    reason: str = "answer"
    messages: list[dict] = field(default_factory=list)  # the whole conversation, new turns included
    type: str = "final"


Event = TextDelta | ToolCall | ToolOutput | Image | Error | Final


def event_dict(event: Event) -> dict:
    """JSON-ready form of an event (for the server's stream and the web page)."""
    return asdict(event)


def file_message(paths: Iterable[str | os.PathLike]) -> dict:
    """The `user name=file` turn announcing files in the session directory (InternLM2 format)."""
    items = []
    for p in paths:
        p = Path(p)
        size = p.stat().st_size if p.exists() else 0
        items.append({"path": p.name, "size": _human(size)})
    return {"role": "user", "name": "file", "content": json.dumps(items, ensure_ascii=False)}


def _human(n: float) -> str:
    """Sizes as the InternLM2 examples write them: "512B", "10K", "1.5M"."""
    unit = "B"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            break
        n /= 1024
    return f"{n:.1f}".rstrip("0").rstrip(".") + unit


@dataclass
class AgentResult:
    text: str
    reason: str
    steps: int
    events: list[Event]
    messages: list[dict]


# ---- the loop -------------------------------------------------------------------------------------
class Agent:
    """Runs the loop for one conversation at a time (an Agent holds one interpreter session).

    tools: a ToolRegistry, or a list of Tools/typed functions (None: no plugin tools).
    interpreter: an `Interpreter` to use (not closed by the agent), True to start one on first use in
        `workdir` (closed by `close()`), or None/False for no interpreter.
    interpreter_description: the text of the `system name=<|interpreter|>` turn (None: the default).
    """

    def __init__(self, policy: Policy, tools: ToolRegistry | Iterable[Tool | Callable] | None = None,
                 interpreter=None, *, interpreter_description: str | None = None, max_steps: int = 8,
                 workdir: str | os.PathLike | None = None, interpreter_timeout: float = 30.0):
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        self.policy = policy
        self.tools = tools if isinstance(tools, ToolRegistry) or tools is None else ToolRegistry(tools)
        self.max_steps = max_steps
        self.workdir = workdir
        self.interpreter_timeout = interpreter_timeout
        self._owns_interpreter = interpreter is True
        self._interpreter = None if interpreter in (None, False, True) else interpreter
        self.interpreter_enabled = bool(interpreter)
        self.interpreter_description = interpreter_description

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_interpreter and self._interpreter is not None:
            self._interpreter.close()
            self._interpreter = None

    @property
    def interpreter(self):
        """The interpreter session, started on first access when the agent owns it."""
        if self._interpreter is None and self._owns_interpreter:
            from puyu.agent.interpreter import Interpreter

            self._interpreter = Interpreter(self.workdir, timeout=self.interpreter_timeout)
        return self._interpreter

    def run(self, messages: list[dict] | str) -> AgentResult:
        """Run to the end and collect the events."""
        events = list(self.stream(messages))
        final = events[-1]
        assert isinstance(final, Final)
        return AgentResult(final.text, final.reason, final.steps, events, final.messages)

    def stream(self, messages: list[dict] | str) -> Iterator[Event]:
        """Run the loop, yielding events as they happen; the last event is always `Final`."""
        history = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
        schemas = self.tools.schemas() if self.tools is not None and len(self.tools) else None
        interp_arg = (self.interpreter_description or True) if self.interpreter_enabled else None
        steps = 0
        step = 1
        while True:
            parser = StreamParser()
            try:
                for chunk in self.policy(list(history), schemas, interp_arg):
                    delta = parser.feed(chunk)
                    if delta:
                        yield TextDelta(delta, step)
            except Exception as e:  # the model/engine failing is not recoverable by feeding it back
                yield Error(f"the model failed: {type(e).__name__}: {e}", step, fatal=True)
                yield Final(parser.finish().text, steps, "error", history)
                return
            turn = parser.finish()
            if turn.action is None:
                history.append({"role": "assistant", "content": turn.text})
                yield Final(turn.text, steps, "answer", history)
                return
            if steps >= self.max_steps:
                history.append({"role": "assistant", "content": turn.text})
                yield Error(f"stopped: the step limit of {self.max_steps} actions was reached", step)
                yield Final(turn.text, steps, "max_steps", history)
                return
            steps += 1
            yield from self._act(turn.text, turn.action, step, history)
            step += 1

    def _act(self, text: str, action, step: int, history: list[dict]) -> Iterator[Event]:
        """Run one action and append the assistant and environment turns to `history`."""
        if isinstance(action, PluginCall):
            yield ToolCall(step, "plugin", action.name, dict(action.arguments))
            history.append({"role": "assistant", "content": text, "tool_calls": [
                {"type": "function", "function": {"name": action.name, "arguments": action.arguments}}]})
            if self.tools is None or not len(self.tools):
                result = ToolResult.failure("no tools are available in this conversation")
            else:
                result = self.tools.call(action.name, action.arguments)
            yield from self._result(step, action.name, result, PLUGIN, history)
        elif isinstance(action, InterpreterCall):
            yield ToolCall(step, "interpreter", "python", {}, code=action.code)
            history.append({"role": "assistant", "content": text, "code": action.code})
            yield from self._result(step, "python", self._run_code(action.code), INTERPRETER, history)
        else:
            assert isinstance(action, ActionError)
            marker = INTERPRETER if action.kind == "interpreter" else PLUGIN
            history.append({"role": "assistant", "content": text,
                            "raw_action": {"type": action.kind, "text": action.raw}})
            yield ToolCall(step, action.kind, action.name or "", {})
            yield from self._result(step, action.name or action.kind, ToolResult.failure(action.message),
                                    marker, history)

    def _run_code(self, code: str) -> ToolResult:
        if not self.interpreter_enabled:
            return ToolResult.failure("the code interpreter is not enabled in this conversation; answer "
                                      "directly or use one of the declared tools")
        from puyu.agent.interpreter import InterpreterError
        from puyu.agent.sandbox import SandboxError

        try:
            r = self.interpreter.run(code)
        except (InterpreterError, SandboxError) as e:  # no kernel can start, or the session was closed
            return ToolResult.failure(str(e))
        return ToolResult(r.for_model(), ok=r.error is None, error=r.error, images=list(r.images))

    def _result(self, step: int, name: str, result: ToolResult, marker: str, history: list[dict]
                ) -> Iterator[Event]:
        yield ToolOutput(step, name, result.content, result.ok, result.error)
        for path in result.images:
            yield Image(step, path)
        history.append({"role": "environment", "name": marker, "content": result.content})
