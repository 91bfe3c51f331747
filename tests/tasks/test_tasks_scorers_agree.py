"""The RL rewards and the evaluation scorers read tool calls with one parser, so they agree turn by turn.

Before the parser was shared, `tasks.verifiable` rewarded 0 for fenced calls and JSON-string arguments
that `puyu eval` scored right; this table pins every case, and the verdicts themselves (not only their
agreement), so a change in either scorer fails here.
"""

from __future__ import annotations

import json

import pytest

from puyu.eval.tool_use import tool_call_right
from puyu.eval.tools import TASK as TOOLS_TASK
from puyu.model.chat_format import ACTION_END, ACTION_START, INTERPRETER, PLUGIN
from puyu.rl.grpo import resolve_scorer
from puyu.rl.judge import Reply, task_score
from puyu.tasks import verifiable as V
from puyu.tasks.synthetic import TOOLS

CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
ARGS = json.dumps(CALL["arguments"])


def act(body: str, close: bool = True) -> str:
    return f"{ACTION_START}{PLUGIN}\n{body}" + (f"{ACTION_END}\n" if close else "")


# (turn, right?) for a request to call get_weather(city="Paris").
TABLE = [
    (act(f'{{"name": "get_weather", "parameters": {ARGS}}}'), True),
    (act(f'```json\n{{"name": "get_weather", "parameters": {ARGS}}}\n```'), True),  # fenced
    (act(f'```\n{{"name": "get_weather", "parameters": {ARGS}}}\n```'), True),  # fenced, no language
    (act(json.dumps({"name": "get_weather", "arguments": ARGS})), True),  # arguments as a JSON string
    (act(f'{{"name": "get_weather", "arguments": {ARGS}}}'), True),  # OpenAI's key
    ("Let me check." + act(f'{{"name": "get_weather", "parameters": {ARGS}}}'), True),  # text first
    ("[UNUSED_TOKEN_144][UNUSED_TOKEN_141]\n" + f'{{"name": "get_weather", "parameters": {ARGS}}}'
     + "[UNUSED_TOKEN_143]", True),  # raw spare-token spellings
    (act('{"name": "get_weather", "parameters": {"city": "Paris"'), False),  # malformed JSON
    (act(json.dumps({"name": "get_weather", "arguments": "{city: Paris}"})), False),  # string, not JSON
    (act('{"name": "get_weather", "parameters": ["Paris"]}'), False),  # arguments not an object
    (act('{"parameters": {"city": "Paris"}}'), False),  # no name
    (act('{"name": "get_time", "parameters": {"city": "Paris"}}'), False),  # wrong tool
    (act('{"name": "get_weather", "parameters": {"city": "Lima"}}'), False),  # wrong argument
    (act('{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}'), False),  # extra argument
    (f"{ACTION_START}{INTERPRETER}\n```python\nprint('Paris')\n```{ACTION_END}\n", False),  # code, not a call
    ("It is sunny in Paris.", False),  # no call
    ("", False),
]


@pytest.mark.parametrize("turn, right", TABLE, ids=[str(i) for i in range(len(TABLE))])
def test_rl_rewards_and_eval_scorers_agree_on_tool_calls(turn, right):
    sample = {"kind": "tool", "call": CALL, "tools": TOOLS, "messages": []}
    record = {"expected": [CALL], "tools": TOOLS}
    verdicts = {
        "verifiable.score": V.score(turn, sample) == 1.0,
        "judge.task_score": task_score(sample, Reply(turn, True)) == 1.0,
        "grpo scorer 'tools' (eval task)": resolve_scorer("tools")(turn, record) == 1.0,
        "eval.tools": TOOLS_TASK.score(turn, record) == 1.0,
        "eval.tool_use": tool_call_right(turn, "get_weather", "Paris")[1],
    }
    assert verdicts == {k: right for k in verdicts}


def test_an_unclosed_call_is_scored_by_eval_but_not_rewarded():
    """The one deliberate difference: without `<|action_end|>` the agent still runs the call (eval scores
    it), but RL gives no reward, so training never teaches the model to drop the marker."""
    turn = act(f'{{"name": "get_weather", "parameters": {ARGS}}}', close=False)
    record = {"expected": [CALL], "tools": TOOLS}
    assert TOOLS_TASK.score(turn, record) == 1.0 and tool_call_right(turn, "get_weather", "Paris")[1]
    assert V.score(turn, {"kind": "tool", "call": CALL}) == 0.0 and V.parse_plugin_call(turn) is None


def test_parse_plugin_call_reads_fenced_and_string_arguments():
    assert V.parse_plugin_call(TABLE[1][0]) == CALL
    assert V.parse_plugin_call(TABLE[3][0]) == CALL
    assert V.parse_plugin_call("no call here") is None
    assert V.parse_plugin_call(TABLE[7][0]) is None


def test_interpreter_call_score_reads_the_code_of_the_shared_parser():
    s = {"kind": "interpreter", "operands": ["123", "456"]}
    fenced = f"{ACTION_START}{INTERPRETER}\n```python\nprint(123*456)\n```{ACTION_END}"
    assert V.interpreter_call_score(fenced, s) == 1.0
    assert V.interpreter_call_score(fenced.replace("456", "457"), s) == 0.0
    assert V.interpreter_call_score(act('{"name": "python", "parameters": {"code": "123*456"}}'), s) == 0.0
