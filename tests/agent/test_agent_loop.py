"""The agent loop with a scripted policy standing in for the model. Everything else is real: the
parser, the tools, the sandboxed kernel, the files, and the chat format the engine would render."""

from __future__ import annotations

import json
import random

import pytest

from puyu.agent.loop import (
    Agent,
    Error,
    Final,
    Image,
    TextDelta,
    ToolCall,
    ToolOutput,
    event_dict,
    file_message,
)
from puyu.agent.protocol import ACTION_END, ACTION_START, INTERPRETER, PLUGIN
from puyu.agent.tools import calculator, tool
from puyu.model.chat_format import render_chat

POPULATION = {"Paris": 2102650, "Lyon": 522250}


@tool
def get_population(city: str) -> int:
    """Population of a French city.

    Args:
        city: the city name.
    """
    if city not in POPULATION:
        raise KeyError(f"no data for {city}")
    return POPULATION[city]


def plugin(name: str, args: dict, text: str = "") -> str:
    return f"{text}{ACTION_START}{PLUGIN}\n{json.dumps({'name': name, 'parameters': args})}{ACTION_END}"


def code(src: str, text: str = "") -> str:
    return f"{text}{ACTION_START}{INTERPRETER}\n```python\n{src}\n```{ACTION_END}"


class ScriptedPolicy:
    """Plays one scripted turn per call. A turn is a string or a function of the messages so far (so a
    turn can depend on what the environment answered). Output is streamed in random small chunks, and
    each prompt is rendered with the real chat format, as an engine-backed policy would."""

    def __init__(self, *turns, seed: int = 0):
        self.turns = list(turns)
        self.prompts: list[str] = []
        self.seen: list[list[dict]] = []
        self.rng = random.Random(seed)

    def __call__(self, messages, tools, interpreter):
        self.prompts.append(render_chat(messages, tools=tools, interpreter=interpreter))
        self.seen.append(messages)
        turn = self.turns.pop(0)
        out = turn(messages) if callable(turn) else turn
        i = 0
        while i < len(out):
            n = self.rng.randint(1, 7)
            yield out[i:i + n]
            i += n


def kinds(events) -> list[str]:
    return [e.type for e in events if not isinstance(e, TextDelta)]


def test_two_step_plugin_task():
    policy = ScriptedPolicy(
        plugin("get_population", {"city": "Paris"}, "Let me look up Paris first.\n"),
        lambda m: plugin("calculator", {"expression": f"{m[-1]['content']} + {POPULATION['Lyon']}"}),
        lambda m: f"Together they have {m[-1]['content']} inhabitants.",
    )
    agent = Agent(policy, tools=[get_population, calculator])
    result = agent.run("How many people live in Paris and Lyon together (Lyon has 522250)?")
    assert result.reason == "answer" and result.steps == 2
    assert result.text == "Together they have 2624900 inhabitants."
    assert kinds(result.events) == ["tool_call", "tool_result", "tool_call", "tool_result", "final"]
    calls = [e for e in result.events if isinstance(e, ToolCall)]
    assert (calls[0].name, calls[0].arguments) == ("get_population", {"city": "Paris"})
    outs = [e for e in result.events if isinstance(e, ToolOutput)]
    assert [o.content for o in outs] == ["2102650", "2624900"] and all(o.ok for o in outs)
    # Streamed text: the deltas of the first turn are exactly its text, without any marker.
    first = "".join(e.text for e in result.events if isinstance(e, TextDelta) and e.step == 1)
    assert first == "Let me look up Paris first.\n"
    # The model was shown the tools and the environment turns in the InternLM2 format.
    assert f"<|im_start|>system name={PLUGIN}\n" in policy.prompts[0] and '"get_population"' in policy.prompts[0]
    assert f"<|im_start|>environment name={PLUGIN}\n2102650<|im_end|>" in policy.prompts[1]
    assert [m["role"] for m in result.messages] == ["user", "assistant", "environment", "assistant",
                                                    "environment", "assistant"]
    json.dumps([event_dict(e) for e in result.events])  # the stream the server and web page consume


