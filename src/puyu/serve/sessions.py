"""Chat sessions of `puyu serve`: a directory per session for uploaded data files, and (with
`--interpreter`) one sandboxed code interpreter per session, driven by the agent loop.

    POST /v1/sessions/{session_id}/files   multipart field `file` -> saved as <root>/<session_id>/<name>
    GET  /v1/sessions/{session_id}/files   [{"name", "bytes"}]

Contracts:
- Session ids match `[A-Za-z0-9_-]{1,64}`; file names are reduced to a safe base name (letters, digits,
  `._-`, no leading dot, at most 128 characters), so an upload cannot leave its session directory.
- At most `max_files` files per session; the body size is limited by the server's `--max-upload-bytes`.
- Interpreters start on first use and are kept for the `max_interpreters` most recently used sessions;
  older ones are closed (their kernel stops, their files stay). `close()` stops them all.
- `interpreter_events` runs `puyu.agent.loop.Agent` (model turn -> code -> environment turn -> ...) with an
  engine-backed policy in a worker thread, and turns its events into the server's `Event`s: text as it
  streams, one "step" per code run ({code, output, error, images as data URLs}), then "finish". A request
  without a session id gets a throw-away interpreter. If the client goes away the policy raises at its
  next token, so the agent stops before running any further code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import shutil
import stat
import tempfile
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from fastapi import File, UploadFile
from fastapi import Path as PathParam

from puyu.model.chat_format import encode_chat
from puyu.serve.chat import Event, Prompt, chat_messages, finish_reason
from puyu.serve.openai_schema import SESSION_PATTERN, APIError, ChatCompletionRequest, UploadResult

MAX_IMAGE_BYTES = 4 << 20  # larger figures are left out of the response (they stay in the session dir)

_UNSAFE = re.compile(r"[^\w.-]+")  # \w is Unicode-aware: 数据.csv keeps its name


def safe_filename(name: str | None) -> str:
    """A base name that is safe to join to a session directory; a 400 if nothing usable remains.

    Letters and digits of any script, '.', '_' and '-' are kept; any other run becomes '_'. When
    something was replaced, 8 hex digits of the original name's SHA-256 are added before the extension,
    so two different names never land on one file (`a b.csv` -> `a_b-0c591648.csv`), while uploading
    the same name again still replaces that file."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    clean = _UNSAFE.sub("_", base).lstrip(".")
    if not clean or clean.strip("_.") == "":
        raise APIError(400, f"the file name {name!r} has no usable characters; use letters, digits, '.', '_' "
                            f"or '-'", param="file")
    if clean != base:
        tag = hashlib.sha256(base.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        stem, dot, ext = clean.rpartition(".")
        clean = f"{stem}-{tag}.{ext}" if dot and stem else f"{clean}-{tag}"
    if len(clean) > 128:
        stem, dot, ext = clean.rpartition(".")
        clean = (stem[: 127 - len(ext)] + "." + ext) if dot and len(ext) < 16 else clean[-128:]
    return clean


class Sessions:
    """Session directories under `root` (a temporary directory, removed on close, when None)."""

    def __init__(self, root: str | Path | None = None, interpreter_timeout: float = 30.0,
                 max_interpreters: int = 8, max_files: int = 64):
        self._owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="puyu-sessions-") if root is None else root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.interpreter_timeout = interpreter_timeout
        self.max_interpreters, self.max_files = max_interpreters, max_files
        self._interpreters: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def directory(self, session_id: str) -> Path:
        if not re.fullmatch(SESSION_PATTERN, session_id or ""):
            raise APIError(400, f"invalid session id {session_id!r}: use 1-64 letters, digits, '_' or '-'",
                           param="session_id")
        d = self.root / session_id
        d.mkdir(exist_ok=True)
        return d

    def save(self, session_id: str, filename: str | None, data: bytes) -> UploadResult:
        d = self.directory(session_id)
        name = safe_filename(filename)
        existing = {p.name for p in d.iterdir() if _regular(p)}
        if name not in existing and len(existing) >= self.max_files:
            raise APIError(400, f"session {session_id} already holds {len(existing)} files (limit "
                                f"{self.max_files})", param="file", code="too_many_files")
        # The kernel can write this directory, so it may have planted a link under this name: remove
        # whatever is there and create the file afresh, never following a link (this process may be root).
        target = d / name
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            target.unlink()
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise APIError(400, f"cannot store {name!r} in session {session_id}: {e.strerror}",
                           param="file") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return UploadResult(session_id=session_id, filename=name, bytes=len(data))

    def files(self, session_id: str) -> list[dict]:
        d = self.directory(session_id)
        return [{"name": p.name, "bytes": p.lstat().st_size} for p in sorted(d.iterdir()) if _regular(p)]

    def interpreter(self, session_id: str):
        """The session's interpreter, started on first use (least recently used ones are closed)."""
        from puyu.agent.interpreter import Interpreter

        with self._lock:
            it = self._interpreters.pop(session_id, None)
            if it is None or getattr(it, "closed", False):
                it = Interpreter(self.directory(session_id), timeout=self.interpreter_timeout)
            self._interpreters[session_id] = it
            while len(self._interpreters) > self.max_interpreters:
                _, old = self._interpreters.popitem(last=False)
                old.close()
            return it

    def close(self) -> None:
        with self._lock:
            for it in self._interpreters.values():
                it.close()
            self._interpreters.clear()
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)

    def add_routes(self, app, errors: dict) -> None:
        sid_param = PathParam(pattern=SESSION_PATTERN, description="1-64 letters, digits, '_' or '-'")

        @app.post("/v1/sessions/{session_id}/files", response_model=UploadResult, responses=errors)
        async def upload(session_id: str = sid_param, file: UploadFile = File(...)):
            data = await file.read()
            return self.save(session_id, file.filename, data).dump()

        @app.get("/v1/sessions/{session_id}/files", responses=errors)
        async def list_files(session_id: str = sid_param) -> list[dict]:
            return self.files(session_id)


