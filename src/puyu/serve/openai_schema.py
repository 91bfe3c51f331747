"""Pydantic models of the OpenAI-compatible API that `puyu serve` speaks, and its error shape.

Requests are validated strictly (`strict=True, extra="forbid"`): a field of the wrong type, an out-of-range
value or an argument the server does not know is a 400 whose body names the field, as the OpenAI API does:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}

OpenAI fields that puyu accepts but does not implement are accepted only at their neutral value
(`presence_penalty: 0`, `logit_bias: {}`, `n: 1`, ...); anything else is rejected with a message saying so,
never silently ignored. puyu extensions: `top_k`, `repetition_penalty`, `ignore_eos` (generate exactly
`max_tokens`, for benchmarks; in a chat completion the text after a generated end marker such as
`<|im_end|>` is not part of the message, so a stream sends nothing more until the finish chunk, whose
usage counts every token), `session_id` and `interpreter` (the server-side code interpreter).

Responses are built from the models below and dumped with `exclude_none=True`, which is how OpenAI's
own streaming deltas look (absent, not null, fields).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

MAX_STOP = 4  # OpenAI: "Up to 4 sequences"
MAX_TOOLS = 128  # OpenAI's limit on the number of functions in one request
SESSION_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
IMAGE_PARTS = ("image_url", "input_image")  # OpenAI's image content parts (chat; Responses API)


# ---- errors ---------------------------------------------------------------------------------------
class APIError(Exception):
    """An error answered to the client as `{"error": {...}}` with HTTP `status` (always 4xx for requests
    the client can fix; 503 only when the engine itself failed)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """The OpenAI error shape."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def validation_message(errors: list[dict], body_model: type[BaseModel] | None = None) -> tuple[str, str | None]:
    """(message, param) for pydantic/FastAPI validation errors: the first error, its location dotted
    ("messages.0.role"), with OpenAI's wording for unknown arguments and malformed JSON. Missing fields are
    all named ("missing required fields 'tools.0.type', 'tools.0.function'"); an empty body (FastAPI: the
    body itself missing) names the required fields of `body_model`, the endpoint's request model."""
    if not errors:
        return "invalid request", None
    # Text that is not Unicode is named first: inside a union (content: str | parts) the other member's
    # mismatch would otherwise hide it.
    e = next((x for x in errors if x.get("type") == "string_unicode" or "lone UTF-16 surrogate" in x.get("msg", "")),
             errors[0])
    param = _param(e)
    kind = e.get("type", "")
    if kind == "json_invalid":
        detail = e.get("ctx", {}).get("error", "")
        return f"the request body is not valid JSON ({detail})" if detail else "the request body is not valid JSON", None
    if kind == "missing" and param:
        missing = list(dict.fromkeys(p for x in errors if x.get("type") == "missing" and (p := _param(x))))
        return f"missing required {_fields(missing)}", param
    if kind == "missing" and body_model is not None:
        required = [name for name, f in body_model.model_fields.items() if f.is_required()]
        return f"the request body is empty; send a JSON object with the required {_fields(required)}", \
            (required or [None])[0]
    if kind == "extra_forbidden":
        return f"unrecognized request argument supplied: {param}", param
    msg = e.get("msg", "invalid value")
    if kind == "string_unicode":  # pydantic's own check of some str fields: lone surrogates, as ours says
        msg = unencodable(e.get("input")) or msg
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if param is None:
        return f"invalid request body: {msg}{more}", None
    got = e.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f", got {got!r}"[:120]
    return f"invalid value for '{param}': {msg}{shown}{more}", param


def _param(error: dict) -> str | None:
    """A validation error's field, dotted ("messages.0.role"), without FastAPI's "body" prefix and the
    union members' type tags pydantic adds to the location ("stop.str"); None for the body itself."""
    loc = [str(p) for p in error.get("loc", ())]
    loc = loc[1:] if loc and loc[0] in ("body", "path", "query", "header") else loc
    return ".".join(p for p in loc if not _is_type_tag(p)) or None


def _fields(names: list[str]) -> str:
    """"field 'a'" or "fields 'a', 'b'"."""
    return f"field{'s' if len(names) > 1 else ''} " + ", ".join(f"'{n}'" for n in names)


