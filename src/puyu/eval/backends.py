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
- The context limit, one rule on both: a completion budget past the context is capped at the room left
  (context - prompt tokens; `capped_max_new_tokens` in the result) and a prompt with no room is a result
  with `error` (scored 0; the run goes on). Local: the context is max_position_embeddings (times the
  RoPE scaling factor); `Sample.beyond_context` (the needle grid) is exempt. API: the server's HTTP 400
  states its context and the prompt's length as it counted them, and the request is sent again capped
  (`APIBackend._post_fitting`); a context-length 400 that does not state both numbers stops the run
  with one line (nothing then says the prompt, rather than max_tokens, is too long, so the sample is
  not scored 0 as "longer than the context"); /v1/models's max_model_len is only recorded.
- Token counts: `prompt_tokens`/`completion_tokens` are counted where the tokens were generated (the
  engine's ids; the endpoint's `usage`, null where it gives none), with `--interpreter` summed over
  the agent's turns.
- Stored outputs: a chat sample over an endpoint records the message the server returns; `puyu serve`
  shows an interpreter action (one the client did not ask for) as a markdown python block, where the
  local backend stores the raw `<|action_start|><|interpreter|>` text. Scores are unaffected.
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


class ContextLengthError(EvalError):
    """A prompt plus its completion budget exceeds the model's context: the endpoint's HTTP 400 (OpenAI's
    code `context_length_exceeded`, or vLLM's "maximum context length" message), or the local backend's
    own check. A property of that sample, not of the endpoint: the sample is recorded with this message
    as its `error` (score 0); any other endpoint failure stops the run, as does an endpoint's 400 that
    does not state the lengths (`APIBackend._post_fitting`). `context` and `prompt_tokens` are given
    (local) or parsed from the message when it states them (puyu serve and vLLM do), else None."""

    def __init__(self, message: str, context: int | None = None, prompt_tokens: int | None = None):
        super().__init__(message)
        parsed = _parse_context_message(message)
        self.context = context if context is not None else parsed[0]
        self.prompt_tokens = prompt_tokens if prompt_tokens is not None else parsed[1]


def _parse_context_message(text: str) -> tuple[int | None, int | None]:
    """(context, prompt tokens) from a context-length 400's message, or None where it does not say.
    puyu serve: "maximum context length is 512 tokens, but you requested 613 tokens (101 in the prompt,
    512 in the completion)" or "... requested 600 tokens in the prompt, leaving no room ..."; vLLM:
    "maximum context length is 2048 tokens. However, you requested 2100 tokens (100 in the messages,
    2000 in the completion)" or "... your request has 3000 input tokens"."""
    import re

    m = re.search(r"maximum context length is (\d+)", text)
    p = (re.search(r"\((\d+) in the (?:prompt|messages|input)", text)
         or re.search(r"requested (\d+) tokens in the prompt", text)
         or re.search(r"has (\d+) input tokens", text))
    return (int(m.group(1)) if m else None), (int(p.group(1)) if p else None)


def _error_result(prompt: str, error: str, prompt_tokens: int | None) -> dict:
    """The result of a sample whose prompt does not fit the context: no generation, scored 0."""
    return {"prompt": prompt, "output": "", "prompt_tokens": prompt_tokens, "completion_tokens": 0,
            "finish_reason": "error", "error": error, "seconds": 0.0}


def _params_fields(gen: dict) -> dict:
    return {"max_new_tokens": gen["max_new_tokens"], "temperature": gen["temperature"], "top_p": gen["top_p"],
            "seed": gen.get("seed"), "stop": list(gen.get("stop") or [])}


def repeat_seed(seed: int | None, rep: int) -> int | None:
    """The request seed of repeat `rep` of a run seeded `seed` (None stays None: fresh randomness). Both
    backends, with and without the interpreter, send this one, so a seeded run draws the same tokens
    locally and through `puyu serve`, and the K repeats of a sample differ."""
    return None if seed is None else seed * 1000003 + rep


