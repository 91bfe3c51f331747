"""Helpers for the server tests: a tiny tokenizer, a nano-tiny model fine-tuned in a few seconds to answer
a weather question with a tool call (and to answer after the tool result), and a real uvicorn server on
a free loopback port running in a background thread.

The fine-tuning prompts are built by the server's own prompt code (`chat_prompt`), so the token ids the
model learns are exactly those the server will feed it.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
QUESTION = "What is the weather in Paris?"
CALL_ARGS = {"city": "Paris"}
TOOL_RESULT = "sunny, 21 C"
ANSWER = "It is sunny and 21 C in Paris."
GREETING, GREETING_ANSWER = "Hello", "Hello! I am puyu, how can I help you today?"
# The data-analysis flow: a CSV uploaded into the session, a question, code run by the server-side
# interpreter (a sum and a figure), the answer from its output. FILE_MESSAGE is the `user name=file`
# turn the web page sends (InternLM2's format, sizes like "29B"/"10K").
CSV_NAME, CSV = "sales.csv", "month,sales\n1,10\n2,20\n3,30\n"
FILE_MESSAGE = {"role": "user", "name": "file", "content": f'[{{"path": "{CSV_NAME}", "size": "{len(CSV)}B"}}]'}
DATA_QUESTION = "Plot the sales in sales.csv and give the total."
CODE = 'import pandas as pd\ndf = pd.read_csv("sales.csv")\nprint(df["sales"].sum())\ndf.plot(x="month", y="sales");'
CODE_OUTPUT = "60\n![image](figure_001.png)"  # what the interpreter tells the model (RunResult.for_model)
DATA_ANSWER = "The total is 60; the plot is above."

_WORDS = ("the weather city sunny rain cloud paris london tokyo model tool call answer hello help you today "
          "what is in it and how can i am get name parameters type object string function").split()


def corpus(n_lines: int = 1500, seed: int = 0) -> str:
    """Plain lines plus the chat, tool-call and JSON pieces the tests use, so those strings tokenize short."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n_lines)]
    from puyu.model.chat_format import DEFAULT_INTERPRETER_PROMPT

    lines += [QUESTION, ANSWER, GREETING_ANSWER, TOOL_RESULT, DEFAULT_INTERPRETER_PROMPT, DATA_QUESTION,
              DATA_ANSWER, FILE_MESSAGE["content"], CODE_OUTPUT, *CODE.split("\n"),
              '{"name": "get_weather", "parameters": {"city": "Paris"}}',
              '[{"name": "get_weather", "description": "Current weather for a city", "parameters": '
              '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]'] * 40
    rng.shuffle(lines)
    return "\n".join(lines) + "\n"


def make_tokenizer(directory: Path, vocab_size: int = 800):
    from puyu.model.tokenizer import train_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "corpus.txt").write_text(corpus(), encoding="utf-8")
    return train_tokenizer([directory / "corpus.txt"], directory / "tok", vocab_size=vocab_size)


