"""The tool-use scorers accept exactly the turns the nano SFT data teaches, and nothing near them;
the measurements count known turns right and run end to end on a small model (an untrained one
scores zero, not an error)."""

from __future__ import annotations

import json
import random
import re

from puyu.eval import tool_use as T
from puyu.eval.tools import generated_set
from puyu.model.chat_format import render_chat
from puyu.tasks import synthetic as S


def _first_assistant_turn(rec: dict) -> str:
    """The first assistant turn of a training record, as the model would write it."""
    head = render_chat(rec["messages"][:2], tools=rec.get("tools"), interpreter=rec.get("interpreter"))
    full = render_chat(rec["messages"][:3], tools=rec.get("tools"), interpreter=rec.get("interpreter"),
                       add_generation_prompt=False)
    assert full.startswith(head)
    return full[len(head):]


def test_training_tool_calls_score_right_and_a_changed_city_does_not():
    rng = random.Random(0)
    for _ in range(20):
        rec = S.tool_chat(rng)
        call = rec["messages"][2]["tool_calls"][0]["function"]
        turn = _first_assistant_turn(rec)
        city = call["arguments"]["city"]
        assert T.tool_call_right(turn, call["name"], city) == (True, True)
        other = next(c for c in S.CITIES if c != city)
        assert T.tool_call_right(turn, call["name"], other) == (True, False)
        other_fn = "get_time" if call["name"] == "get_weather" else "get_weather"
        assert T.tool_call_right(turn, other_fn, city) == (False, False)
    assert T.tool_call_right("It is sunny.<|im_end|>", "get_weather", "Oslo") == (False, False)


def test_interpreter_calls_need_exactly_both_operands():
    rng = random.Random(1)
    seen = 0
    while seen < 10:
        rec = S.interpreter_chat(rng, p_arith=0.0)
        q = rec["messages"][1]["content"]
        if "*" not in q:
            continue
        seen += 1
        a, b = (int(x) for x in re.findall(r"\d+", q))
        turn = _first_assistant_turn(rec)
        assert T.interpreter_call_right(turn, a, b) == (True, True)
        assert T.interpreter_call_right(turn, a + 1, b) == (True, False)
    bad = "<|action_start|><|interpreter|>\nprint(123 * 4567 + 1)<|action_end|>"
    assert T.interpreter_call_right(bad, 123, 4567) == (True, False)


def test_held_out_phrasings_never_appear_in_training_dialogues():
    rng = random.Random(2)
    asked = {S.tool_chat(rng)["messages"][1]["content"] for _ in range(3000)}
    for train, held in S.TOOL_QUESTIONS.values():
        for tmpl in held:
            assert not any(tmpl.format(c=c) in asked for c in S.CITIES), tmpl
        assert set(train).isdisjoint(held)


def test_measurements_run_on_a_small_untrained_model(tiny_tokenizer):
    """End to end through the engine: a random model's greedy turns make no call, so it scores exactly 0."""
    from puyu.model.config import get_preset
    from puyu.model.transformer import InternLM2ForCausalLM

    model = InternLM2ForCausalLM(get_preset("nano-tiny", vocab_size=tiny_tokenizer.vocab_size)).reset_parameters(seed=0)
    res = T.tool_call_accuracy(model, tiny_tokenizer, n=4)
    assert (res["n"], res["accuracy"], res["right_function"], len(res["wrong_examples"])) == (4, 0.0, 0.0, 4)
    res = T.interpreter_call_accuracy(model, tiny_tokenizer, n=4)
    assert (res["n"], res["accuracy"], res["interpreter_calls"], len(res["wrong_examples"])) == (4, 0.0, 0.0, 4)


def _call(fn: str, city: str) -> str:
    return "<|action_start|><|plugin|>\n" + json.dumps({"name": fn, "parameters": {"city": city}}) + "<|action_end|>"


def test_accuracies_count_known_turns():
    """Turns whose rightness is known: the right call for every other question, the right function with
    another city (or a case-folded one, which the suite's lenient check would accept) for the rest."""
    def answer(recs):
        out = []
        for i, rec in enumerate(recs):
            exp = rec["expected"][0]
            city = exp["arguments"]["city"]
            wrong = city.lower() if i % 4 == 1 else next(c for c in S.CITIES if c != city)
            out.append(_call(exp["name"], city if i % 2 == 0 else wrong))
        return out

    for held_out in (True, False):
        res = T.tool_call_accuracy(None, None, n=20, seed=5, held_out=held_out, turns=answer)
        assert (res["accuracy"], res["right_function"], res["n"]) == (0.5, 1.0, 20)
    recs = generated_set(5, 20, "held_out", no_call_every=0)
    asked = [(r["expected"][0]["name"], r["expected"][0]["arguments"]["city"]) for r in recs]
    assert sorted(asked) == sorted((fn, S.CITIES[i % 10]) for i, fn in zip(range(20), ["get_weather", "get_time"] * 20))
    for rec, (fn, city) in zip(recs, asked):  # each question is a held-out phrasing of its function and city
        assert rec["messages"][-1]["content"] in {t.format(c=city) for t in S.TOOL_QUESTIONS[fn][1]}

    def multiply(chats):
        out = []
        for i, c in enumerate(chats):
            a, b = (int(x) for x in re.findall(r"\d+", c["messages"][-1]["content"]))
            code = f"print({a}*{b})" if i % 3 else f"print({a}*{b + 1})"
            out.append(f"<|action_start|><|interpreter|>\n```python\n{code}\n```<|action_end|>")
        return out

    res = T.interpreter_call_accuracy(None, None, n=9, seed=1, turns=multiply)
    assert (res["accuracy"], res["interpreter_calls"]) == (6 / 9, 1.0)
