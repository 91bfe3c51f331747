"""Parse one assistant turn of InternLM2 output into text plus at most one action.

    Sure, let me check.<|action_start|><|plugin|>\n{"name": "weather", "parameters": {"city": "Paris"}}<|action_end|>
    Let me compute.<|action_start|><|interpreter|>\n```python\nprint(2**10)\n```<|action_end|>

A turn is plain text, optionally followed by one action: `<|action_start|>`, then `<|plugin|>` and a
JSON object with "name" and "parameters" (or "arguments", as OpenAI spells it; a JSON string there is
decoded too), or `<|interpreter|>` and a fenced python block (a bare body is taken as code). The turn
ends at `<|action_end|>`, `<|im_end|>`, a stray `<|im_start|>` (the model running into the next turn),
or the end of the stream; whatever follows the action is ignored (one action per turn) but kept in
`ParsedTurn.trailing`. The raw spare-token spellings (`[UNUSED_TOKEN_141]`..`[UNUSED_TOKEN_146]`,
which a tokenizer without the chat-token mapping prints) are read as the markers they stand for.

`StreamParser` is the incremental form: `feed(chunk)` returns the text that is safe to show now. A
suffix that could still become a marker (`<|act`, `[UNUSED_TO`) is held back until the next chunk
decides it, so a marker split across chunks is never lost or shown as text. `parse_turn(text)` is
`StreamParser` fed once, so the whole and the streamed forms agree by construction (and the tests
check every split point).

A malformed action never raises: it becomes an `ActionError` whose message says what was wrong and
what a valid call looks like; the agent feeds that message back as the environment turn.

This is the one reader of tool calls in puyu: the agent and the server (`puyu.agent.protocol` re-exports
it), the evaluation scorers (`puyu.eval.tools`, `puyu.eval.tool_use`) and the verifiable rewards of RL
(`puyu.tasks.verifiable`) all call it, so a turn the evaluation scores right is rewarded by RL too. It
lives in the model layer, beside `chat_format` (which writes the same format), because `tasks` may not
import `agent`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from puyu.model.chat_format import ACTION_END, ACTION_START, IM_END, IM_START, INTERPRETER, PLUGIN

# Raw SentencePiece pieces of the renamed chat tokens (docs/internlm2.md, Tokenizer table).
ALIASES = {
    "[UNUSED_TOKEN_141]": PLUGIN, "[UNUSED_TOKEN_142]": INTERPRETER, "[UNUSED_TOKEN_143]": ACTION_END,
    "[UNUSED_TOKEN_144]": ACTION_START, "[UNUSED_TOKEN_145]": IM_END, "[UNUSED_TOKEN_146]": IM_START,
}
MARKERS = (ACTION_START, ACTION_END, IM_END, IM_START, PLUGIN, INTERPRETER, *ALIASES)
_MARKER_RE = re.compile("|".join(re.escape(m) for m in sorted(MARKERS, key=len, reverse=True)))
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n?(.*?)(?:```|\Z)", re.S)

PLUGIN_EXAMPLE = '{"name": "<tool name>", "parameters": {"<argument>": <value>}}'


@dataclass(frozen=True)
class PluginCall:
    """A tool call: `arguments` is always a dict (validated against the tool's schema later)."""

    name: str
    arguments: dict
    raw: str  # the action body as the model wrote it (after the action-type marker)


@dataclass(frozen=True)
class InterpreterCall:
    code: str
    raw: str


@dataclass(frozen=True)
class ActionError:
    """An action that could not be parsed. kind: "plugin", "interpreter" or "unknown"."""

    kind: str
    message: str
    raw: str
    name: str | None = None  # the tool name, when it could be read


Action = PluginCall | InterpreterCall | ActionError


@dataclass(frozen=True)
class ParsedTurn:
    text: str  # the text before the action (everything, if there is none), exactly as streamed
    action: Action | None = None
    closed: bool = True  # False: the action was cut off (no <|action_end|>) and parsed leniently
    trailing: str = ""  # output after the action or end marker, ignored


def canonical(marker: str) -> str:
    return ALIASES.get(marker, marker)


def _held_suffix(s: str) -> int:
    """Length of the longest suffix of `s` that is a proper prefix of some marker."""
    best = 0
    for m in MARKERS:
        for k in range(min(len(m) - 1, len(s)), best, -1):
            if s.endswith(m[:k]):
                best = k
                break
    return best


def _strip_fences(s: str) -> str:
    m = _FENCE_RE.search(s)
    return m.group(2) if m and s.lstrip().startswith("```") else s


def parse_plugin(body: str) -> PluginCall | ActionError:
    """Parse the JSON after `<|plugin|>`."""
    raw = body
    payload = _strip_fences(body.strip()).strip()
    try:
        obj = json.loads(payload)
    except json.JSONDecodeError as e:
        return ActionError("plugin", f"the tool call is not valid JSON ({e.msg} at line {e.lineno} column "
                                     f"{e.colno}); write exactly one object: {PLUGIN_EXAMPLE}", raw)
    if not isinstance(obj, dict):
        return ActionError("plugin", f"the tool call must be a JSON object, got {type(obj).__name__}; "
                                     f"write: {PLUGIN_EXAMPLE}", raw)
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return ActionError("plugin", f'the tool call has no "name" string; write: {PLUGIN_EXAMPLE}', raw)
    name = name.strip()
    args = obj.get("parameters", obj.get("arguments", {}))
    if args is None:
        args = {}
    if isinstance(args, str):  # OpenAI style: arguments as a JSON-encoded string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return ActionError("plugin", f"the arguments of {name!r} are a string that is not valid JSON "
                                         f"({e.msg}); pass an object: {PLUGIN_EXAMPLE}", raw, name)
    if not isinstance(args, dict):
        return ActionError("plugin", f'"parameters" of {name!r} must be a JSON object, got '
                                     f"{type(args).__name__}; write: {PLUGIN_EXAMPLE}", raw, name)
    return PluginCall(name, args, raw)


