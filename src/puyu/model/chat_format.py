"""The InternLM2 chat format: `render_chat` and the identical Jinja `CHAT_TEMPLATE`.

    <s><|im_start|>system\n{system}<|im_end|>\n
    <|im_start|>system name=<|interpreter|>\n{interpreter description}<|im_end|>\n
    <|im_start|>system name=<|plugin|>\n{JSON list of function schemas}<|im_end|>\n
    <|im_start|>user\n{question}<|im_end|>\n
    <|im_start|>assistant\n{text}<|action_start|><|plugin|>\n{"name": ..., "parameters": {...}}<|action_end|><|im_end|>\n
    <|im_start|>environment name=<|plugin|>\n{result}<|im_end|>\n
    <|im_start|>assistant\n

The tool and interpreter system turns follow the leading ordinary system turn (interpreter first, as in
the published examples). Messages are dicts: role in system/user/assistant/environment/tool, `content`,
optional `name` (`user name=file` announces uploaded files). An assistant message may carry OpenAI-style
`tool_calls` (each rendered as one plugin action; `arguments` as a dict, or a JSON string kept verbatim)
or `code` (rendered as an interpreter action with a fenced python block). A `tool` message is the
environment turn of the plugin. `tools` are OpenAI-style schemas (`{"type": "function", "function": {...}}`)
or bare `{name, description, parameters}`; `interpreter` is None/False, True (default description) or text.
"""

from __future__ import annotations

import json
import re
import secrets

from puyu.errors import PuyuError

BOS, EOS = "<s>", "</s>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ACTION_START, ACTION_END = "<|action_start|>", "<|action_end|>"
PLUGIN, INTERPRETER = "<|plugin|>", "<|interpreter|>"
CHAT_TOKENS = [PLUGIN, INTERPRETER, ACTION_END, ACTION_START, IM_END, IM_START]  # ids 92538..92543
ROLES = ("system", "user", "assistant", "environment", "tool")

DEFAULT_INTERPRETER_PROMPT = (
    "You can run Python code in a stateful Jupyter kernel. To run code, emit it in a fenced python block "
    "inside an interpreter action; the kernel's output, errors and figures come back to you. Use it for "
    "arithmetic and mathematics, data analysis and charts (pandas, matplotlib), and for reading the files "
    "the user uploaded into the working directory."
)

_NAME_ALIASES = {"plugin": PLUGIN, "interpreter": INTERPRETER}


class ChatFormatError(PuyuError, ValueError):
    pass