def training_examples(tok) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids) pairs, prompts rendered exactly as the server renders them."""
    import json

    from puyu.model.chat_format import ACTION_END, ACTION_START, IM_END, INTERPRETER, PLUGIN, encode_chat
    from puyu.serve.chat import chat_prompt
    from puyu.serve.openai_schema import ChatCompletionRequest

    call = f'{ACTION_START}{PLUGIN}\n{{"name": "get_weather", "parameters": {json.dumps(CALL_ARGS)}}}{ACTION_END}'
    first = [{"role": "user", "content": QUESTION}]
    second = first + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps(CALL_ARGS)}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": TOOL_RESULT}]
    cases = [(first, TOOLS, call), (second, TOOLS, ANSWER + IM_END),
             ([{"role": "user", "content": GREETING}], None, GREETING_ANSWER + IM_END),
             # with tools offered but none needed, no call (the evaluation's "no call" case)
             ([{"role": "user", "content": GREETING}], TOOLS, GREETING_ANSWER + IM_END)]
    out = []
    for messages, tools, target in cases:
        req = ChatCompletionRequest.model_validate({"messages": messages, **({"tools": tools} if tools else {})})
        out.append((chat_prompt(tok, req).ids, tok.encode(target, allow_special=True)))
    # Interpreter turns, rendered as the agent's policy in puyu.serve.sessions renders them.
    data = [dict(FILE_MESSAGE), {"role": "user", "content": DATA_QUESTION}]
    run = f"{ACTION_START}{INTERPRETER}\n```python\n{CODE}\n```{ACTION_END}"
    after = data + [{"role": "assistant", "content": "", "code": CODE},
                    {"role": "environment", "name": INTERPRETER, "content": CODE_OUTPUT}]
    for messages, target in [(data, run), (after, DATA_ANSWER + IM_END)]:
        out.append((encode_chat(tok, messages, None, True), tok.encode(target, allow_special=True)))
    return out


def finetune_tool_model(tok, out_dir: Path, steps: int = 400, max_seconds: float = 60.0,
                        examples: list[tuple[list[int], list[int]]] | None = None) -> Path:
    """nano-tiny (vocab matched to `tok`) trained until greedy decoding reproduces every target of
    `examples` ((prompt ids, target ids) pairs; default `training_examples(tok)`)."""
    import torch

    from puyu.model.checkpoint import save_pretrained
    from puyu.model.config import get_preset
    from puyu.model.transformer import InternLM2ForCausalLM

    torch.manual_seed(0)
    # 512 positions (nano-tiny has 256): the interpreter's system turn makes those prompts ~300 tokens.
    cfg = get_preset("nano-tiny", vocab_size=tok.vocab_size, max_position_embeddings=512)
    model = InternLM2ForCausalLM(cfg).reset_parameters(seed=0)
    examples = training_examples(tok) if examples is None else examples
    width = max(len(p) + len(t) for p, t in examples)
    assert width < cfg.max_position_embeddings, f"training sequence of {width} tokens does not fit"
    ids = torch.full((len(examples), width), tok.eos_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, (p, t) in enumerate(examples):
        seq = p + t
        ids[i, :len(seq)] = torch.tensor(seq)
        labels[i, len(p) - 1:len(seq) - 1] = torch.tensor(t)  # predict each target token from the one before
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    start = time.process_time()  # CPU seconds of this process: a busy machine slows the wall clock, not this
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is ~5x faster than two on a busy 2-core machine
    try:
        _train(model, opt, ids, labels, steps, start, max_seconds)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    save_pretrained(model, out_dir, tokenizer=tok)
    return out_dir


def _train(model, opt, ids, labels, steps: int, start: float, max_seconds: float) -> None:
    import torch

    for step in range(steps):
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        # Done when teacher-forced argmax reproduces every target token (so greedy decoding does) with
        # some margin left (low loss).
        if step % 5 == 4 and loss.item() < 0.1:
            with torch.no_grad():
                pred = model(ids).argmax(-1)
            if bool((pred[labels != -100] == labels[labels != -100]).all()):
                break
        if time.process_time() - start > max_seconds:
            raise RuntimeError(f"fine-tuning did not converge in {max_seconds} CPU s (loss {loss.item():.3f})")


_CACHE: dict[str, object] = {}


def tool_model(tmp_path_factory):
    """(tokenizer, checkpoint dir) of the fine-tuned tool model, built once per test process."""
    if "tool_model" not in _CACHE:
        root = tmp_path_factory.mktemp("tool_model")
        tok = make_tokenizer(root)
        _CACHE["tool_model"] = (tok, finetune_tool_model(tok, root / "model"))
    return _CACHE["tool_model"]


class RecordingEngine:
    """The real engine, with every submitted handle recorded (to check from outside that a request was
    aborted rather than finished). Everything else is delegated unchanged.

    `slow(seconds)` makes every model forward sleep that long first, like a bigger model: nano-tiny
    decodes a token in well under a millisecond, so without it a 200-token request is over before a
    client can disconnect from it. The model, engine and server are otherwise untouched."""

    def __init__(self, engine):
        self._engine = engine
        self.handles: list = []
        self._delay = 0.0
        engine.model.register_forward_pre_hook(lambda module, args: time.sleep(self._delay) if self._delay else None)

    @contextlib.contextmanager
    def slow(self, seconds: float):
        self._delay = seconds
        try:
            yield
        finally:
            self._delay = 0.0

    def submit(self, prompt, params=None):
        handle = self._engine.submit(prompt, params)
        self.handles.append(handle)
        return handle

    def __getattr__(self, name):
        return getattr(self._engine, name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 at a free port, in a daemon thread; `stop()` shuts it down."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Poll `predicate()` until it returns a truthy value (returned) or `timeout` passes (returns None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


class JSONHandler(BaseHTTPRequestHandler):
    """Base of the tests' small loopback endpoints: `_send(code, obj)` writes one JSON response."""

    def _send(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output clean
        pass