# ---- local -------------------------------------------------------------------------------------
class LocalBackend:
    name = "local"

    def __init__(self, model: str, *, max_batch_size: int = 64, rope_scaling: dict | None = None,
                 dtype: str | None = None, cache_tokens: int | None = None, kv: str | None = None):
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
        # the longest prompt + completion, as `puyu serve` counts it: max_position_embeddings, times the
        # RoPE scaling factor when one is set (the length the scaling stretches the positions to)
        factor = float((self.config.rope_scaling or {}).get("factor", 1.0))
        self.context = int(self.config.max_position_embeddings * factor)
        self.engine = Engine(self.model, self.tokenizer, max_batch_size=max_batch_size, cache_tokens=cache_tokens,
                             kv=kv)

    def describe(self) -> dict:
        from puyu.model.chat_format import chat_template

        return {"backend": "local", "model": str(self.model_path), "config": self.config.to_hf_dict(), "chat_template": chat_template(),
                "decode_path": self.engine.decode_path, "kv_format": self.engine.cache.format,
                "context_length": self.context,
                "weights": _weights_stamp(self.model_path)}

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
            f["seed"] = repeat_seed(f["seed"], rep)
            cap = None
            if not s.beyond_context:  # the same rule as puyu serve's: cap at the room left, or refuse
                room = self.context - len(ids)
                if room <= 0:
                    on_done((s, rep), _error_result(text, f"the prompt has {len(ids)} tokens; the model's context "
                                                          f"is {self.context} tokens, leaving no room for a "
                                                          f"completion", len(ids)))
                    continue
                if f["max_new_tokens"] > room:
                    cap = f["max_new_tokens"] = room
            params = SamplingParams(**f, stop_token_ids=stops)
            handles.append(((s, rep), text, len(ids), time.perf_counter(), self.engine.submit(ids, params), cap))
        pending = list(handles)
        while pending:
            still = []
            for h in pending:
                item, text, n_prompt, t0, handle, cap = h
                if not handle.done:
                    still.append(h)
                    continue
                r = handle.result()
                res = {"prompt": text, "output": r.text, "prompt_tokens": n_prompt,
                       "completion_tokens": len(r.token_ids), "finish_reason": r.finish_reason,
                       "seconds": time.perf_counter() - t0}
                if cap is not None:
                    res["capped_max_new_tokens"] = cap
                on_done(item, res)
            if len(still) == len(pending):
                time.sleep(0.005)
            pending = still

    def policy(self, gen: dict):
        """The engine's chat policy, each turn's budget capped at the room left in the context (a
        conversation with no room left raises ContextLengthError, recorded on the sample)."""
        from dataclasses import replace

        from puyu.engine.sampling import SamplingParams
        from puyu.model.chat_format import ACTION_END, encode_chat

        base = SamplingParams(**_params_fields(gen))
        tok = self.tokenizer
        action_end = tok.special_ids[ACTION_END]

        def policy(messages, tools=None, interpreter=None):
            # chat_policy's loop (puyu.engine.scheduler), here so the turn's generated token ids are counted
            ids = encode_chat(tok, messages, tools, interpreter)
            n = len(ids)
            room = self.context - n
            if room <= 0:
                raise ContextLengthError(f"the conversation has {n} tokens; the model's context is "
                                         f"{self.context} tokens, leaving no room for a completion",
                                         context=self.context, prompt_tokens=n)
            stops = set(base.stop_token_ids) | set(tok.stop_ids) | ({action_end} if tools or interpreter else set())
            p = self.engine.fit(ids, replace(base, max_new_tokens=min(base.max_new_tokens, room),
                                             stop_token_ids=sorted(stops)))
            generated = 0
            try:
                for delta in self.engine.stream(ids, p):
                    generated += len(delta.token_ids)
                    if delta.text:
                        yield delta.text
                    if delta.token_ids and delta.token_ids[-1] == action_end and action_end in stops:
                        yield ACTION_END
            finally:
                _report_turn(n, generated)

        return policy

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
        from urllib.parse import urlparse

        import httpx

        try:
            u = urlparse(base_url)
            u.port  # noqa: B018 - raises ValueError on a bad port or IPv6 literal
        except ValueError:
            u = None
        if u is None or u.scheme not in ("http", "https") or not u.netloc:
            raise EvalError(f"--api-base {base_url!r} is not an http:// or https:// URL "
                            "(e.g. http://127.0.0.1:8000/v1)")
        self.base = base_url.rstrip("/")
        if not self.base.endswith("/v1"):
            self.base += "/v1"
        self.concurrency, self.retries, self.backoff = concurrency, retries, backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers,
                                   limits=httpx.Limits(max_connections=concurrency + 2))
        self.tokenizer = tokenizer
        self.config = None
        self.context = None  # the endpoint's max_model_len from /v1/models where it says (recorded only)
        self.model_name = model_name or self._first_model()

    def describe(self) -> dict:
        return {"backend": "api", "api_base": self.base, "model": self.model_name,
                "agent_prompts": "token ids" if self.tokenizer is not None else "text",
                "context_length": self.context}

    def close(self) -> None:
        self.client.close()

    def _first_model(self) -> str:
        data = self._request("GET", "/models", None)
        models = data.get("data") or []
        if not models:
            raise EvalError(f"{self.base}/models lists no model; give --model-name")
        ctx = models[0].get("max_model_len")
        self.context = ctx if isinstance(ctx, int) else None
        return models[0]["id"]

    def _post_fitting(self, path: str, body: dict) -> tuple[dict, int | None]:
        """POST, and when the endpoint refuses prompt + max_tokens as longer than its context, send again
        with max_tokens lowered to the room its message states (context - prompt tokens, counted by the
        server with its own template and tokenizer, so exactly what fits; the same rule as the local
        backend's). Returns (response, the lowered max_tokens or None). Raises ContextLengthError (the
        sample is recorded with it, scored 0) when the prompt alone fills the context; raises a plain
        EvalError, which stops the run, when the 400 does not state the context and the prompt's length:
        then nothing says the prompt is too long (it may be the budget, or the server's own limit), and
        scoring it 0 as "longer than the context" would be a claim the run cannot back."""
        try:
            return self._request("POST", path, body), None
        except ContextLengthError as e:
            if e.context is None or e.prompt_tokens is None:
                raise EvalError(f"{e} (a context-length refusal that does not state the context and the "
                                f"prompt's length in tokens, so the run cannot tell whether the prompt or "
                                f"max_tokens={body['max_tokens']} is too long; lower --max-new-tokens)") from e
            room = e.context - e.prompt_tokens
            if room <= 0 or room >= body["max_tokens"]:
                raise
            return self._request("POST", path, {**body, "max_tokens": room}), room

    def _request(self, method: str, path: str, body: dict | None) -> dict:
        import httpx

        url = self.base + path
        last = ""
        for attempt in range(self.retries + 1):
            try:
                r = self.client.request(method, url, json=body)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as e:  # retrying cannot help
                raise EvalError(f"{url}: {type(e).__name__}: {e}") from e
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
                    too_long = r.status_code == 400 and ("context_length_exceeded" in r.text
                                                         or "maximum context length" in r.text)
                    raise (ContextLengthError if too_long else EvalError)(
                        f"{url}: HTTP {r.status_code}: {_error_text(r.text)}")
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
            body["seed"] = repeat_seed(gen["seed"], rep)
        if gen.get("stop"):
            body["stop"] = list(gen["stop"])
        t0 = time.perf_counter()
        if s.messages is not None:
            from puyu.model.chat_format import render_chat

            prompt = render_chat(s.messages, tools=s.tools)  # recorded as the local backend records it
            body["messages"] = s.messages
            if s.tools:
                body["tools"] = s.tools
            path = "/chat/completions"
        else:
            prompt = s.prompt if s.prompt is not None else self.tokenizer.decode(s.prompt_ids)
            body["prompt"] = prompt
            path = "/completions"
        try:
            data, cap = self._post_fitting(path, body)
        except ContextLengthError as e:
            return _error_result(prompt, str(e), e.prompt_tokens)
        choice = (data.get("choices") or [{}])[0]
        if s.messages is not None:
            msg = choice.get("message") or {}
            output = msg.get("content") or ""
            for call in msg.get("tool_calls") or []:
                output += _plugin_text(call)
        else:
            output = choice.get("text") or ""
        usage = data.get("usage") or {}
        res = {"prompt": prompt, "output": output, "prompt_tokens": usage.get("prompt_tokens"),
               "completion_tokens": usage.get("completion_tokens"), "finish_reason": choice.get("finish_reason"),
               "seconds": time.perf_counter() - t0}
        if cap is not None:
            res["capped_max_new_tokens"] = cap
        return res

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
        """An agent policy over `/v1/completions`. With a tokenizer (`--tokenizer`, the endpoint's own) the
        prompt is sent as the token ids of `encode_chat`, exactly what the local engine is fed; without
        one, as the rendered InternLM2 text, which the endpoint must read with chat markers as special
        tokens (vLLM, LMDeploy and `puyu serve` do). Text cannot tell a marker from the same characters
        inside a message (a user who writes `<|im_end|>`, or a special token the model generated inside
        an action, which the agent keeps as text): there the text prompt differs from the local one."""
        from puyu.model.chat_format import ACTION_END, ACTION_START, encode_chat, render_chat

        def policy(messages, tools=None, interpreter=None):
            if self.tokenizer is not None:
                prompt = encode_chat(self.tokenizer, messages, tools, interpreter)
            else:
                prompt = render_chat(messages, tools=tools, interpreter=interpreter)
            body = {"model": self.model_name, "prompt": prompt, "max_tokens": gen["max_new_tokens"],
                    "temperature": gen["temperature"], "top_p": gen["top_p"],
                    "stop": ["<|im_end|>", ACTION_END] + list(gen.get("stop") or [])}
            if gen.get("seed") is not None:  # the seed run_agent gives this repeat, as the local policy uses
                body["seed"] = gen["seed"]
            data, _ = self._post_fitting("/completions", body)
            usage = data.get("usage") or {}
            _report_turn(usage.get("prompt_tokens"), usage.get("completion_tokens"))
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