def parse_code(body: str) -> InterpreterCall | ActionError:
    """Parse the code after `<|interpreter|>`: the first fenced block, or the whole body without one."""
    m = _FENCE_RE.search(body)
    code = m.group(2) if m else body
    code = code.strip("\n").rstrip()
    if not code.strip():
        return ActionError("interpreter", "the interpreter call contains no code; put Python in a "
                                          "```python fenced block", body)
    return InterpreterCall(code, body)


def parse_action(body: str) -> Action:
    """Parse what follows `<|action_start|>` (without the closing `<|action_end|>`)."""
    stripped = body.lstrip()
    m = _MARKER_RE.match(stripped)
    kind = canonical(m.group(0)) if m else None
    rest = stripped[m.end():] if m else stripped
    rest = rest[1:] if rest.startswith("\n") else rest
    if kind == PLUGIN:
        return parse_plugin(rest)
    if kind == INTERPRETER:
        return parse_code(rest)
    # The message names the markers without writing them: an API client renders this environment turn
    # into a text prompt, where marker text would be read as the special tokens themselves.
    return ActionError("unknown", "an action must start with the plugin marker (a tool call) or the "
                                  f"interpreter marker (Python code); got {stripped[:40]!r}", body)


class StreamParser:
    """Incremental parser for one assistant turn. Feed chunks, show what `feed` returns, then `finish`.

    States: "text" (emitting text), "action" (collecting the action body, nothing shown), "done"
    (after the action or an end marker; further input is kept as `trailing` only).
    """

    def __init__(self) -> None:
        self.state = "text"
        self._pending = ""  # held-back text that might start a marker
        self._text: list[str] = []
        self._body = ""
        self._scanned = 0  # body prefix already searched for an end marker
        self._trailing: list[str] = []
        self._closed = True
        self._saw_action = False

    @property
    def in_action(self) -> bool:
        return self.state == "action"

    def feed(self, chunk: str) -> str:
        """Consume `chunk`; return the newly decided text (possibly empty)."""
        if self.state == "done":
            self._trailing.append(chunk)
            return ""
        if self.state == "action":
            self._feed_action(chunk)
            return ""
        s = self._pending + chunk
        self._pending = ""
        out: list[str] = []
        while True:
            m = _MARKER_RE.search(s)
            if m is None:
                keep = _held_suffix(s)
                out.append(s[: len(s) - keep])
                self._pending = s[len(s) - keep:]
                break
            out.append(s[: m.start()])
            marker, s = canonical(m.group(0)), s[m.end():]
            if marker == ACTION_START:
                self.state = "action"
                self._feed_action(s)
                break
            if marker in (PLUGIN, INTERPRETER):  # action start omitted: treat the type marker as the start
                self.state = "action"
                self._feed_action(marker + s)
                break
            if marker in (IM_END, IM_START):
                self.state = "done"
                self._trailing.append(s)
                break
            # A stray <|action_end|> in text carries nothing: drop it and go on.
        text = "".join(out)
        self._text.append(text)
        return text

    def _feed_action(self, chunk: str) -> None:
        self._saw_action = True
        self._body += chunk
        # Search only the new part, backing up by the longest marker so a split marker is seen whole.
        start = max(0, self._scanned - max(map(len, MARKERS)))
        for m in _MARKER_RE.finditer(self._body, start):
            marker = canonical(m.group(0))
            if marker in (ACTION_END, IM_END, IM_START):
                self._trailing.append(self._body[m.end():])
                self._body = self._body[: m.start()]
                self._closed = marker == ACTION_END
                self.state = "done"
                return
        self._scanned = len(self._body)

    def finish(self) -> ParsedTurn:
        """End of stream: decide held-back text and parse the action, if any."""
        if self.state == "text":
            self._text.append(self._pending)  # an unfinished marker prefix at the very end is text
            self._pending = ""
            return ParsedTurn("".join(self._text), None, True, "".join(self._trailing))
        if self.state == "action":
            self._closed = False
            self.state = "done"
        action = parse_action(self._body) if self._saw_action else None
        return ParsedTurn("".join(self._text), action, self._closed, "".join(self._trailing))


def parse_turn(output: str) -> ParsedTurn:
    """Parse a whole assistant turn (the same result as streaming it in any chunks)."""
    p = StreamParser()
    p.feed(output)
    return p.finish()
