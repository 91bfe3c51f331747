"""Task scorers and inputs: the tools AST check, the math-verify pool's time limit, dataset errors,
and that every task pickles (RL sends scorers to worker processes)."""

from __future__ import annotations

import json
import pickle

import pytest

from puyu.eval import Context, EvalError, get_task
from puyu.eval.competition_math import last_boxed
from puyu.eval.verify_pool import VerifyPool

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                     "scale": {"type": "number"}}, "required": ["city"]}}}]
REC = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": TOOLS,
       "expected": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}


def call(name, args) -> str:
    return f'Let me check.<|action_start|><|plugin|>\n{json.dumps({"name": name, "parameters": args})}<|action_end|>'


@pytest.mark.parametrize("output,ok", [
    (call("get_weather", {"city": "Oslo"}), 1),
    (call("get_weather", {"city": " oslo "}), 1),  # normalised: stripped, case-folded
    (call("get_weather", {"city": "Rome"}), 0),  # right function, wrong argument (the example)
    (call("get_time", {"city": "Oslo"}), 0),
    (call("get_weather", {}), 0),  # required argument missing
    (call("get_weather", {"city": "Oslo", "country": "NO"}), 0),  # unknown argument
    (call("get_weather", {"city": "Oslo", "days": 2.5}), 0),  # float for an integer
    (call("get_weather", {"city": "Oslo", "scale": 2}), 1),  # int accepted for a number
    (call("get_weather", {"city": 5}), 0),  # wrong type
    ('<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {"city": "Oslo"<|action_end|>', 0),
    ("It is sunny in Oslo.", 0),  # no call made
])
def test_tool_call_checked_like_an_ast(output, ok):
    assert get_task("tools").score(output, REC) == ok


def test_tools_no_call_expected_and_valid_json_rate():
    t = get_task("tools")
    rec = {**REC, "expected": []}
    assert t.score("Hello! How can I help?", rec) == 1
    assert t.score(call("get_weather", {"city": "Oslo"}), rec) == 0
    bad = '<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {<|action_end|>'
    assert t.details(bad, REC)["valid_json"] is False
    assert t.details(call("get_weather", {"city": "Oslo"}), REC) == {
        "called": True, "valid_json": True, "name": True, "args": True}


def test_generated_tool_set_is_seeded_and_has_no_call_questions():
    t = get_task("tools")
    a = t.samples(Context(limit=12, seed=3))
    b = t.samples(Context(limit=12, seed=3))
    assert [s.record for s in a] == [s.record for s in b]
    assert any(not s.record["expected"] for s in a) and any(s.record["expected"] for s in a)


def test_math_verify_pool_replaces_a_stuck_worker():
    pool = VerifyPool(workers=1, timeout=1.5)
    try:
        assert pool.verify("\\frac12", "0.5") is True  # also waits for the worker's imports
        # SymPy needs about 11 s to compare these (measured on the idle 2-core VM; 1 s for the 300th
        # powers): past the limit, so the worker is killed and the item reported as timed out (None) ...
        assert pool.verify("(x+1)^{1000}", "(x+2)^{1000}") is None
        assert pool.timeouts == 1
        # ... and a fresh worker answers the next item.
        assert pool.verify("2", "3") is False
    finally:
        pool.close()