def _error_text(text: str) -> str:
    """An error response's message (OpenAI's {"error": {"message": ...}}, or a top-level "message"), else
    the start of the raw body: one readable line for the report and the CLI."""
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        err = obj.get("error") if isinstance(obj.get("error"), dict) else obj
        msg = err.get("message") if isinstance(err, dict) else None
        if isinstance(msg, str) and msg:
            return " ".join(msg.split())[:300]
    return " ".join(text.split())[:300]


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
    kernel kept for all its samples and reset in between. Every model turn of repeat `rep` is seeded
    `repeat_seed(gen["seed"], rep)` on either backend (before, the local policy gave every repeat the same
    seed, so pass@K with the interpreter drew K identical answers, and the API policy sent none)."""
    from puyu.agent.interpreter import Interpreter
    from puyu.agent.loop import Agent, Error, ToolCall, ToolOutput
    from puyu.model.chat_format import render_chat

    policies: dict[int, object] = {}  # one per repeat: its seed is repeat_seed(seed, rep), as without the agent
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
                    if rep not in policies:
                        policies[rep] = backend.policy({**gen, "seed": repeat_seed(gen.get("seed"), rep)})
                    policy = policies[rep]
                t0 = time.perf_counter()
                failed: list[EvalError] = []
                tokens = {"prompt": None, "completion": 0, "turns": 0, "unknown": False}
                agent = Agent(_noting(policy, failed, getattr(backend, "tokenizer", None), tokens), tools=None, interpreter=interp, max_steps=max_steps,
                              interpreter_timeout=call_timeout)
                res = agent.run(s.messages)
                if failed and not isinstance(failed[0], ContextLengthError):
                    # the endpoint failed (auth, a 4xx, retries spent): stop, as without the interpreter,
                    # rather than score the sample 0 and have a rerun skip it
                    raise EvalError(f"sample {s.id}: {failed[0]}") from failed[0]
                calls = [e for e in res.events if isinstance(e, ToolCall) and e.kind == "interpreter"]
                outs = [e for e in res.events if isinstance(e, ToolOutput) and e.name == "python"]
                agent_info = {"interpreter_calls": len(calls), "ok_calls": sum(o.ok for o in outs),
                              "turns": res.steps + 1, "reason": res.reason,
                              "code": [c.code for c in calls]}
                errors_seen = [e.message for e in res.events if isinstance(e, Error) and e.fatal]
                if errors_seen:
                    agent_info["error"] = errors_seen[0]
                counted = tokens["turns"] > 0 and not tokens["unknown"]
                result = {"prompt": render_chat(s.messages, interpreter=True), "output": res.text,
                          "transcript": res.messages[len(s.messages):],
                          "prompt_tokens": tokens["prompt"], "completion_tokens": tokens["completion"] if counted else None,
                          "finish_reason": res.reason,
                          "seconds": time.perf_counter() - t0, "agent": agent_info}
                if failed:  # a turn found no room left in the context: recorded as the sample's error
                    result["error"] = str(failed[0])
                with lock:
                    on_done((s, rep), result)
                if calls:
                    try:
                        # the next sample's cells are numbered from In[1] again, as in a fresh kernel:
                        # tracebacks show the number, so it must not depend on the kernel's history
                        r = interp.run("%reset -f\nget_ipython().execution_count = 1", timeout=10)
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


_turn = threading.local()  # the running agent turn's token counts, as its policy reports them


def _report_turn(prompt_tokens: int | None, completion_tokens: int | None) -> None:
    """Called by a backend's agent policy once per turn, in the agent's thread: the prompt's tokens and
    the tokens generated, as counted where they were generated (the local engine's token ids, the
    endpoint's `usage`); None where the endpoint does not say."""
    _turn.reported = (prompt_tokens, completion_tokens)


def _noting(policy, failed: list, tokenizer=None, tokens: dict | None = None):
    """`policy`, with an EvalError it raises (the endpoint failing) appended to `failed` before the agent
    turns it into a fatal Error event. `tokens` gets the first turn's prompt length and the completion
    tokens summed over turns: as the policy reports them (`_report_turn`: the generated ids locally,
    `usage` from an endpoint), else, for a policy that reports nothing (or an endpoint without `usage`),
    by encoding with `tokenizer` when there is one (the conversation's encode_chat ids; each turn's text
    with special markers as one id each); else "unknown" is set and the counts are recorded as null."""
    def noted(messages, tools=None, interpreter=None):
        _turn.reported = None
        parts: list[str] = []
        turn = policy(messages, tools, interpreter)
        try:
            for piece in turn:
                parts.append(piece)
                yield piece
        except EvalError as e:
            failed.append(e)
            raise
        finally:
            turn.close()  # the policy's own finally (its _report_turn) runs before the counts are read
            if tokens is not None:
                prompt, completion = _turn.reported or (None, None)
                if prompt is None and tokenizer is not None and not tokens["turns"]:
                    from puyu.model.chat_format import encode_chat

                    prompt = len(encode_chat(tokenizer, messages, tools, interpreter))
                if completion is None and parts and tokenizer is not None:
                    completion = len(tokenizer.encode("".join(parts), allow_special=True))
                if tokens["prompt"] is None and prompt is not None and not tokens["turns"]:
                    tokens["prompt"] = prompt
                if completion is None and parts:
                    tokens["unknown"] = True
                tokens["completion"] += completion or 0
                tokens["turns"] += 1
            _turn.reported = None

    return noted


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