class _Cancelled(Exception):
    pass


def _regular(p: Path) -> bool:
    """A regular file itself, not a link (links planted by kernel code must not reveal host files)."""
    return stat.S_ISREG(p.lstat().st_mode)


def _data_url(path: str, workdir: Path) -> str | None:
    from puyu.agent.interpreter import read_png

    data = read_png(path, workdir, max_bytes=MAX_IMAGE_BYTES)  # no links out of the session, PNG only
    return None if data is None else "data:image/png;base64," + base64.b64encode(data).decode("ascii")


async def interpreter_events(engine, tokenizer, sessions: Sessions, req: ChatCompletionRequest, prompt: Prompt,
                             params, context: int, handles: list, max_steps: int = 8) -> AsyncIterator[Event]:
    """The server-side interpreter loop for one chat request (see the module docstring).

    Usage counts every model turn: prompt tokens summed over turns, completion tokens likewise."""
    from puyu.agent.loop import Agent, Final, Image, TextDelta, ToolCall, ToolOutput
    from puyu.agent.loop import Error as AgentError

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()
    usage: dict = {"prompt": 0, "completion": 0, "reason": None, "error": None}
    stops = prompt.stop_token_ids

    def policy(messages, tools, interpreter):
        ids = encode_chat(tokenizer, messages, tools, interpreter)
        room = context - len(ids)
        if room <= 0:
            usage["error"] = APIError(400, f"the conversation grew past the context ({len(ids)} of {context} "
                                           f"tokens) while running code", code="context_length_exceeded")
            raise usage["error"]
        handle = engine.submit(ids, replace(params, max_new_tokens=min(params.max_new_tokens, room),
                                            stop_token_ids=list(stops)))
        handles.append(handle)
        usage["prompt"] += len(ids)
        for delta in handle:
            if cancelled.is_set():
                raise _Cancelled()
            usage["completion"] += len(delta.token_ids)
            usage["reason"] = delta.finish_reason or usage["reason"]
            if delta.text:
                yield delta.text

    own = None
    if req.session_id:
        interp = sessions.interpreter(req.session_id)
    else:
        from puyu.agent.interpreter import Interpreter

        interp = own = Interpreter(None, timeout=sessions.interpreter_timeout)

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:
            cancelled.set()

    def work() -> None:
        try:
            agent = Agent(policy, interpreter=interp, max_steps=max_steps)
            for ev in agent.stream(chat_messages(req)):
                put(ev)
                if cancelled.is_set():
                    break
        except Exception as e:
            put(e)
        finally:
            if own is not None:
                own.close()
            put(None)

    threading.Thread(target=work, name="puyu-agent", daemon=True).start()
    step: dict | None = None
    try:
        while True:
            ev = await queue.get()
            if ev is None:
                return
            if isinstance(ev, Exception):
                raise ev if isinstance(ev, APIError) else APIError(
                    503, f"the interpreter loop failed: {ev}", type="server_error", code="agent_error")
            if step is not None and not isinstance(ev, (ToolOutput, Image)):
                yield Event("step", step=step)
                step = None
            if isinstance(ev, TextDelta):
                yield Event("text", text=ev.text)
            elif isinstance(ev, ToolCall):
                step = {"code": ev.code or "", "output": "", "images": []}
            elif isinstance(ev, ToolOutput) and step is not None:
                step["output"], step["error"] = ev.content, ev.error
            elif isinstance(ev, Image) and step is not None:
                url = _data_url(ev.path, interp.workdir)
                if url:
                    step["images"].append(url)
            elif isinstance(ev, AgentError) and ev.fatal:
                if isinstance(usage["error"], APIError):
                    raise usage["error"]
                raise APIError(503, ev.message, type="server_error", code="agent_error")
            elif isinstance(ev, AgentError):
                yield Event("text", text=f"\n[{ev.message}]")
            elif isinstance(ev, Final):
                yield Event("finish", finish_reason=finish_reason(usage["reason"]),
                            prompt_tokens=usage["prompt"], completion_tokens=usage["completion"])
    finally:
        cancelled.set()