def test_interpreter_data_analysis_task(tmp_path):
    (tmp_path / "sales.csv").write_text("region,amount\nnorth,10\nsouth,30\nnorth,20\neast,40\n")
    policy = ScriptedPolicy(
        code("import pandas as pd\nimport matplotlib.pyplot as plt\ndf = pd.read_csv('sales.csv')\n"
             "totals = df.groupby('region')['amount'].sum()\nprint(totals.idxmax(), totals.max())\n"
             "totals.plot(kind='bar')", "I'll load the file and chart it."),
        code("print(df['amount'].mean())"),  # state carried over from the previous step
        lambda m: "The top region is {} with {}; the mean sale is {}.".format(
            *m[-3]["content"].split()[:2], m[-1]["content"]),
    )
    with Agent(policy, interpreter=True, workdir=tmp_path) as agent:
        messages = [{"role": "user", "content": "Which region sells most? Chart the totals."},
                    file_message([tmp_path / "sales.csv"])]
        events = list(agent.stream(messages))
        interp = agent.interpreter
        final = events[-1]
        assert isinstance(final, Final) and final.reason == "answer", events
        assert final.text == "The top region is east with 40; the mean sale is 25.0."
        images = [e for e in events if isinstance(e, Image)]
        assert len(images) == 1 and images[0].path.endswith(".png")
        with open(images[0].path, "rb") as f:
            assert f.read(4) == b"\x89PNG"
        assert "![image](figure_001.png)" in policy.seen[1][-1]["content"]
        assert f"<|im_start|>system name={INTERPRETER}\n" in policy.prompts[0]
        assert '<|im_start|>user name=file\n[{"path": "sales.csv", "size": "49B"}]' in policy.prompts[0]
        assert f"<|im_start|>environment name={INTERPRETER}\n" in policy.prompts[1]
    assert interp.closed  # the agent started it, so the agent stopped it


def test_malformed_calls_are_fed_back_and_recovered():
    def fixed(m):
        assert m[-1]["role"] == "environment" and "not valid JSON" in m[-1]["content"]
        return plugin("get_population", {"town": "Lyon"})

    def fixed_again(m):
        assert "missing required argument 'city'" in m[-1]["content"]
        assert "unknown argument 'town'" in m[-1]["content"]
        return plugin("get_populaton", {"city": "Lyon"})

    def typo_fixed(m):
        assert "unknown tool 'get_populaton'" in m[-1]["content"] and "get_population" in m[-1]["content"]
        return plugin("get_population", {"city": "Nice"})

    def tool_raised(m):
        assert "KeyError" in m[-1]["content"] and "no data for Nice" in m[-1]["content"]
        return code("print(1)")  # the interpreter is not enabled in this conversation

    policy = ScriptedPolicy(
        f'{ACTION_START}{PLUGIN}\n{{"name": "get_population", "parameters": {{"city": "Lyon"}}{ACTION_END}',
        fixed, fixed_again, typo_fixed, tool_raised,
        lambda m: plugin("get_population", {"city": "Lyon"}) if "not enabled" in m[-1]["content"] else "?",
        lambda m: f"Lyon has {m[-1]['content']} inhabitants.",
    )
    result = Agent(policy, tools=[get_population], max_steps=10).run("Population of Lyon?")
    assert result.reason == "answer" and result.text == "Lyon has 522250 inhabitants."
    outs = [e for e in result.events if isinstance(e, ToolOutput)]
    assert [o.ok for o in outs] == [False, False, False, False, False, True]
    # The malformed call is kept in the history as the model wrote it (raw_action, not marker text in
    # the content), and replays as the same action.
    assert result.messages[1]["raw_action"] == {"type": "plugin",
                                                "text": '{"name": "get_population", "parameters": {"city": "Lyon"}'}
    assert (f'{ACTION_START}{PLUGIN}\n{{"name": "get_population", "parameters": {{"city": "Lyon"}}{ACTION_END}\n'
            f'<|im_end|>') in render_chat(result.messages)


def test_step_limit():
    policy = ScriptedPolicy(*[plugin("calculator", {"expression": f"{i} + 1"}) for i in range(5)])
    result = Agent(policy, tools=[calculator], max_steps=3).run("count")
    assert result.reason == "max_steps" and result.steps == 3
    errors = [e for e in result.events if isinstance(e, Error)]
    assert len(errors) == 1 and "step limit of 3" in errors[0].message and not errors[0].fatal
    assert len(policy.turns) == 1  # asked four times, ran three actions, stopped before the fourth


def test_policy_failure_ends_the_run_cleanly():
    def broken(messages, tools, interpreter):
        yield "partial "
        raise RuntimeError("CUDA out of memory")

    events = list(Agent(broken).stream("hi"))
    assert isinstance(events[-2], Error) and events[-2].fatal and "CUDA out of memory" in events[-2].message
    assert isinstance(events[-1], Final) and events[-1].reason == "error" and events[-1].text == "partial "


def test_plain_answer_and_bad_arguments():
    assert Agent(ScriptedPolicy("Just text.<|im_end|>")).run("hi").text == "Just text."
    with pytest.raises(ValueError, match="max_steps"):
        Agent(ScriptedPolicy(), max_steps=0)