def _text(content) -> str:
    """Content as text: a string, None, or a list of OpenAI `{"type": "text", "text": ...}` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise ChatFormatError(f"message content must be a string or a list of text parts, got {type(content).__name__}")


def _function(tool: dict) -> dict:
    return tool["function"] if isinstance(tool, dict) and "function" in tool else tool


def plugin_action(name: str, arguments) -> str:
    """One plugin call as the model writes it."""
    if isinstance(arguments, str):
        try:
            json.loads(arguments)
        except json.JSONDecodeError as e:
            raise ChatFormatError(f"tool call {name!r} has arguments that are not valid JSON: {e}") from None
        args_json = arguments
    else:
        args_json = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return f'{ACTION_START}{PLUGIN}\n{{"name": {json.dumps(name, ensure_ascii=False)}, "parameters": {args_json}}}{ACTION_END}'


def interpreter_action(code: str) -> str:
    return f"{ACTION_START}{INTERPRETER}\n```python\n{code}\n```{ACTION_END}"


def _turn(role: str, content: str, name: str | None = None) -> str:
    head = f"{role} name={_NAME_ALIASES.get(name, name)}" if name else role
    return f"{IM_START}{head}\n{content}{IM_END}\n"


def render_chat(messages: list[dict], tools: list[dict] | None = None, interpreter=None,
                add_generation_prompt: bool = True) -> str:
    """Render `messages` in the InternLM2 format (see the module docstring). Starts with `<s>`."""
    out = [BOS]
    rest = list(messages)
    if rest and rest[0].get("role") == "system" and not rest[0].get("name"):
        out.append(_turn("system", _text(rest[0].get("content"))))
        rest = rest[1:]
    if interpreter:
        out.append(_turn("system", interpreter if isinstance(interpreter, str) else DEFAULT_INTERPRETER_PROMPT,
                         INTERPRETER))
    if tools:
        out.append(_turn("system", json.dumps([_function(t) for t in tools], ensure_ascii=False), PLUGIN))
    for i, m in enumerate(rest):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ChatFormatError(f"message {i}: role must be one of {', '.join(ROLES)}, got "
                                  f"{m.get('role') if isinstance(m, dict) else m!r}")
        role, name, content = m["role"], m.get("name"), _text(m.get("content"))
        if role == "tool":
            role, name = "environment", PLUGIN
        if role == "assistant":
            for call in m.get("tool_calls") or []:
                fn = call.get("function", call)
                content += plugin_action(fn["name"], fn.get("arguments", fn.get("parameters")))
            if m.get("code") is not None:
                content += interpreter_action(m["code"])
        out.append(_turn(role, content, name))
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    return "".join(out)


# The same rendering as a Jinja template for tokenizer_config.json (Hugging Face `apply_chat_template`
# passes `messages`, `tools`, `add_generation_prompt`, and extra kwargs such as `interpreter`).
# `tojson` must be json.dumps(x, ensure_ascii=False), which is what Hugging Face installs.
CHAT_TEMPLATE = (
    "{{ '<s>' }}"
    "{%- set ns = namespace(start=0) -%}"
    "{%- if messages and messages[0]['role'] == 'system' and not messages[0].get('name') -%}"
    "{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- set ns.start = 1 -%}"
    "{%- endif -%}"
    "{%- if interpreter is defined and interpreter -%}"
    "{{ '<|im_start|>system name=<|interpreter|>\\n' }}"
    "{%- if interpreter is string -%}{{ interpreter }}{%- else -%}{{ default_interpreter_prompt }}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- if tools is defined and tools -%}"
    "{{ '<|im_start|>system name=<|plugin|>\\n[' }}"
    "{%- for t in tools -%}"
    "{%- if t['function'] is defined -%}{{ t['function'] | tojson }}{%- else -%}{{ t | tojson }}{%- endif -%}"
    "{%- if not loop.last -%}{{ ', ' }}{%- endif -%}"
    "{%- endfor -%}"
    "{{ ']<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for m in messages[ns.start:] -%}"
    "{%- set role = m['role'] -%}{%- set name = m.get('name') -%}"
    "{%- if role == 'tool' -%}{%- set role = 'environment' -%}{%- set name = '<|plugin|>' -%}{%- endif -%}"
    "{%- if name in ['plugin', 'interpreter'] -%}{%- set name = '<|' + name + '|>' -%}{%- endif -%}"
    "{{ '<|im_start|>' + role }}{%- if name -%}{{ ' name=' + name }}{%- endif -%}{{ '\\n' }}"
    "{%- if m['content'] is string -%}{{ m['content'] }}"
    "{%- elif m['content'] is iterable and m['content'] is not none -%}"
    "{%- for p in m['content'] -%}{%- if p['type'] == 'text' -%}{{ p['text'] }}{%- endif -%}{%- endfor -%}"
    "{%- endif -%}"
    "{%- if role == 'assistant' -%}"
    "{%- for call in m.get('tool_calls') or [] -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{%- set args = fn['arguments'] if fn['arguments'] is defined else fn.get('parameters', {}) -%}"
    "{{ '<|action_start|><|plugin|>\\n{\"name\": ' + (fn['name'] | tojson) + ', \"parameters\": ' }}"
    "{%- if args is string -%}{{ args }}{%- else -%}{{ args | tojson }}{%- endif -%}"
    "{{ '}<|action_end|>' }}"
    "{%- endfor -%}"
    "{%- if m.get('code') is not none -%}"
    "{{ '<|action_start|><|interpreter|>\\n```python\\n' + m['code'] + '\\n```<|action_end|>' }}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def chat_template() -> str:
    """CHAT_TEMPLATE with the default interpreter description inlined (Hugging Face has no extra vars)."""
    return CHAT_TEMPLATE.replace("{{ default_interpreter_prompt }}", "{{ " + json.dumps(DEFAULT_INTERPRETER_PROMPT) + " }}")


# ---- encoding to token ids ------------------------------------------------------------------------
def encode_chat(tokenizer, messages: list[dict], tools: list[dict] | None, interpreter=None,
                forced: str = "") -> list[int]:
    """Render `messages` and encode them with contents as plain text and template markers as specials.

    Each content is swapped for a per-call random sentinel before rendering; the rendered text is then
    split on the sentinels, and template pieces and contents are encoded separately."""
    nonce = secrets.token_hex(4)
    contents = [m.get("content") or "" for m in messages]
    masked = [{**m, "content": f"\ue000{nonce}:{i}\ue001"} for i, m in enumerate(messages)]
    rendered = render_chat(masked, tools=tools, interpreter=interpreter) + forced
    ids: list[int] = []
    pos = 0
    for match in re.finditer(f"\ue000{nonce}:(\\d+)\ue001", rendered):
        ids += tokenizer.encode(rendered[pos:match.start()], allow_special=True)
        ids += tokenizer.encode(contents[int(match.group(1))])
        pos = match.end()
    ids += tokenizer.encode(rendered[pos:], allow_special=True)
    return ids


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
            raise ChatFormatError(f"message {i}: chat rendering is not incremental; cannot mask it")
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
            raise ChatFormatError(f"message {i}: assistant turn does not end with {IM_END}")
        header, body, tail = piece[:header_end], piece[header_end:-1], piece[-1:]
        for text, m in ((header, 0), (body, 1), (tail, 0)):
            part = tok.encode(text, allow_special=True)
            ids += part
            mask += [m] * len(part)
    return ids, mask
