"""The --interpreter path: `puyu.Agent` with real sandboxed `puyu.Interpreter` kernels, pooled per worker
and reset between samples, and the agent figures in the report. The policy is a fixed script standing in
for a model that always computes with Python (the engine-backed policy is covered by the agent tests)."""

from __future__ import annotations

import json
import re

import pytest

from puyu.eval import Context, get_task
from puyu.eval import report as R
from puyu.eval.runner import run_task

pytest.importorskip("jupyter_client")


class ScriptedAgentBackend:
    """Writes `print(a op b)` plus a probe of leftover state in the first turn, then answers with what
    the interpreter printed. Records the probe so the test can check kernels were reset."""

    name = "local"

    def __init__(self):
        self.leftovers = []

    def describe(self):
        return {"backend": "scripted"}

    def policy(self, gen):
        from puyu.model.chat_format import ACTION_END, ACTION_START, INTERPRETER

        def policy(messages, tools=None, interpreter=None):
            env = [m for m in messages if m["role"] == "environment"]
            if not env:
                q = re.search(r"What is (.+)\?", messages[-1]["content"]).group(1)
                code = f"print('left' in globals())\nleft = 1\nprint({q})"
                yield f"Let me compute.{ACTION_START}{INTERPRETER}\n```python\n{code}\n```{ACTION_END}"
                return
            probe, result = env[-1]["content"].strip().splitlines()[:2]
            self.leftovers.append(probe)
            yield f"The answer is {result}."

        return policy


def test_interpreter_runs_through_the_agent_with_pooled_reset_kernels(tmp_path):
    backend = ScriptedAgentBackend()
    task = get_task("arithmetic")
    ctx = Context(seed=0, options={"n": "3", "sizes": "100,10000"}, interpreter=True)
    d = run_task(task, backend, tmp_path, ctx, progress=False, agent={"workers": 2, "max_steps": 3, "timeout": 20})
    assert d.name == "arithmetic+interpreter"
    rows = [json.loads(x) for x in (d / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["score"] == 1.0 for r in rows)
    assert all(r["agent"]["interpreter_calls"] == 1 and r["agent"]["ok_calls"] == 1 for r in rows)
    # two kernels served six samples; none saw the variable the previous sample left behind
    assert backend.leftovers == ["False"] * 6
    t = R.build(tmp_path)["tasks"][0]
    assert t["agent"] == {"called_interpreter": 1.0, "calls_without_error": 1.0, "mean_turns": 2.0, "calls": 6}
    assert "called interpreter 100%" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_nano_suite_runs_every_part_on_a_tiny_model(tmp_path_factory, tmp_path):
    """The recipe's evaluation stage end to end on the server tests' tool model (tiny, 512 positions)."""
    import serving_fixtures as sf

    from puyu.eval.suite import nano_suite

    tok, model_dir = sf.tool_model(tmp_path_factory)
    s = nano_suite(model_dir, model_dir, tmp_path / "eval", trained_length=256, arith_n=4, tools_n=6,
                   depths="0,100", max_factor=2.0)
    assert {"needle@plain", "needle@dynamic-ntk-4", "arithmetic", "arithmetic+interpreter", "tools"} <= set(s)
    lengths = s["needle@plain"]["mean_by_length"]
    assert max(lengths) == 512 and s["needle@plain"]["n"] == 2 * len(lengths)  # grid lengths x 2 depths
    assert (tmp_path / "eval" / "needle@plain" / "needle_heatmap.png").exists()
    assert "agent" in s["arithmetic+interpreter"]
    assert "args" in s["tools"]["details"]


def test_interpreter_predictions_count_their_tokens(tmp_path, tiny_tokenizer):
    """With the model's tokenizer at hand, an interpreter prediction records prompt_tokens (the first
    turn's encode_chat ids) and completion_tokens (every turn's text, encoded as generated)."""
    from puyu.model.chat_format import encode_chat

    backend = ScriptedAgentBackend()
    backend.tokenizer = tiny_tokenizer
    ctx = Context(seed=0, options={"n": "1", "sizes": "100"}, interpreter=True)
    d = run_task(get_task("arithmetic"), backend, tmp_path, ctx, progress=False,
                 agent={"workers": 1, "max_steps": 3, "timeout": 20})
    r = json.loads((d / "predictions.jsonl").read_text().splitlines()[0])
    sample = get_task("arithmetic").samples(ctx)[0]
    assert r["prompt_tokens"] == len(encode_chat(tiny_tokenizer, sample.messages, None, True))
    turns = [m["content"] for m in r["transcript"] if m["role"] == "assistant"]
    assert len(turns) == 2
    first = r["transcript"][0]
    from puyu.model.chat_format import ACTION_END, ACTION_START, INTERPRETER

    texts = [f"{first['content']}{ACTION_START}{INTERPRETER}\n```python\n{first['code']}\n```{ACTION_END}", turns[1]]
    assert r["completion_tokens"] == sum(len(tiny_tokenizer.encode(t, allow_special=True)) for t in texts)
    assert R.build(tmp_path)["tasks"][0]["completion_tokens"] == r["completion_tokens"]


def test_a_conversation_past_the_context_is_that_samples_error(tmp_path):
    """A turn with no room left in the context (ContextLengthError from either backend's policy) ends
    that sample with its message as `error`, scored 0 and counted in the report; the run goes on."""
    from puyu.eval.backends import ContextLengthError

    class Full(ScriptedAgentBackend):
        def policy(self, gen):
            def policy(messages, tools=None, interpreter=None):
                raise ContextLengthError("the conversation has 600 tokens; the model's context is 512 tokens")
                yield ""

            return policy

    ctx = Context(seed=0, options={"n": "2", "sizes": "100"}, interpreter=True)
    d = run_task(get_task("arithmetic"), Full(), tmp_path, ctx, progress=False,
                 agent={"workers": 1, "max_steps": 3, "timeout": 20})
    rows = [json.loads(x) for x in (d / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("context is 512" in r["error"] and r["score"] == 0.0 for r in rows)
    assert R.build(tmp_path)["tasks"][0]["context_errors"] == 2