def test_last_boxed_balanced_braces():
    assert last_boxed("\\boxed{\\frac{a}{b}} then \\boxed{x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert last_boxed("no box") is None


def test_dataset_errors_name_the_file_and_line(tmp_path):
    f = tmp_path / "test.jsonl"
    f.write_text('{"question": "q", "answer": "x\\n#### 5"}\n{"question": "q2"\n')
    with pytest.raises(EvalError, match=r"test.jsonl:2: not valid JSON"):
        get_task("gsm8k").samples(Context(data=str(f)))
    f.write_text('{"question": "q", "answer": "x\\n#### 5"}\n{"question": "q2"}\n')
    with pytest.raises(EvalError, match=r"test.jsonl:2: sample has no 'answer'"):
        get_task("gsm8k").samples(Context(data=str(f)))
    f.write_text('{"question": "q", "answer": "x\\n#### 5"}\n')
    assert len(get_task("gsm8k").samples(Context(data=str(f), limit=3))) == 1  # capped, as other harnesses do
    with pytest.raises(EvalError, match="does not exist"):
        get_task("math").samples(Context(data=str(tmp_path / "missing.json")))
    m = tmp_path / "m.json"
    m.write_text(json.dumps([{"problem": "p", "solution": "no box here"}]))
    with pytest.raises(EvalError, match="no \\\\boxed"):
        get_task("math").samples(Context(data=str(m)))


def test_math_reads_the_release_layout_and_groups_by_level_and_type(tmp_path):
    d = tmp_path / "test" / "algebra"
    d.mkdir(parents=True)
    (d / "1.json").write_text(json.dumps({"problem": "1+1?", "solution": "$\\boxed{2}$", "level": "Level 1",
                                          "type": "Algebra"}))
    (s,) = get_task("math").samples(Context(data=str(tmp_path)))
    assert s.groups == {"level": "Level 1", "type": "Algebra"}
    assert get_task("math").score("It is \\boxed{2}.", s.record) == 1


@pytest.mark.parametrize("name", ["arithmetic", "gsm8k", "math", "needle", "tools", "perplexity"])
def test_tasks_pickle(name):
    t = get_task(name)
    assert pickle.loads(pickle.dumps(t)).name == name


def test_unknown_task():
    with pytest.raises(EvalError, match="unknown task 'nope'"):
        get_task("nope")


@pytest.mark.parametrize("kind", ["single", "multi", "reasoning"])
def test_needle_prompts_have_exact_lengths_and_every_needle(kind, tiny_tokenizer):
    t = get_task("needle")
    tok = tiny_tokenizer
    ctx = Context(seed=1, tokenizer=tok, options={"kind": kind, "k": "3", "lengths": "300,600",
                                                  "depths": "0,50,100", "trained_length": "300"})
    samples = t.samples(ctx)
    assert [len(s.prompt_ids) for s in samples] == [300] * 3 + [600] * 3
    for s in samples:
        text = tok.decode(s.prompt_ids)
        for a in s.record["answers"] if kind != "reasoning" else []:
            assert a in text  # each needle's answer is in the haystack, intact
        answers = s.record["answers"]
        assert t.score(" ".join(answers), s.record) == 1.0
        assert t.score("nothing", s.record) == 0.0
    if kind == "multi":
        rec = samples[0].record
        assert t.score(rec["answers"][0], rec) == pytest.approx(1 / 3)  # each needle scored


def test_sentence_ends_of_the_internlm2_tokenizer(ref_tokenizer):
    from puyu.eval.needle import sentence_end_ids

    ends = sentence_end_ids(ref_tokenizer)
    for text in (".", "。", "！", "？", "!", "?"):
        ids = ref_tokenizer.encode(f"x{text}")
        assert ids[-1] in ends, text
    assert ref_tokenizer.encode("x,")[-1] not in ends


def test_gsm8k_opencompass_prompts_render_its_layout_from_the_users_train_rows(tmp_path):
    """prompt=opencompass: OpenCompass's gsm8k_gen_1d7fe4 turns ("Question: ...\\nLet's think step by
    step\\nAnswer:", answers ending "The answer is N\\n") with exemplars from the first rows of the train
    file, calculator annotations dropped; prompt=opencompass-0shot: its boxed zero-shot turn. The
    expected text is written out here in the InternLM2 chat layout (`<s><|im_start|>role\\n...<|im_end|>\\n`)."""
    from puyu.model.chat_format import render_chat

    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "Ann has 3 pens and buys 2. How many?", "answer": "She has 3+2=<<3+2=5>>5.\n#### 5"},
        {"question": "A box holds 1,200 nails; 200 are used. How many are left?",
         "answer": "1200-200=<<1200-200=1000>>1000 are left.\n#### 1,000"},
        {"question": "unused", "answer": "x\n#### 1"}]))
    test.write_text(json.dumps({"question": "What is 2 times 4?", "answer": "2*4=<<2*4=8>>8\n#### 8"}) + "\n")
    ask = "Question: {}\nLet's think step by step\nAnswer:"
    (s,) = get_task("gsm8k").samples(Context(data=str(test), options={
        "prompt": "opencompass", "fewshot_data": str(train), "shots": "2"}))
    assert render_chat(s.messages) == (
        "<s><|im_start|>user\n" + ask.format("Ann has 3 pens and buys 2. How many?") + "<|im_end|>\n"
        "<|im_start|>assistant\nShe has 3+2=5.\nThe answer is 5\n<|im_end|>\n"
        "<|im_start|>user\n" + ask.format("A box holds 1,200 nails; 200 are used. How many are left?") + "<|im_end|>\n"
        "<|im_start|>assistant\n1200-200=1000 are left.\nThe answer is 1000\n<|im_end|>\n"
        "<|im_start|>user\n" + ask.format("What is 2 times 4?") + "<|im_end|>\n<|im_start|>assistant\n")
    (z,) = get_task("gsm8k").samples(Context(data=str(test), options={"prompt": "opencompass-0shot"}))
    assert z.messages == [{"role": "user", "content": "What is 2 times 4?\nPlease reason step by step, and put "
                                                      "your final answer within \\boxed{}."}]
    assert get_task("gsm8k").score("2*4 = 8, so \\boxed{8}. Check: 8 / 4 = 2.", z.record) == 1  # the box, not 2
    with pytest.raises(EvalError, match="has 3 rows; 4 shots asked"):  # OpenCompass's 4 shots by default
        get_task("gsm8k").samples(Context(data=str(test), options={"prompt": "opencompass", "fewshot_data": str(train)}))
    with pytest.raises(EvalError, match="fewshot_data=PATH/train.jsonl"):
        get_task("gsm8k").samples(Context(data=str(test), options={"prompt": "opencompass"}))
    (q,) = get_task("gsm8k").samples(Context(data=str(test), options={
        "prompt": "opencompass", "fewshot_data": str(train), "shots": "0"}))
    assert q.messages == [{"role": "user", "content": ask.format("What is 2 times 4?")}]
