"""Where generations come from: the local engine, or any OpenAI-compatible endpoint.

Both take a list of work items (sample, repeat) and call `on_done(item, result)` as each finishes (from
the caller's thread for the local backend, from worker threads for the API backend; `on_done` must be
thread-safe). A result is a dict: prompt (the exact rendered prompt text), output (raw model text),
prompt_tokens, completion_tokens, seconds, finish_reason, and with the interpreter an `agent` dict.

- `LocalBackend`: loads the model and tokenizer, builds one `puyu.Engine` and submits every item at
  once, so continuous batching runs them together (never one request at a time).
- `APIBackend`: `/v1/chat/completions` for chat samples (tools passed as OpenAI tools; returned
  `tool_calls` are written back as an InternLM2 plugin action so one scorer reads both) and
  `/v1/completions` for raw prompts; `concurrency` requests in flight; 429, 5xx, timeouts and dropped
  connections are retried with exponential backoff (Retry-After honoured), 401/403 stop the run with
  one clear line. Uses httpx.
- With `--interpreter` both run `puyu.Agent` locally (turn limit, per-call timeout) with a pool of
  sandboxed `puyu.Interpreter` kernels, one per worker thread, reset between samples (`%reset -f`,
  restarted only if that fails); the backend only generates each turn.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from puyu.eval.task import EvalError, Sample

Item = tuple  # (Sample, repeat index)


def _params_fields(gen: dict) -> dict:
    return {"max_new_tokens": gen["max_new_tokens"], "temperature": gen["temperature"], "top_p": gen["top_p"],
            "seed": gen.get("seed"), "stop": list(gen.get("stop") or [])}


# ---- local -------------------------------------------------------------------------------------
class LocalBackend:
    name = "local"

    def __init__(self, model: str, *, max_batch_size: int = 64, rope_scaling: dict | None = None,
                 dtype: str | None = None, cache_tokens: int | None = None):
        from puyu.engine.scheduler import Engine
        from puyu.model.checkpoint import load_model
        from puyu.model.tokenizer import load_tokenizer

        self.model_path = model
        self.model = load_model(model, dtype=dtype).eval()
        if rope_scaling is not None:  # e.g. dynamic NTK at inference only (the weights are unchanged)
            self.model.config.rope_scaling = rope_scaling
            self.model.config.validate()
        try:
            self.tokenizer = load_tokenizer(model)
        except Exception as e:
            raise EvalError(f"--model {model}: no tokenizer next to the weights ({e})") from e
        self.config = self.model.config
        self.engine = Engine(self.model, self.tokenizer, max_batch_size=max_batch_size, cache_tokens=cache_tokens)

    def describe(self) -> dict:
        from puyu.model.chat_format import chat_template

        return {"backend": "local", "model": str(self.model_path), "config": self.config.to_hf_dict(), "chat_template": chat_template(),
                "decode_path": self.engine.decode_path, "weights": _weights_stamp(self.model_path)}

    def close(self) -> None:
        self.engine.close()

    def _prompt(self, s: Sample) -> tuple[list[int], str]:
        from puyu.model.chat_format import encode_chat, render_chat

        tok = self.tokenizer
        if s.prompt_ids is not None:  # recorded as the text an API backend is sent
            return s.prompt_ids, s.prompt if s.prompt is not None else tok.decode(s.prompt_ids)
        if s.messages is not None:
            return encode_chat(tok, s.messages, s.tools), render_chat(s.messages, tools=s.tools)
        return [tok.bos_id] + tok.encode(s.prompt), s.prompt

    def generate(self, items: list[Item], gen: dict, on_done) -> None:
        from puyu.engine.sampling import SamplingParams

        tok = self.tokenizer
        handles = []
        for s, rep in items:
            ids, text = self._prompt(s)
            stops = list(tok.stop_ids)  # </s> and <|im_end|> for raw prompts too, as puyu serve and HF stop
            f = _params_fields(gen)
            f["max_new_tokens"] = s.max_new_tokens or f["max_new_tokens"]
            f["seed"] = None if f["seed"] is None else f["seed"] * 1000003 + rep
            params = SamplingParams(**f, stop_token_ids=stops)
            handles.append(((s, rep), text, len(ids), time.perf_counter(), self.engine.submit(ids, params)))
        pending = list(handles)
        while pending:
            still = []
            for h in pending:
                item, text, n_prompt, t0, handle = h
                if not handle.done:
                    still.append(h)
                    continue
                r = handle.result()
                on_done(item, {"prompt": text, "output": r.text, "prompt_tokens": n_prompt,
                               "completion_tokens": len(r.token_ids), "finish_reason": r.finish_reason,
                               "seconds": time.perf_counter() - t0})
            if len(still) == len(pending):
                time.sleep(0.005)
            pending = still

    def policy(self, gen: dict):
        from puyu.engine.sampling import SamplingParams
        from puyu.engine.scheduler import chat_policy

        return chat_policy(self.engine, SamplingParams(**_params_fields(gen)))

    def loglik(self, s: Sample, window: int, stride: int) -> dict:
        import torch

        from puyu.eval.perplexity import window_spans

        ids = [self.tokenizer.bos_id] + self.tokenizer.encode(s.prompt)
        nll = 0.0
        for begin, end, first in window_spans(len(ids), window, stride):
            logits = self.engine.prompt_logits(ids[begin:end])  # [end - begin, V]
            lp = torch.log_softmax(logits.float(), dim=-1)
            targets = torch.tensor(ids[first:end])
            rows = torch.arange(first - 1 - begin, end - 1 - begin)
            nll -= float(lp[rows, targets].sum())
        return {"nll": nll, "tokens": len(ids) - 1, "bytes": len(s.prompt.encode("utf-8"))}


# ---- OpenAI-compatible endpoint ----------------------------------------------------------------------
class APIBackend:
    name = "api"

    def __init__(self, base_url: str, *, api_key: str | None = None, model_name: str | None = None,
                 concurrency: int = 8, timeout: float = 120.0, retries: int = 5, backoff: float = 0.5,
                 tokenizer=None):
        import httpx

        self.base = base_url.rstrip("/")
        if not self.base.endswith("/v1"):
            self.base += "/v1"
        self.concurrency, self.retries, self.backoff = concurrency, retries, backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers,
                                   limits=httpx.Limits(max_connections=concurrency + 2))
        self.tokenizer = tokenizer
        self.config = None
        self.model_name = model_name or self._first_model()

    def describe(self) -> dict:
        return {"backend": "api", "api_base": self.base, "model": self.model_name}

    def close(self) -> None:
        self.client.close()

    def _first_model(self) -> str:
        data = self._request("GET", "/models", None)
        models = data.get("data") or []
        if not models:
            raise EvalError(f"{self.base}/models lists no model; give --model-name")
        return models[0]["id"]

    def _request(self, method: str, path: str, body: dict | None) -> dict:
        import httpx

        url = self.base + path
        last = ""
        for attempt in range(self.retries + 1):
            try:
                r = self.client.request(method, url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                last = f"{type(e).__name__}: {e}"
                wait = None
            else:
                if r.status_code in (401, 403):
                    raise EvalError(f"{url}: authentication failed (HTTP {r.status_code}); check --api-key")
                if r.status_code == 429 or r.status_code >= 500:
                    last = f"HTTP {r.status_code}: {r.text[:200]}"
                    wait = _retry_after(r.headers.get("retry-after"))
                elif r.status_code >= 400:
                    raise EvalError(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
                else:
                    try:
                        return r.json()
                    except ValueError as e:
                        raise EvalError(f"{url}: the response is not JSON: {r.text[:200]!r}") from e
            if attempt < self.retries:
                time.sleep(wait if wait is not None else min(self.backoff * 2 ** attempt, 10.0))
        raise EvalError(f"{url}: failed after {self.retries + 1} attempts ({last})")

    def _complete(self, s: Sample, gen: dict, rep: int) -> dict:
        max_tokens = s.max_new_tokens or gen["max_new_tokens"]
        body = {"model": self.model_name, "max_tokens": max_tokens, "temperature": gen["temperature"],
                "top_p": gen["top_p"]}
        if gen.get("seed") is not None:
            body["seed"] = gen["seed"] * 1000003 + rep
        if gen.get("stop"):
            body["stop"] = list(gen["stop"])
        t0 = time.perf_counter()
        if s.messages is not None:
            body["messages"] = s.messages
            if s.tools:
                body["tools"] = s.tools
            data = self._request("POST", "/chat/completions", body)
            choice = (data.get("choices") or [{}])[0]
            msg = choice.get("message") or {}
            output = msg.get("content") or ""
            for call in msg.get("tool_calls") or []:
                output += _plugin_text(call)
            from puyu.model.chat_format import render_chat

            prompt = render_chat(s.messages, tools=s.tools)  # recorded as the local backend records it
        else:
            text = s.prompt if s.prompt is not None else self.tokenizer.decode(s.prompt_ids)
            body["prompt"] = text
            data = self._request("POST", "/completions", body)
            choice = (data.get("choices") or [{}])[0]
            output = choice.get("text") or ""
            prompt = text
        usage = data.get("usage") or {}
        return {"prompt": prompt, "output": output, "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"), "finish_reason": choice.get("finish_reason"),
                "seconds": time.perf_counter() - t0}

    def generate(self, items: list[Item], gen: dict, on_done) -> None:
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="puyu-eval-api") as pool:
            futures = {pool.submit(self._complete, s, gen, rep): (s, rep) for s, rep in items}
            try:
                for fut in as_completed(futures):
                    item = futures[fut]
                    try:
                        res = fut.result()
                    except EvalError as e:
                        raise EvalError(f"sample {item[0].id}: {e}") from e
                    on_done(item, res)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def policy(self, gen: dict):
        """An agent policy over `/v1/completions` with the rendered InternLM2 prompt (the endpoint must
        read chat markers in completion prompts, as vLLM, LMDeploy and `puyu serve` do)."""
        from puyu.model.chat_format import ACTION_END, ACTION_START, render_chat

        def policy(messages, tools=None, interpreter=None):
            prompt = render_chat(messages, tools=tools, interpreter=interpreter)
            body = {"model": self.model_name, "prompt": prompt, "max_tokens": gen["max_new_tokens"],
                    "temperature": gen["temperature"], "top_p": gen["top_p"],
                    "stop": ["<|im_end|>", ACTION_END] + list(gen.get("stop") or [])}
            data = self._request("POST", "/completions", body)
            text = ((data.get("choices") or [{}])[0]).get("text") or ""
            yield text
            if ACTION_START in text:
                yield ACTION_END

        return policy


def _weights_stamp(model: str) -> dict:
    """{weight file: [bytes, mtime seconds]} of a checkpoint folder or GGUF file ({} for a preset), so a model retrained
    at the same path is told apart from the one whose predictions a folder holds."""
    from pathlib import Path

    d = Path(model)
    if d.is_file():  # a GGUF file
        return {d.name: [d.stat().st_size, int(d.stat().st_mtime)]}
    if not d.is_dir():
        return {}
    return {f.name: [f.stat().st_size, int(f.stat().st_mtime)] for f in sorted(d.iterdir())
            if f.suffix in (".safetensors", ".bin", ".pt") and f.is_file()}


def _retry_after(value: str | None) -> float | None:
    try:
        return min(float(value), 30.0) if value else None
    except ValueError:
        return None


def _plugin_text(call: dict) -> str:
    from puyu.model.chat_format import ACTION_END, ACTION_START, PLUGIN

    f = call.get("function") or {}
    args = f.get("arguments")
    try:
        args = json.loads(args) if isinstance(args, str) else (args or {})
    except json.JSONDecodeError:
        return f"{ACTION_START}{PLUGIN}\n{{\"name\": {json.dumps(f.get('name'))}, \"parameters\": {args}}}{ACTION_END}"
    return f"{ACTION_START}{PLUGIN}\n" + json.dumps({"name": f.get("name"), "parameters": args}) + ACTION_END


# ---- the agent path (--interpreter) --------------------------------------------------------------------
def run_agent(backend, items: list[Item], gen: dict, on_done, *, workers: int = 2, max_steps: int = 4,
              call_timeout: float = 10.0) -> None:
    """Each item through `puyu.Agent` with the sandboxed interpreter; `workers` threads, each with one
    kernel kept for all its samples and reset in between."""
    from puyu.agent.interpreter import Interpreter
    from puyu.agent.loop import Agent, ToolCall, ToolOutput
    from puyu.model.chat_format import render_chat

    policy = backend.policy(gen)
    lock = threading.Lock()
    queue_items = list(items)
    errors: list[BaseException] = []

    def worker():
        interp = Interpreter(timeout=call_timeout)
        try:
            while True:
                with lock:
                    if not queue_items or errors:
                        return
                    s, rep = queue_items.pop(0)
                t0 = time.perf_counter()
                agent = Agent(policy, tools=None, interpreter=interp, max_steps=max_steps,
                              interpreter_timeout=call_timeout)
                res = agent.run(s.messages)
                calls = [e for e in res.events if isinstance(e, ToolCall) and e.kind == "interpreter"]
                outs = [e for e in res.events if isinstance(e, ToolOutput) and e.name == "python"]
                agent_info = {"interpreter_calls": len(calls), "ok_calls": sum(o.ok for o in outs),
                              "turns": res.steps + 1, "reason": res.reason,
                              "code": [c.code for c in calls]}
                result = {"prompt": render_chat(s.messages, interpreter=True), "output": res.text,
                          "transcript": res.messages[len(s.messages):], "prompt_tokens": None,
                          "completion_tokens": None, "finish_reason": res.reason,
                          "seconds": time.perf_counter() - t0, "agent": agent_info}
                with lock:
                    on_done((s, rep), result)
                if calls:
                    try:
                        r = interp.run("%reset -f", timeout=10)
                        if r.error:
                            interp.restart()
                    except Exception:
                        interp.restart()
        except BaseException as e:  # noqa: BLE001 - surfaced to the caller below
            with lock:
                errors.append(e)
        finally:
            interp.close()

    threads = [threading.Thread(target=worker, name=f"puyu-eval-agent-{i}", daemon=True)
               for i in range(max(1, min(workers, len(items))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def parse_rope_scaling(text: str | None) -> dict | None:
    """"dynamic:4" -> {"type": "dynamic", "factor": 4.0}; "none"/None -> None."""
    if not text or text == "none":
        return None
    kind, _, factor = text.partition(":")
    if kind not in ("dynamic", "linear"):
        raise EvalError(f"--rope-scaling must be dynamic:FACTOR, linear:FACTOR or none, got {text!r}")
    try:
        f = float(factor or 1.0)
    except ValueError as e:
        raise EvalError(f"--rope-scaling factor must be a number, got {factor!r}") from e
    if f < 1:
        raise EvalError(f"--rope-scaling factor must be >= 1, got {f}")
    return {"type": kind, "factor": f}