def _is_type_tag(part: str) -> bool:
    """pydantic adds the union member's type to an error's location ("stop", "list[str]"): not a field."""
    return part in _TYPE_TAGS or "[" in part or part in _MODEL_NAMES


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}
_MODEL_NAMES: set[str] = set()  # filled at the end of the module


# ---- requests -------------------------------------------------------------------------------------
def unencodable(v) -> str | None:
    """A description of the first text in `v` (a string, or nested in lists and dict keys/values) that
    is not valid Unicode (a lone UTF-16 surrogate such as "\\ud800", valid JSON but not text), or None.
    Such text cannot be encoded by the tokenizer: requests carrying it are refused (400, the field named)."""
    if isinstance(v, str):
        m = _SURROGATE_RE.search(v)
        return None if m is None else (f"contains a lone UTF-16 surrogate (U+{ord(m.group()):04X} at character "
                                       f"{m.start()}), which is not valid Unicode text")
    if isinstance(v, (list, tuple)):
        return next((e for e in map(unencodable, v) if e), None)
    if isinstance(v, dict):
        return next((e for e in map(unencodable, [*v.keys(), *v.values()]) if e), None)
    return None


_SURROGATE_RE = re.compile("[\ud800-\udfff]")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, v):
        problem = unencodable(v)
        if problem:
            raise ValueError(problem)
        return v


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str = Field(min_length=1, max_length=64)
    arguments: str = "{}"  # JSON text, as OpenAI sends it


class ToolCall(_Strict):
    id: str = Field(max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    """One message. `developer` is OpenAI's newer name for `system`; `environment` is InternLM2's own
    role for tool and interpreter results (`tool` maps onto it)."""

    role: Literal["system", "developer", "user", "assistant", "tool", "environment"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=64)
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = Field(default=None, max_length=128)
    refusal: str | None = None
    code: str | None = None  # puyu: the interpreter code an assistant turn ran (rendered as its action)

    @model_validator(mode="after")
    def _check(self) -> ChatMessage:
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a '{self.role}' message needs 'content'")
        if (self.tool_calls or self.code is not None) and self.role != "assistant":
            raise ValueError("only 'assistant' messages may carry 'tool_calls' or 'code'")
        return self

    @field_validator("content", mode="before")
    @classmethod
    def _no_images(cls, v):
        # Before the union is tried: an image part would otherwise fail every member ("Input should be a
        # valid string (and 3 more problems)") instead of saying what is not supported.
        if isinstance(v, list) and any(isinstance(p, dict) and p.get("type") in IMAGE_PARTS for p in v):
            raise ValueError("images are not supported: puyu's models read text only; send only "
                             "{'type': 'text'} parts")
        return v

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class FunctionDef(_Strict):
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str = Field(pattern=TOOL_NAME_PATTERN)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Strict):
    include_usage: bool = False


class ResponseFormat(_Strict):
    type: Literal["text"]


