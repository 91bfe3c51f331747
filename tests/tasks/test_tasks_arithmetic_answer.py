"""One arithmetic answer rule, scored the same by every caller.

The RL reward (`tasks.verifiable`), `puyu eval`'s arithmetic task, the nano recipe's chat check
(`train.evaluate.chat_arithmetic_accuracy`) and the interpreter check through the agent
(`eval.tool_use.interpreter_arithmetic_accuracy`) each read one table of replies; the verdicts are pinned
(not only their agreement). Before the rule was shared the four disagreed: the RL reward and the
interpreter check read "46.0" as 0 and "1,234" as 234, the chat check refused "The answer is 46.", and
`puyu eval` took the operand of "0+34=" for the answer 34 and counted the code of a tool call.
Generation is replaced only where the caller takes it as an argument (the engine, the agent's policy),
so each caller's own decoding and scoring run on real token ids of a trained tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import pytest

from puyu.eval import get_task
from puyu.eval.tool_use import interpreter_arithmetic_accuracy
from puyu.model.chat_format import ACTION_END, ACTION_START, IM_END, INTERPRETER
from puyu.tasks import verifiable as V
from puyu.tasks.synthetic import Problem
from puyu.train.evaluate import arithmetic_accuracy, chat_arithmetic_accuracy

ADD, SUB, BIG, ZERO = Problem(12, "+", 34), Problem(12, "-", 15), Problem(1000, "+", 234), Problem(0, "+", 34)
CALL = f"{ACTION_START}{INTERPRETER}\nprint(12+34){ACTION_END}\n"
CALL_46 = f"{ACTION_START}{INTERPRETER}\nprint(46){ACTION_END}\n"

# (problem, reply, right?)
TABLE = [
    (ADD, "46", True),
    (ADD, "12+34=46", True),
    (ADD, "12+34=46<|im_end|>", True),
    (ADD, "12+34=46<|im_end|>12+35=47", True),  # the turn ended at <|im_end|>
    (ADD, "12 + 34 = 46", True),
    (ADD, "The answer is 46.", True),
    (ADD, "46.0", True),
    (ADD, "$46", True),
    (ADD, "12+34=46, so the answer is 46.", True),
    (ADD, "Let me add.\n12+34=46\n", True),
    (ADD, "12+34=46 (2 digits)", True),  # the first number after the last '='
    (ADD, "12+34=47", False),
    (ADD, "12+34=", False),  # nothing after '=': never an operand
    (ADD, "12+34", False),  # the question repeated: its last number is an operand
    (ZERO, "0+34=", False),  # even when the operand is the answer
    (ADD, "12+34=46. Check: 46-34=12", False),  # the last '=' decides
    (ADD, "forty-six", False),
    (ADD, "", False),
    (SUB, "-3", True),
    (SUB, "12-15=-3", True),
    (SUB, "12 - 15 = \u22123", True),  # the Unicode minus
    (SUB, "3", False),
    (SUB, "12-15=3", False),
    (BIG, "1,234", True),
    (BIG, "1000+234=1234", True),
    (BIG, "1000+234=1,234.00", True),
    (ADD, CALL, False),  # a tool call has not answered yet
    (ADD, "46" + CALL, False),
    (ADD, CALL_46, False),
]


@dataclass
class _Result:
    token_ids: list[int]


class _ScriptedEngine:
    """Returns fixed token ids for each prompt (the `engine=` argument of the recipe's checks)."""

    def __init__(self, replies: list[list[int]]):
        self.replies = replies

    def generate(self, prompts, params):
        assert len(prompts) == len(self.replies)
        return [_Result(r) for r in self.replies]


def _rl(problem, reply):
    return V.score(reply, {"kind": "arithmetic", "answer": problem.answer, "messages": []}) == 1.0


def _eval(problem, reply):
    record = {"question": problem.prompt[:-1], "answer": problem.answer, "size": 1000, "style": "chat"}
    return get_task("arithmetic").score(reply, record) == 1.0


def _chat_check(tok, problem, reply):
    ids = tok.encode(reply) + [tok.special_ids[IM_END]]
    assert tok.decode(ids[:-1]) == reply  # the check reads exactly this reply
    res = chat_arithmetic_accuracy(None, tok, [problem], engine=_ScriptedEngine([ids]))
    return res["accuracy"] == 1.0


def _interpreter_check(problem, reply):
    def policy(messages, tools, interpreter):
        yield reply

    res = interpreter_arithmetic_accuracy(None, None, [problem], policy=policy)
    assert res["used_interpreter"] == 0.0
    return res["accuracy"] == 1.0


@pytest.mark.parametrize("problem, reply, right", TABLE, ids=[str(i) for i in range(len(TABLE))])
def test_every_arithmetic_check_gives_the_tables_verdict(tiny_tokenizer, problem, reply, right):
    verdicts = {"rl reward": _rl(problem, reply), "puyu eval": _eval(problem, reply),
                "recipe chat check": _chat_check(tiny_tokenizer, problem, reply)}
    if ACTION_START not in reply:  # the agent would run a call: its final answer never holds one
        verdicts["interpreter check"] = _interpreter_check(problem, reply)
    assert verdicts == {k: right for k in verdicts}


# Raw completions of the base prompt `12+34=`: (completion, right?). Only the first line is read.
RAW = [("46", True), (" 46", True), ("46.0", True), ("46\n12+35=47", True), ("47", False), ("", False),
       ("-46", False), ("\n46", False), ("4 6", False)]


@pytest.mark.parametrize("completion, right", RAW, ids=[str(i) for i in range(len(RAW))])
def test_base_check_and_eval_raw_style_read_prompt_and_first_line(tiny_tokenizer, completion, right):
    tok = tiny_tokenizer
    ids = tok.encode(completion) + [tok.eos_id]
    base = arithmetic_accuracy(None, tok, [ADD], engine=_ScriptedEngine([ids]))["accuracy"] == 1.0
    record = {"question": "12+34", "answer": "46", "size": 100, "style": "raw"}
    raw = get_task("arithmetic").score(completion, record) == 1.0
    assert {"base check": base, "puyu eval raw": raw} == {"base check": right, "puyu eval raw": right}


def test_the_rule_reads_values():
    assert V.arithmetic_answer("12+34=46<|im_end|>") == 46
    assert V.arithmetic_answer("46[UNUSED_TOKEN_145]") == 46  # a raw token's digits are not the answer
    assert V.arithmetic_answer("16+17=33[UNUSED_TOKEN_145]38=71") == 33 == V.arithmetic_answer("33</s>\n71")
    assert V.arithmetic_answer("[UNUSED_TOKEN_146]46") == 46
    assert V.arithmetic_answer("12-15=-3") == -3 and V.arithmetic_answer("12-15") == 15
    assert V.arithmetic_answer("x = 2.5") == Fraction(5, 2)
    assert V.arithmetic_answer("12+34=") is None and V.arithmetic_answer("no number") is None
    assert get_task("arithmetic").extract("12+34=46.0", {"question": "12+34", "answer": "46"}) == "46"
