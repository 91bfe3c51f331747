"""The InternLM2 chat format: `render_chat`, its token encoding `encode_chat` / `chat_tokens`, and the
Jinja `CHAT_TEMPLATE` that renders the same text for Hugging Face `apply_chat_template`.

    <s><|im_start|>system\n{system}<|im_end|>\n
    <|im_start|>system name=<|interpreter|>\n{interpreter description}<|im_end|>\n
    <|im_start|>system name=<|plugin|>\n{JSON list of function schemas}<|im_end|>\n
    <|im_start|>user\n{question}<|im_end|>\n
    <|im_start|>assistant\n{text}<|action_start|><|plugin|>\n{"name": ..., "parameters": {...}}<|action_end|>\n<|im_end|>\n
    <|im_start|>environment name=<|plugin|>\n{result}<|im_end|>\n
    <|im_start|>assistant\n

The tool and interpreter system turns follow the leading ordinary system turn (interpreter first, as in
the published examples).

Messages (the OpenAI chat shapes, plus InternLM2's own) are dicts:
- `role`: system, developer (OpenAI's newer name for system: rendered as system), user, assistant,
  environment, tool (the environment turn of the plugin: `environment name=<|plugin|>`). The first
  message, when it is a system/developer message without a `name`, is the leading system turn; any
  other system message is rendered in place as its own system turn.
- `content`: a string, None/absent (empty), or a list of OpenAI content parts of which every part must
  be `{"type": "text", "text": str}` (joined without separator). Image, audio, file and other parts have
  no InternLM2 equivalent: both `render_chat` and the template refuse them with the same message.
- `name` (optional): `role name=X` (`user name=file` announces uploaded files); "plugin"/"interpreter"
  (or the markers themselves) name the tool turns.
- assistant `tool_calls`: OpenAI's `[{"type": "function", "function": {"name", "arguments"}}]` (or bare
  `{"name", "arguments"|"parameters"}`). `arguments` may be a JSON object string (kept verbatim; `render_chat`
  also checks it is valid JSON, which the template cannot: the one documented difference), an object
  (written as `json.dumps(x, ensure_ascii=False)`), null/absent or an empty string (`{}`, as clients
  replay calls without arguments); any other string is refused by both with the same message. InternLM2 calls one tool per turn; several calls in one
  assistant message (OpenAI parallel calls) are rendered as consecutive actions in that turn, in order,
  and their results are the environment turns that follow (a documented mapping, the same in both).
- assistant `code`: an interpreter action with a fenced python block.
- assistant `raw_action` (puyu's agent): `{"type": "plugin"|"interpreter"|"unknown", "text": str}`, a
  malformed action replayed as the model wrote it.
`tools` are OpenAI-style schemas (`{"type": "function", "function": {...}}`) or bare
`{name, description, parameters}`; `interpreter` is None/False, True (default description) or text.

Replayed actions end `<|action_end|>\n<|im_end|>\n`, with a newline before `<|im_end|>`: that is how
InternLM2's SFT data was written (xtuner's InternLM2 role table puts "\n" after the action end, Lagent's
InternLM2 protocol does the same, and so does the interpreter example of InternLM's chat-format
document; its function-call example omits it). The project's InternLM2 fact sheet (shared docs,
internlm2.md) says the same: replay it, parse either. The action itself, as the model writes it, ends
at `<|action_end|>` (`plugin_action`, `interpreter_action`; servers stop there) and the parser
(`puyu.agent.protocol`) accepts a turn with or without the newline.

Injection safety: only the markers the template writes (`<s>`, `<|im_start|>`, `<|im_end|>`,
`<|action_start|>`, `<|action_end|>`, `<|plugin|>`, `<|interpreter|>`) become special token ids.
Every content, name, tool result, tool-call name and argument, tool schema, interpreter description
and code is encoded as plain text, so "<|im_start|>system" inside any of them stays text.
`render_pieces` is the one rendering: a list of (text, trusted, mask) pieces whose texts joined are
`render_chat`'s string; `encode_chat` and `chat_tokens` (SFT data) encode those pieces, so a prompt at
inference and the same conversation in training have the same ids.
"""

from __future__ import annotations

import json
import re

from puyu.errors import PuyuError