class _GenerationRequest(_Strict):
    """Fields shared by chat and text completions."""

    model: str | None = Field(default=None, max_length=256)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=1_000_000)  # puyu extension (0 = off)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)  # puyu extension
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False  # puyu extension (as in vLLM): do not stop at end tokens; for benchmarks

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return v

    @field_validator("n")
    @classmethod
    def _check_n(cls, v):
        if v != 1:
            raise ValueError("puyu returns one choice per request; n must be 1")  # validation_message adds ", got N"
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _check_penalty(cls, v):
        if v:
            raise ValueError("is not supported by puyu (only 0); use 'repetition_penalty' instead")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _check_bias(cls, v):
        if v:
            raise ValueError("is not supported by puyu (only an empty map)")
        return v

    @model_validator(mode="after")
    def _check_stream_options(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' is only allowed when 'stream' is true")
        return self

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    session_id: str | None = Field(default=None, pattern=SESSION_PATTERN)  # puyu: interpreter session
    interpreter: bool | None = None  # puyu: run the server-side interpreter loop (needs --interpreter)

    @field_validator("logprobs")
    @classmethod
    def _check_logprobs(cls, v):
        if v:
            raise ValueError("is not supported by puyu's chat endpoint (only false)")
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _check_top_logprobs(cls, v):
        if v:
            raise ValueError("is not supported by puyu (only 0)")
        return v

    @model_validator(mode="after")
    def _check_tools(self) -> ChatCompletionRequest:
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tool names must be unique")
        choice = self.tool_choice
        if choice in ("required",) and not names:
            raise ValueError("tool_choice 'required' needs at least one tool in 'tools'")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names function '{choice.function.name}', which is not in 'tools'")
        if self.max_tokens is not None and self.max_completion_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            raise ValueError("'max_tokens' and 'max_completion_tokens' disagree; send one of them")
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_GenerationRequest):
    # OpenAI's forms: a string, a list of strings, a list of token ids, a list of token-id lists (one
    # prompt each time here). Token ids are taken as they are (no <s> added), as vLLM does.
    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]] = Field(...)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], int):
            return v  # one prompt given as token ids
        if isinstance(v, list) and len(v) != 1:
            raise ValueError(f"puyu takes one prompt per request, got a list of {len(v)}")
        if isinstance(v, list) and isinstance(v[0], list) and not v[0]:
            raise ValueError("the token-id prompt is empty")
        return v

    @field_validator("suffix")
    @classmethod
    def _check_suffix(cls, v):
        if v:
            raise ValueError("is not supported by puyu (no fill-in-the-middle)")
        return v

    @field_validator("best_of")
    @classmethod
    def _check_best_of(cls, v):
        if v not in (None, 1):
            raise ValueError("is not supported by puyu (only 1)")
        return v

    @field_validator("logprobs")
    @classmethod
    def _check_logprobs(cls, v):
        if v:
            raise ValueError("is not supported by puyu (only null or 0)")
        return v

    def prompt_text(self) -> str | None:
        """The prompt as text (None when it was given as token ids)."""
        p = self.prompt[0] if isinstance(self.prompt, list) else self.prompt
        return p if isinstance(p, str) else None

    def prompt_ids(self) -> list[int] | None:
        """The prompt as token ids (None when it was given as text)."""
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], int):
            return list(self.prompt)
        if isinstance(self.prompt, list) and isinstance(self.prompt[0], list):
            return list(self.prompt[0])
        return None

    def token_limit(self) -> int | None:
        return self.max_tokens


# ---- responses ------------------------------------------------------------------------------------
def new_id(prefix: str, sep: str = "-") -> str:
    """OpenAI-looking ids: chatcmpl-..., cmpl-..., call_..."""
    return f"{prefix}{sep}{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def dump(self) -> dict:
        return self.model_dump(exclude_none=True)


class Usage(_Out):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(_Out):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "puyu"
    max_model_len: int | None = None


class ModelList(_Out):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class InterpreterStep(_Out):
    """puyu extension: one run of the server-side interpreter (code, its output, images as data URLs)."""

    code: str
    output: str = ""
    error: str | None = None
    images: list[str] = Field(default_factory=list)


class OutToolCall(_Out):
    index: int | None = None  # only in stream deltas
    id: str | None = None
    type: Literal["function"] | None = None
    function: dict[str, str] | None = None


class AssistantMessage(_Out):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[OutToolCall] | None = None
    interpreter: list[InterpreterStep] | None = None  # puyu extension


class ChatChoice(_Out):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletion(_Out):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(_Out):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[OutToolCall] | None = None
    interpreter: list[InterpreterStep] | None = None  # puyu extension


class ChunkChoice(_Out):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None


class ChatCompletionChunk(_Out):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None

    def dump(self) -> dict:
        d = super().dump()
        for c, out in zip(self.choices, d["choices"]):
            out["finish_reason"] = c.finish_reason  # OpenAI sends an explicit null until the last chunk
        return d


class CompletionChoice(_Out):
    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class Completion(_Out):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Health(_Out):
    status: Literal["ok"] = "ok"
    model: str
    running: int
    waiting: int
    cache_blocks_used: int
    cache_blocks_total: int
    cache_blocks_kept: int = 0  # blocks of finished prompts kept for prefix reuse (free capacity)
    prefix_hit_tokens: int = 0  # prompt tokens taken from the cache instead of prefilled, since start
    decode_path: str = ""  # fused-avx512 / fused-avx2 / fused-portable (native kernel), torch-step or model
    context_length: int
    interpreter: bool  # whether chat requests may use the server-side interpreter


class UploadResult(_Out):
    session_id: str
    filename: str
    bytes: int


_MODEL_NAMES.update(name for name, obj in list(globals().items())
                    if isinstance(obj, type) and issubclass(obj, BaseModel))
