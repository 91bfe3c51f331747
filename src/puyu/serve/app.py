"""`puyu serve`: an OpenAI-compatible HTTP server and an offline web chat over the continuous-batching engine.

    puyu serve --model PATH [--host 127.0.0.1 --port 23333 --api-key KEY --interpreter]

Endpoints (all JSON; errors in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`):
    GET  /health                          engine load: running, waiting, cache blocks used/total
    GET  /v1/models, /v1/models/{id}      the one served model
    POST /v1/chat/completions             messages, tools, tool_choice, stream (SSE, `data: [DONE]`),
                                          stream_options.include_usage; puyu extras: top_k,
                                          repetition_penalty, ignore_eos, session_id, interpreter
    POST /v1/completions                  raw text continuation (one prompt), stream or not; the prompt is
                                          the client's whole text, so chat markers in it are read as the
                                          special tokens (as vLLM and LMDeploy read them) and a leading
                                          <s> is not doubled: a prompt from render_chat is encode_chat;
                                          or token ids (`[1, 92543, ...]`), used as they are
    POST /v1/sessions/{id}/files          multipart upload into the session directory (web chat data files)
    GET  /v1/sessions/{id}/files          the session's files
    GET  /                                the web chat (static files from puyu/web, no CDN)

Limits, each a 4xx with a message naming the problem, never a 500:
    400 malformed JSON, a body that is not UTF-8 or empty (the required fields named), wrong types,
        unknown arguments, out-of-range values, image content parts ("images are not supported": text-only
        models), a prompt that does not fit the context (code "context_length_exceeded"), max_tokens
        above --max-tokens, text that is not Unicode (a lone UTF-16 surrogate such as "\\ud800", valid
        JSON) in any field, the field named
    401 missing or wrong Bearer key when --api-key is set (every /v1/ path; / and /health stay open)
    404 unknown model or path;  405 wrong method
    413 body over --max-body-bytes (uploads: --max-upload-bytes)
    429 more than --max-queue requests admitted at once (running + waiting in the engine)
A client that disconnects, streaming or not, cancels its engine request, which frees its cache blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from puyu.engine.generate import add_weights_arguments, check_memory
from puyu.engine.sampling import context_length
from puyu.errors import PuyuError
from puyu.model.chat_format import BOS
from puyu.serve.chat import EngineStream, Event, chat_events, chat_prompt, completion_events
from puyu.serve.openai_schema import (
    APIError,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    OutToolCall,
    Usage,
    error_body,
    new_id,
    validation_message,
)
from puyu.serve.sessions import Sessions, interpreter_events

log = logging.getLogger("puyu.serve.app")
WEB_DIR = Path(__file__).resolve().parent / "web"
MiB = 1 << 20


@dataclass
class Limits:
    """Server-wide limits (see the module docstring for the status codes)."""

    max_body_bytes: int = 4 * MiB
    max_upload_bytes: int = 32 * MiB
    max_tokens: int = 4096  # the most a request may ask for
    default_max_tokens: int = 1024  # when the request names none (capped by the room left in the context)
    max_queue: int = 256  # requests admitted at once, running + waiting
    context_length: int | None = None  # default: the model's max_position_embeddings


class _State:
    """What the routes share: engine, tokenizer, limits, and `active`, the number of admitted requests
    (changed only on the event loop thread)."""

    def __init__(self, engine, tokenizer, model_name: str, limits: Limits, api_key: str | None,
                 sessions: Sessions, interpreter: bool):
        self.engine, self.tokenizer, self.model_name = engine, tokenizer, model_name
        self.limits, self.api_key, self.sessions, self.interpreter = limits, api_key, sessions, interpreter
        self.context = context_length(getattr(getattr(engine, "model", None), "config", None), limits.context_length)
        self.active = 0

    def admit(self) -> _Ticket:
        if self.active >= self.limits.max_queue:
            raise APIError(429, f"the server is busy: {self.active} requests are queued or running "
                                f"(limit {self.limits.max_queue}); retry later",
                           type="rate_limit_error", code="queue_full")
        self.active += 1
        return _Ticket(self)

    def sampling(self, req, prompt_len: int, stop_token_ids: list[int]):
        """SamplingParams for a request whose prompt has `prompt_len` tokens, or a 400 if it cannot fit."""
        from puyu.engine.sampling import ContextLengthError, SamplingParams, check_context

        room = self.context - prompt_len
        want = req.token_limit()
        try:
            check_context(self.context, prompt_len, want, fix="shorten the messages or lower max_tokens")
        except ContextLengthError as e:
            raise APIError(400, str(e), param="messages" if hasattr(req, "messages") else "prompt",
                           code="context_length_exceeded") from None
        if want is not None and want > self.limits.max_tokens:
            raise APIError(400, f"max_tokens is {want}; this server allows at most {self.limits.max_tokens}",
                           param="max_tokens", code="max_tokens_too_large")
        limit = want if want is not None else min(self.limits.default_max_tokens, room)
        return SamplingParams(
            max_new_tokens=limit,
            temperature=1.0 if req.temperature is None else req.temperature,  # OpenAI's defaults
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=req.top_k or 0,
            repetition_penalty=req.repetition_penalty or 1.0,
            seed=req.seed, stop=req.stop_list(), ignore_eos=req.ignore_eos,
            stop_token_ids=[] if req.ignore_eos else list(stop_token_ids))

    def submit(self, ids: list[int], params, ticket: _Ticket) -> EngineStream:
        """Submit to the engine (after `admit`); a request it refuses leaves the queue and is a 4xx/503."""
        from puyu.engine.kv_cache import CacheFullError

        try:
            return EngineStream(self.engine, ids, params, ticket.handles)
        except CacheFullError as e:
            ticket.close()
            raise APIError(400, str(e), param="max_tokens", code="context_length_exceeded") from None
        except PuyuError as e:
            ticket.close()
            raise APIError(503, f"the engine cannot take requests: {e}", type="server_error",
                           code="engine_unavailable") from None

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{self.model_name}'",
                           param="model", code="model_not_found")


# ---- body size and API key (plain ASGI, before FastAPI reads anything) --------------------------------
class _Guard:
    """Rejects unauthenticated /v1/ requests (401) and bodies over the limit (413, from Content-Length
    or while reading a chunked body); the body read here is replayed to the app."""

    def __init__(self, app, state: _State):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        key = self.state.api_key
        if key and path.startswith("/v1/"):
            auth = headers.get("authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not token or not hmac.compare_digest(token.encode(), key.encode()):
                msg = "incorrect API key provided" if token else \
                    "missing API key: send 'Authorization: Bearer <key>'"
                return await _send_json(send, 401, error_body(msg, code="invalid_api_key"))
        limit = self.state.limits.max_upload_bytes if path.endswith("/files") else self.state.limits.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _send_json(send, 400, error_body(f"invalid Content-Length header {declared!r}"))
            if int(declared) > limit:
                return await _send_json(send, 413, _too_large(int(declared), limit))
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                return await _send_json(send, 413, _too_large(size, limit, at_least=True))
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive():
            return replay.pop() if replay else await receive()

        return await self.app(scope, replay_receive, send)


def _too_large(size: int, limit: int, at_least: bool = False) -> dict:
    return error_body(f"the request body is {'more than ' if at_least else ''}{size if not at_least else limit} "
                      f"bytes; this server accepts at most {limit} bytes", code="request_too_large")


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


# ---- the app ----------------------------------------------------------------------------------------
def create_app(engine, tokenizer, model_name: str, *, api_key: str | None = None, limits: Limits | None = None,
               interpreter: bool = False, session_dir: str | Path | None = None,
               interpreter_timeout: float = 30.0):
    """The FastAPI app over a running `Engine` (not closed here: the caller owns it).

    `interpreter=True` lets chat requests run the server-side code-interpreter loop (one sandboxed
    interpreter per `session_id`); uploads always go to `session_dir/<session_id>/`."""
    limits = limits or Limits()
    sessions = Sessions(session_dir, interpreter_timeout=interpreter_timeout)
    state = _State(engine, tokenizer, model_name, limits, api_key, sessions, interpreter)

    @asynccontextmanager
    async def lifespan(app):
        yield
        sessions.close()

    app = FastAPI(title="puyu", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible InternLM2 server (puyu). Errors use OpenAI's error shape.")
    app.state.puyu = state
    errors = {s: {"model": ErrorResponse} for s in (400, 401, 404, 413, 429)}
    # each JSON route's request model: an empty body is answered with its required fields
    bodies = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest}

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        errors = list(exc.errors())
        ctype = request.headers.get("content-type", "")
        if request.method == "POST" and errors and tuple(errors[0].get("loc", ())) == ("body",) \
                and "json" not in ctype and "multipart" not in ctype:
            return JSONResponse(error_body(f"the request body must be JSON sent with 'Content-Type: "
                                           f"application/json' (got {ctype or 'no Content-Type'})"), status_code=400)
        message, param = validation_message(errors, bodies.get(request.url.path))
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 400 and isinstance(bad := exc.__cause__, UnicodeDecodeError):
            # FastAPI's json.loads of the body failed to decode it; its own message is only "There was an
            # error parsing the body"
            message = (f"the request body is not valid UTF-8 JSON: byte {bad.object[bad.start]:#04x} at offset "
                       f"{bad.start} cannot be decoded ({bad.reason})")
        return JSONResponse(error_body(message, code=code), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(APIError)
    async def _api(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(PuyuError)
    async def _puyu(request, exc: PuyuError):
        return JSONResponse(error_body(str(exc)), status_code=400)

    @app.exception_handler(Exception)
    async def _bug(request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(f"internal server error: {type(exc).__name__}", type="server_error"),
                            status_code=500)

    @app.get("/health", response_model=Health)
    async def health():
        s = engine.stats()
        return Health(model=model_name, running=s.get("running", 0), waiting=s.get("waiting", 0),
                      cache_blocks_used=s.get("cache_blocks_used", 0),
                      cache_blocks_total=s.get("cache_blocks_total", 0),
                      cache_blocks_kept=s.get("cache_blocks_kept", 0), prefix_hit_tokens=s.get("prefix_hit_tokens", 0),
                      decode_path=s.get("decode_path", ""), context_length=state.context,
                      interpreter=state.interpreter).dump()

    @app.get("/v1/models", response_model=ModelList, responses=errors)
    async def models():
        return ModelList(data=[ModelCard(id=model_name, max_model_len=state.context)]).dump()

    @app.get("/v1/models/{model_id}", response_model=ModelCard, responses=errors)
    async def model(model_id: str):
        state.check_model(model_id)
        return ModelCard(id=model_name, max_model_len=state.context).dump()

    @app.post("/v1/chat/completions", response_model=ChatCompletion, response_model_exclude_none=True,
              responses=errors)
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        state.check_model(req.model)
        use_interpreter = state.interpreter if req.interpreter is None else req.interpreter
        if use_interpreter and not state.interpreter:
            raise APIError(400, "this server runs without the code interpreter (start it with --interpreter)",
                           param="interpreter")
        if use_interpreter and req.tools:
            raise APIError(400, "client-side 'tools' and the server-side interpreter cannot be combined in "
                                "one request; send one of them", param="tools")
        prompt = chat_prompt(tokenizer, req, interpreter=True if use_interpreter else None)
        params = state.sampling(req, len(prompt.ids), prompt.stop_token_ids)
        ticket = state.admit()
        if use_interpreter:
            events = interpreter_events(engine, tokenizer, sessions, req, prompt, params, state.context,
                                        ticket.handles)
        else:
            events = chat_events(state.submit(prompt.ids, params, ticket), prompt)
        cid = new_id("chatcmpl")
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(_chat_chunks(cid, model_name, events, include_usage), events, ticket)
        result = await _collect(request, events, ticket)
        if result is None:
            return Response(status_code=499)
        return _chat_response(cid, model_name, result).dump()

    @app.post("/v1/completions", response_model=Completion, response_model_exclude_none=True, responses=errors)
    async def completions(req: CompletionRequest, request: Request):
        state.check_model(req.model)
        text, ids = req.prompt_text(), req.prompt_ids()
        if ids is not None:  # token ids (e.g. a chat the client encoded itself): used as they are
            bad = [t for t in ids if not 0 <= t < tokenizer.vocab_size]
            if bad:
                raise APIError(400, f"token id {bad[0]} is outside the vocabulary (0..{tokenizer.vocab_size - 1})",
                               param="prompt")
            text = tokenizer.decode(ids)
        else:
            # A raw prompt is wholly the client's: markers it writes are meant as markers (no turn of another
            # party is spliced in here, unlike chat messages), so they become special ids.
            ids = tokenizer.encode(text, add_bos=not text.startswith(BOS), allow_special=True)
        params = state.sampling(req, len(ids), tokenizer.stop_ids)
        ticket = state.admit()
        events = completion_events(state.submit(ids, params, ticket), echo=text if req.echo else "")
        cid = new_id("cmpl")
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(_completion_chunks(cid, model_name, events, include_usage), events, ticket)
        result = await _collect(request, events, ticket)
        if result is None:
            return Response(status_code=499)
        return Completion(id=cid, model=model_name, usage=result["usage"], choices=[CompletionChoice(
            text="".join(result["text"]), finish_reason=result["finish_reason"])]).dump()

    sessions.add_routes(app, errors)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.add_middleware(_Guard, state=state)
    return app


class _Ticket:
    """One admitted request: its engine handles, and its place in the queue until `close()`."""

    def __init__(self, state: _State):
        self.state, self.handles, self.open = state, [], True

    def close(self) -> None:
        """Cancel the request's unfinished engine requests (frees their cache at once) and leave the
        queue. Synchronous and idempotent, so it is safe inside a cancelled task and may run twice."""
        for h in self.handles:
            if not h.done:
                h.cancel()
        if self.open:
            self.open = False
            self.state.active -= 1


def _sse(chunks: AsyncIterator[str], events, ticket: _Ticket):
    """A text/event-stream response; when it ends for any reason (done, error, client gone) the ticket
    is closed, then the generators. The background task closes it too, for a client that left before
    the body generator ever started (whose `finally` then never runs)."""
    from starlette.background import BackgroundTask

    async def body():
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            ticket.close()
            await chunks.aclose()
            await events.aclose()

    return StreamingResponse(body(), media_type="text/event-stream", background=BackgroundTask(ticket.close),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _data(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _chat_chunks(cid: str, model: str, events: AsyncIterator[Event], include_usage: bool):
    def chunk(delta: Delta, finish: str | None = None) -> str:
        return _data(ChatCompletionChunk(id=cid, model=model, choices=[
            ChunkChoice(delta=delta, finish_reason=finish)]).dump())

    yield chunk(Delta(role="assistant", content=""))
    n_calls = 0
    try:
        async for ev in events:
            if ev.kind == "text":
                yield chunk(Delta(content=ev.text))
            elif ev.kind == "tool_call":
                head = OutToolCall(index=n_calls, id=new_id("call", "_"), type="function",
                                   function={"name": ev.name, "arguments": ""})
                yield chunk(Delta(tool_calls=[head]))
                yield chunk(Delta(tool_calls=[OutToolCall(index=n_calls, function={"arguments": ev.arguments})]))
                n_calls += 1
            elif ev.kind == "step":
                yield chunk(Delta(interpreter=[ev.step]))
            elif ev.kind == "finish":
                yield chunk(Delta(), ev.finish_reason)
                if include_usage:
                    yield _data(ChatCompletionChunk(id=cid, model=model, choices=[], usage=_usage(ev)).dump())
    except APIError as e:
        yield _data(e.body())
    yield "data: [DONE]\n\n"


async def _completion_chunks(cid: str, model: str, events: AsyncIterator[Event], include_usage: bool):
    try:
        async for ev in events:
            if ev.kind == "text":
                yield _data(Completion(id=cid, model=model, choices=[CompletionChoice(text=ev.text)]).dump())
            elif ev.kind == "finish":
                yield _data(Completion(id=cid, model=model, choices=[CompletionChoice(
                    text="", finish_reason=ev.finish_reason)]).dump())
                if include_usage:
                    yield _data(Completion(id=cid, model=model, choices=[], usage=_usage(ev)).dump())
    except APIError as e:
        yield _data(e.body())
    yield "data: [DONE]\n\n"


def _usage(ev: Event) -> Usage:
    return Usage(prompt_tokens=ev.prompt_tokens, completion_tokens=ev.completion_tokens,
                 total_tokens=ev.prompt_tokens + ev.completion_tokens)


async def _collect(request, events: AsyncIterator[Event], ticket: _Ticket) -> dict | None:
    """Run a non-streaming request to the end; None if the client disconnected first (the engine request
    is then cancelled and its cache freed)."""

    async def consume() -> dict:
        out: dict = {"text": [], "tool_calls": [], "steps": [], "finish_reason": "stop", "usage": None}
        async for ev in events:
            if ev.kind == "text":
                out["text"].append(ev.text)
            elif ev.kind == "tool_call":
                out["tool_calls"].append(OutToolCall(id=new_id("call", "_"), type="function",
                                                     function={"name": ev.name, "arguments": ev.arguments}))
            elif ev.kind == "step":
                out["steps"].append(ev.step)
            elif ev.kind == "finish":
                out["finish_reason"], out["usage"] = ev.finish_reason, _usage(ev)
        return out

    task = asyncio.ensure_future(consume())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.2)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return None
    finally:
        ticket.close()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await events.aclose()


def _chat_response(cid: str, model: str, result: dict) -> ChatCompletion:
    text = "".join(result["text"])
    message = AssistantMessage(content=text or (None if result["tool_calls"] else ""),
                               tool_calls=result["tool_calls"] or None, interpreter=result["steps"] or None)
    return ChatCompletion(id=cid, model=model, usage=result["usage"],
                          choices=[ChatChoice(message=message, finish_reason=result["finish_reason"])])


# ---- CLI ----------------------------------------------------------------------------------------------
def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0-65535)")
    return port


def add_arguments(p: argparse.ArgumentParser) -> None:
    from puyu.model.checkpoint import parse_size

    p.add_argument("--model", required=True, help="checkpoint directory (or a preset name, random weights)")
    p.add_argument("--tokenizer", help="tokenizer directory or .model file (default: the model directory)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=_port, default=23333, help="TCP port, 0-65535 (0: any free port)")
    p.add_argument("--api-key", default=os.environ.get("PUYU_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/ (default: $PUYU_API_KEY, else none)")
    p.add_argument("--served-model-name", help="model id reported by /v1/models (default: directory name)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: float32 on CPU, bf16 on GPU)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    add_weights_arguments(p)
    p.add_argument("--max-batch-size", type=int, default=32, help="sequences decoded together")
    p.add_argument("--cache-tokens", type=int, help="KV-cache capacity in tokens (default: the engine's)")
    p.add_argument("--no-prefix-cache", action="store_true",
                   help="prefill every prompt in full (default: reuse cached blocks of earlier prompts and answers)")
    p.add_argument("--context-length", type=int, help="longest prompt + completion (default: the model's)")
    p.add_argument("--max-tokens", type=int, default=Limits.max_tokens, help="largest max_tokens allowed")
    p.add_argument("--max-queue", type=int, default=Limits.max_queue,
                   help="requests admitted at once (running + waiting); more get 429")
    p.add_argument("--max-body-bytes", type=parse_size, default=Limits.max_body_bytes, help="e.g. 4MiB")
    p.add_argument("--max-upload-bytes", type=parse_size, default=Limits.max_upload_bytes, help="e.g. 32MiB")
    p.add_argument("--interpreter", action="store_true",
                   help="run the code interpreter server-side (sandboxed, one per chat session)")
    p.add_argument("--session-dir", help="where uploads and interpreter work files go (default: a temp dir)")
    p.add_argument("--interpreter-timeout", type=float, default=30.0, help="seconds per code run")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from puyu.engine.scheduler import Engine
    from puyu.model.checkpoint import load_model
    from puyu.model.tokenizer import load_tokenizer

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    check_memory(args)
    model = load_model(args.model, dtype=args.dtype, device=args.device, weights=args.weights, group=args.group)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise PuyuError(f"the tokenizer has {tokenizer.vocab_size} pieces but the model only "
                        f"{model.config.vocab_size} embeddings; pass the matching --tokenizer")
    name = args.served_model_name or Path(str(args.model).rstrip("/")).name
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        log.warning("listening on %s without --api-key: anyone who can reach it can use the model", args.host)
    engine_kwargs = {"max_batch_size": args.max_batch_size, "prefix_cache": not args.no_prefix_cache, "kv": args.kv}
    if args.cache_tokens or args.context:
        engine_kwargs["cache_tokens"] = args.cache_tokens or args.context
    engine = Engine(model, tokenizer, **engine_kwargs)
    limits = Limits(max_body_bytes=args.max_body_bytes, max_upload_bytes=args.max_upload_bytes,
                    max_tokens=args.max_tokens, max_queue=args.max_queue, context_length=args.context_length)
    app = create_app(engine, tokenizer, name, api_key=args.api_key, limits=limits, interpreter=args.interpreter,
                     session_dir=args.session_dir, interpreter_timeout=args.interpreter_timeout)
    print(f"puyu serving {name} at http://{args.host}:{args.port}/ (OpenAI API under /v1)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    finally:
        engine.close()
    return 0