BOS, EOS = "<s>", "</s>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ACTION_START, ACTION_END = "<|action_start|>", "<|action_end|>"
PLUGIN, INTERPRETER = "<|plugin|>", "<|interpreter|>"
CHAT_TOKENS = [PLUGIN, INTERPRETER, ACTION_END, ACTION_START, IM_END, IM_START]  # ids 92538..92543
ROLES = ("system", "developer", "user", "assistant", "environment", "tool")
MARKERS = (BOS, EOS, *CHAT_TOKENS)

DEFAULT_INTERPRETER_PROMPT = (
    "You can run Python code in a stateful Jupyter kernel. To run code, emit it in a fenced python block "
    "inside an interpreter action; the kernel's output, errors and figures come back to you. Use it for "
    "arithmetic and mathematics, data analysis and charts (pandas, matplotlib), and for reading the files "
    "the user uploaded into the working directory."
)

_NAME_ALIASES = {"plugin": PLUGIN, "interpreter": INTERPRETER, PLUGIN: PLUGIN, INTERPRETER: INTERPRETER}
_ACTION_TYPES = {"plugin": PLUGIN, "interpreter": INTERPRETER, "unknown": ""}


class ChatFormatError(PuyuError, ValueError):
    pass


def _text(content, i: int) -> str:
    """Content as text: a string, None, or a list of OpenAI `{"type": "text", "text": ...}` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        out = []
        for j, p in enumerate(content):
            if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
                raise ChatFormatError(f"message {i}: content part {j} is not a text part "
                                      f"(InternLM2 chat takes text only)")
            out.append(p["text"])
        return "".join(out)
    raise ChatFormatError(f"message {i}: content must be a string, null or a list of text parts")


def _function(tool: dict) -> dict:
    return tool["function"] if isinstance(tool, dict) and "function" in tool else tool


def _call_json(name: str, arguments) -> str:
    """The JSON body of one plugin call as the model writes it."""
    if isinstance(arguments, str):
        try:
            json.loads(arguments)
        except json.JSONDecodeError as e:
            raise ChatFormatError(f"tool call {name!r} has arguments that are not valid JSON: {e}") from None
        args_json = arguments
    else:
        args_json = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return f'{{"name": {json.dumps(name, ensure_ascii=False)}, "parameters": {args_json}}}'


def plugin_action(name: str, arguments) -> str:
    """One plugin call as the model writes it (up to `<|action_end|>`; a replay adds "\n")."""
    return f"{ACTION_START}{PLUGIN}\n{_call_json(name, arguments)}{ACTION_END}"


def interpreter_action(code: str) -> str:
    """One interpreter call as the model writes it (up to `<|action_end|>`; a replay adds "\n")."""
    return f"{ACTION_START}{INTERPRETER}\n```python\n{code}\n```{ACTION_END}"


# A piece: (text, trusted, mask). trusted: template text whose markers become special ids (plain text
# otherwise); mask: 1 on what an SFT loss trains (assistant bodies and their <|im_end|>).
Piece = tuple[str, bool, int]


def _turn(role: str, body: list[Piece], name=None, train: bool = False, i: int = 0) -> list[Piece]:
    m = 1 if train else 0
    head: list[Piece] = [(IM_START + role, True, 0)]
    if name:
        if not isinstance(name, str):
            raise ChatFormatError(f"message {i}: name must be a string")
        alias = _NAME_ALIASES.get(name)
        head += [(" name=", True, 0), (alias, True, 0) if alias else (name, False, 0)]
    return head + [("\n", True, 0)] + body + [(IM_END, True, m), ("\n", True, 0)]


def _assistant_body(m: dict, i: int) -> list[Piece]:
    body: list[Piece] = [(_text(m.get("content"), i), False, 1)]
    for call in m.get("tool_calls") or []:
        fn = call["function"] if isinstance(call, dict) and "function" in call else call
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ChatFormatError(f"message {i}: a tool call needs a function name")
        args = fn.get("arguments")
        if args is None:
            args = fn.get("parameters")
        if isinstance(args, str):  # clients replay "" for calls without arguments
            if not args.strip():
                args = None
            elif not args.strip().startswith("{"):
                raise ChatFormatError(f"message {i}: tool call arguments must be a JSON object")
        body += [(ACTION_START + PLUGIN + "\n", True, 1), (_call_json(fn["name"], args), False, 1),
                 (ACTION_END + "\n", True, 1)]
    if m.get("code") is not None:
        body += [(ACTION_START + INTERPRETER + "\n", True, 1), (f"```python\n{m['code']}\n```", False, 1),
                 (ACTION_END + "\n", True, 1)]
    raw = m.get("raw_action")
    if raw is not None:
        kind = raw.get("type") if isinstance(raw, dict) else None
        if kind not in _ACTION_TYPES or not isinstance(raw.get("text"), str):
            raise ChatFormatError(f"message {i}: raw_action must be {{'type': plugin|interpreter|unknown, "
                                  f"'text': str}}")
        marker = _ACTION_TYPES[kind]
        body += [(ACTION_START + (marker + "\n" if marker else ""), True, 1), (raw["text"], False, 1),
                 (ACTION_END + "\n", True, 1)]
    return body


def render_pieces(messages: list[dict], tools: list[dict] | None = None, interpreter=None,
                  add_generation_prompt: bool = True) -> list[Piece]:
    """The conversation as (text, trusted, mask) pieces (module docstring); joined texts = render_chat.
    Raises ChatFormatError on a message that is not one of the shapes above."""
    out: list[Piece] = [(BOS, True, 0)]
    msgs = list(messages)
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            got = m.get("role") if isinstance(m, dict) else m
            raise ChatFormatError(f"message {i}: role must be one of {', '.join(ROLES)}, got {got}")
    start = 0
    if msgs and msgs[0]["role"] in ("system", "developer") and not msgs[0].get("name"):
        out += _turn("system", [(_text(msgs[0].get("content"), 0), False, 0)])
        start = 1
    if interpreter:
        desc = interpreter if isinstance(interpreter, str) else DEFAULT_INTERPRETER_PROMPT
        out += _turn("system", [(desc, False, 0)], INTERPRETER)
    if tools:
        out += _turn("system", [(json.dumps([_function(t) for t in tools], ensure_ascii=False), False, 0)], PLUGIN)
    for i in range(start, len(msgs)):
        m = msgs[i]
        role, name = m["role"], m.get("name")
        if role == "developer":
            role = "system"
        if role == "tool":
            role, name = "environment", PLUGIN
        if role == "assistant":
            out += _turn(role, _assistant_body(m, i), name, train=True, i=i)
        else:
            out += _turn(role, [(_text(m.get("content"), i), False, 0)], name, i=i)
    if add_generation_prompt:
        out += [(IM_START + "assistant", True, 0), ("\n", True, 0)]
    return [p for p in out if p[0]]


def render_chat(messages: list[dict], tools: list[dict] | None = None, interpreter=None,
                add_generation_prompt: bool = True) -> str:
    """Render `messages` in the InternLM2 format (see the module docstring). Starts with `<s>`.

    The text is for display, logs and `apply_chat_template` parity; to get token ids use `encode_chat`
    (encoding this string with specials allowed would turn marker text inside contents into markers)."""
    return "".join(p[0] for p in render_pieces(messages, tools, interpreter, add_generation_prompt))


# The same rendering as a Jinja template for tokenizer_config.json (Hugging Face `apply_chat_template`
# passes `messages`, `tools`, `add_generation_prompt`, and extra kwargs such as `interpreter`; its
# sandbox provides `raise_exception`, `namespace` and a `tojson` that is json.dumps(x, ensure_ascii=False);
# it drops message keys whose value is None). Errors: the same messages as `render_chat`.
TEMPLATE_VERSION = 3  # bump with any change; tokenizer_config.json carries it as "puyu_chat_template_version"
_ROLE_LIST = "[" + ", ".join(f"'{r}'" for r in ROLES) + "]"
CHAT_TEMPLATE = (
    "{%- macro text(c, i) -%}"
    "{%- if c is none -%}"
    "{%- elif c is string -%}{{ c }}"
    "{%- elif c is sequence and c is not mapping -%}"
    "{%- for p in c -%}"
    "{%- if p is mapping and p.get('type') == 'text' and p.get('text') is string -%}{{ p['text'] }}"
    "{%- else -%}{{ raise_exception('message ' ~ i ~ ': content part ' ~ loop.index0 ~ "
    "' is not a text part (InternLM2 chat takes text only)') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}{{ raise_exception('message ' ~ i ~ ': content must be a string, null or a list of text parts') }}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- macro head(role, name, i) -%}"
    "{{ '<|im_start|>' + role }}"
    "{%- if name -%}"
    "{%- if name is not string -%}{{ raise_exception('message ' ~ i ~ ': name must be a string') }}{%- endif -%}"
    "{%- if name in ['plugin', '<|plugin|>'] -%}{{ ' name=<|plugin|>' }}"
    "{%- elif name in ['interpreter', '<|interpreter|>'] -%}{{ ' name=<|interpreter|>' }}"
    "{%- else -%}{{ ' name=' + name }}{%- endif -%}"
    "{%- endif -%}"
    "{{ '\n' }}"
    "{%- endmacro -%}"
    "{{ '<s>' }}"
    "{%- for m in messages -%}"
    "{%- if m is not mapping or m.get('role') not in " + _ROLE_LIST + " -%}"
    "{{ raise_exception('message ' ~ loop.index0 ~ ': role must be one of " + ", ".join(ROLES)
    + ", got ' ~ (m.get('role') if m is mapping else m)) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set ns = namespace(start=0) -%}"
    "{%- if messages and messages[0]['role'] in ['system', 'developer'] and not messages[0].get('name') -%}"
    "{{ '<|im_start|>system\n' }}{{ text(messages[0].get('content'), 0) }}{{ '<|im_end|>\n' }}"
    "{%- set ns.start = 1 -%}"
    "{%- endif -%}"
    "{%- if interpreter is defined and interpreter -%}"
    "{{ '<|im_start|>system name=<|interpreter|>\n' }}"
    "{%- if interpreter is string -%}{{ interpreter }}{%- else -%}{{ default_interpreter_prompt }}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- if tools is defined and tools -%}"
    "{{ '<|im_start|>system name=<|plugin|>\n[' }}"
    "{%- for t in tools -%}"
    "{%- if t is mapping and 'function' in t -%}{{ t['function'] | tojson }}{%- else -%}{{ t | tojson }}{%- endif -%}"
    "{%- if not loop.last -%}{{ ', ' }}{%- endif -%}"
    "{%- endfor -%}"
    "{{ ']<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if loop.index0 >= ns.start -%}"
    "{%- set i = loop.index0 -%}"
    "{%- set role = m['role'] -%}{%- set name = m.get('name') -%}"
    "{%- if role == 'developer' -%}{%- set role = 'system' -%}{%- endif -%}"
    "{%- if role == 'tool' -%}{%- set role = 'environment' -%}{%- set name = 'plugin' -%}{%- endif -%}"
    "{{ head(role, name, i) }}"
    "{{ text(m.get('content'), i) }}"
    "{%- if role == 'assistant' -%}"
    "{%- for call in m.get('tool_calls') or [] -%}"
    "{%- set fn = call['function'] if (call is mapping and 'function' in call) else call -%}"
    "{%- if fn is not mapping or fn.get('name') is not string -%}"
    "{{ raise_exception('message ' ~ i ~ ': a tool call needs a function name') }}"
    "{%- endif -%}"
    "{%- set args = fn.get('arguments') -%}"
    "{%- if args is none -%}{%- set args = fn.get('parameters') -%}{%- endif -%}"
    "{%- if args is none or (args is string and (args | trim) == '') -%}{%- set args = {} -%}{%- endif -%}"
    "{%- if args is string and not (args | trim).startswith('{') -%}"
    "{{ raise_exception('message ' ~ i ~ ': tool call arguments must be a JSON object') }}"
    "{%- endif -%}"
    "{{ '<|action_start|><|plugin|>\n{\"name\": ' + (fn['name'] | tojson) + ', \"parameters\": ' }}"
    "{%- if args is string -%}{{ args }}{%- else -%}{{ args | tojson }}{%- endif -%}"
    "{{ '}<|action_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if m.get('code') is not none -%}"
    "{{ '<|action_start|><|interpreter|>\n```python\n' }}{{ m['code'] }}{{ '\n```<|action_end|>\n' }}"
    "{%- endif -%}"
    "{%- set raw = m.get('raw_action') -%}"
    "{%- if raw is not none -%}"
    "{%- if raw is not mapping or raw.get('type') not in ['plugin', 'interpreter', 'unknown'] or raw.get('text') is not string -%}"
    "{{ raise_exception('message ' ~ i ~ \": raw_action must be {'type': plugin|interpreter|unknown, 'text': str}\") }}"
    "{%- endif -%}"
    "{{ '<|action_start|>' }}"
    "{%- if raw['type'] == 'plugin' -%}{{ '<|plugin|>\n' }}{%- elif raw['type'] == 'interpreter' -%}{{ '<|interpreter|>\n' }}{%- endif -%}"
    "{{ raw['text'] }}{{ '<|action_end|>\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def chat_template() -> str:
    """CHAT_TEMPLATE with the default interpreter description inlined (Hugging Face has no extra vars)."""
    return CHAT_TEMPLATE.replace("{{ default_interpreter_prompt }}", "{{ " + json.dumps(DEFAULT_INTERPRETER_PROMPT) + " }}")


# ---- encoding to token ids ------------------------------------------------------------------------
_MARKER_RE = re.compile("(" + "|".join(re.escape(t) for t in sorted(MARKERS, key=len, reverse=True)) + ")")
_FORCED_HEAD_RE = re.compile("(?:" + "|".join(re.escape(t) for t in CHAT_TOKENS) + ")+\n?")


def encode_pieces(tokenizer, pieces: list[Piece]) -> tuple[list[int], list[int]]:
    """Token ids and mask of `render_pieces` output. Marker strings in trusted pieces become special ids
    (`tokenizer.encode(marker, allow_special=True)`); all other text, trusted or not, is encoded as
    plain text (`tokenizer.encode(text)`, which never yields a special id), in maximal runs between
    markers and mask changes, so the ids are those of the whole rendering encoded with specials allowed
    whenever no content contains marker text."""
    ids: list[int] = []
    mask: list[int] = []
    run: list[str] = []
    run_mask = 0

    def flush() -> None:
        if run:
            part = tokenizer.encode("".join(run))
            ids.extend(part)
            mask.extend([run_mask] * len(part))
            run.clear()

    for text, trusted, m in pieces:
        if m != run_mask:
            flush()
            run_mask = m
        if not trusted:
            run.append(text)
            continue
        for k, part in enumerate(_MARKER_RE.split(text)):
            if k % 2 == 0:
                if part:
                    run.append(part)
            else:
                flush()
                special = tokenizer.encode(part, allow_special=True)
                ids.extend(special)
                mask.extend([m] * len(special))
    flush()
    return ids, mask


def encode_chat(tokenizer, messages: list[dict], tools: list[dict] | None, interpreter=None,
                forced: str = "", *, add_generation_prompt: bool = True) -> list[int]:
    """Prompt ids of a conversation: template markers as special ids, everything else plain text
    (see the module docstring). This is the one encoding for the server, the agent's engine policy,
    the terminal chat, `puyu generate --chat`, evaluation and RL; `chat_tokens` gives the same ids.

    forced: assistant text already written after the generation prompt (the server's tool_choice): its
    leading run of chat markers (e.g. `<|action_start|><|plugin|>\\n`) is template text, the rest plain.
    Raises ChatFormatError for a malformed message; the tokenizer's own errors (see its `encode`) pass."""
    pieces = render_pieces(messages, tools, interpreter, add_generation_prompt)
    if forced:
        head = _FORCED_HEAD_RE.match(forced)
        n = head.end() if head else 0
        pieces += [(forced[:n], True, 0), (forced[n:], False, 0)]
    return encode_pieces(tokenizer, pieces)[0]


def chat_tokens(tok, messages: list[dict], tools=None, interpreter=None) -> tuple[list[int], list[int]]:
    """Tokens and loss mask of one conversation for SFT (no generation prompt).

    The ids are `encode_chat(tok, messages, tools, interpreter, add_generation_prompt=False)`, so
    literal marker text inside any content trains as plain text, exactly as it is served. The mask is 1
    exactly on the tokens of each assistant turn's body, which includes any action markers
    (`<|action_start|><|plugin|>` ... `<|action_end|>` and the newline after it), and on the turn's
    closing `<|im_end|>`; it is 0 on `<s>`, on every turn header (`<|im_start|>assistant\\n`), on the
    newline after `<|im_end|>`, and on all system, user and environment turns."""
    return encode_pieces(tok, render_pieces(messages, tools, interpreter, add_generation_prompt=False))
