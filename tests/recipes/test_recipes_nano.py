"""The nano recipe's data and plumbing: held-out test problems stay out of training data, passkey
documents fit their token budget, and a miniature run of every stage writes the report and a chat
model that loads."""

from __future__ import annotations

import hashlib
import json
import random
import re

import pytest
from tiny_models import TINY_NANO

from puyu.tasks import synthetic as S


def test_held_out_problems_never_reach_training_data():
    small, big = S.held_out_problems(0, 300, 100)
    assert len(set(small)) == 300 and len(set(big)) == 100
    assert all(p.a < 100 and p.b < 100 for p in small) and {p.op for p in small} == {"+", "-"}
    exclude = set(small) | set(big)
    rng = random.Random(1)
    recs = S.arithmetic_records(rng, 30000, 0.3, exclude, p_sheet=0.25, p_prefix=0.3)
    seen = {r["prompt"] for r in recs if "prompt" in r}
    for r in recs:  # worksheets and problems after a prefix: every problem is the end of an unscored segment
        for text, scored in r.get("segments", []):
            if not scored:
                seen.add(re.search(r"\d+[+-]\d+=$", text)[0])
    assert len(seen) > 10000 and all(q.endswith("=") for q in seen)
    assert not seen & {p.prompt for p in exclude}
    chats = [S.arithmetic_chat(rng, exclude, 0.3) for _ in range(3000)]
    asked = {c["messages"][-1]["content"].split("=")[0] for c in chats}
    assert not asked & {p.prompt[:-1] for p in exclude}
    # Answers are plain decimals, negative results keep their sign.
    assert S.Problem(12, "-", 34).answer == "-22" and S.Problem(99, "+", 99).answer == "198"


def test_arithmetic_after_unrelated_text_scores_only_the_answer():
    rng = random.Random(3)
    recs = S.arithmetic_records(rng, 2000, 0.0, set(), p_sheet=0.0, p_prefix=0.5)
    prefixed = [r for r in recs if "segments" in r]
    assert 800 < len(prefixed) < 1200
    for r in prefixed:
        (context, unscored), (ans, scored) = r["segments"]
        m = re.search(r"(\d+)([+-])(\d+)=$", context)
        assert (unscored, scored) == (False, True) and m and context[:m.start()].strip()
        assert S.Problem(int(m[1]), m[2], int(m[3])).answer == ans


def test_interpreter_code_writes_the_question_operator_as_it_is():
    """`+` and ` +` are different tokens: the code copies `a+b` as the question writes it."""
    rng = random.Random(4)
    checked = 0
    for _ in range(200):
        rec = S.interpreter_chat(rng, p_arith=0.5)
        q, code = rec["messages"][1]["content"], rec["messages"][2]["code"]
        expr = code.removeprefix("print(").removesuffix(")")
        if any(op in q for op in "+-*"):  # (not "Run code to multiply a by b.")
            assert expr in q, (q, code)
            checked += 1
    assert checked > 100


def test_passkey_documents_fit_their_token_budget(tiny_tokenizer):
    tok = tiny_tokenizer
    lo, hi = S.passkey_filler_range(tok, 100, 300)
    assert 0 <= lo <= hi
    rng = random.Random(0)
    for rec in S.passkey_records(rng, 40, lo, hi):
        n = len(tok.encode(rec["text"])) + 2
        assert n <= 300 + 2, n  # concatenated filler may merge across block edges, never grow much
        key = rec["text"].rsplit(" ", 1)[-1].rstrip(".")
        assert rec["text"].count(key) == 3 and len(key) == 5


def test_copy_and_tool_records_render(tiny_tokenizer):
    from puyu.model.chat_format import chat_tokens, render_chat

    rng = random.Random(0)
    for rec in S.copy_records(rng, 5, 3, 6):
        assert rec["prompt"].split("Repeat after me: ")[1].split("\n")[0] == rec["completion"].strip()
    for rec in [S.tool_chat(rng), S.interpreter_chat(rng), S.greeting_chat(rng)]:
        text = render_chat(rec["messages"], tools=rec.get("tools"), interpreter=rec.get("interpreter"),
                           add_generation_prompt=False)
        ids, mask = chat_tokens(tiny_tokenizer, rec["messages"], tools=rec.get("tools"),
                                interpreter=rec.get("interpreter"))
        assert any(mask) and ids == tiny_tokenizer.encode(text, allow_special=True)


@pytest.mark.slow
def test_miniature_nano_run_writes_report_and_chat_model(tmp_path):
    import torch

    from puyu.errors import ConfigError
    from puyu.model.checkpoint import load_model
    from puyu.recipes.nano import NanoRecipe, run_nano
    from puyu.train.recipe import load_recipe

    torch.set_num_threads(1)
    tiny = TINY_NANO + [
            "pretrain.steps=6", "pretrain.eval_every=3", "longctx.steps=2", "longctx.eval_every=2",
            "longctx.seq_len=256", "corpus.long_passkey_tokens=[50, 256]",
            "sft.steps=2", "sft.eval_every=2", "eval.passkey_n=3", "eval.task_eval_problems=5", "eval.tool_n=4",
            "eval.interpreter_arith_n=2",
            "align.enabled=true", "align.method=ppo", "align.judge_prompts=8", "align.samples=2", "align.iterations=2",
            "align.prompts_per_iter=4",
            "align.critic_warmup=1", "align.max_new_tokens=6", "align.slow_prompts=4", "align.fast_pairs=4",
            "align.eval_tools=4", "align.eval_interpreter=4", "align.rm_held_out_prompts=6",
            f"out_dir={tmp_path / 'nano'}", "progress=false", "threads=1"]
    rec = load_recipe(None, tiny, cls=NanoRecipe)
    report = run_nano(rec)
    out = tmp_path / "nano"
    for f in ("report.md", "report.json", "loss.png", "chat/config.json", "chat/tokenizer.model",
              "align/report.md", "align/ppo/hf/config.json", "align/rm/hf/config.json",
              "eval/report.md", "eval/needle@plain/needle_heatmap.png", "eval/arithmetic/predictions.jsonl"):
        assert (out / f).exists(), f
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["targets"]) == set(report["targets"])
    assert 0.0 <= saved["eval"]["base_arith_100"]["accuracy"] <= 1.0
    ev = saved["eval"]
    assert ev["tool_call"]["n"] == 4 and ev["interpreter_call"]["n"] == 4 and ev["interpreter_arith_1000"]["n"] == 2
    assert len(saved["curve"]) == 2 and saved["timings_s"]["total"] > 0
    # chat/ is the RL model once alignment has run; the SFT model stays in sft/hf.
    rl_weights = (out / "align/ppo/hf/model.safetensors").read_bytes()
    assert (out / "chat/model.safetensors").read_bytes() == rl_weights
    assert (out / "sft/hf/model.safetensors").read_bytes() != rl_weights
    assert "holds the RL model" in (out / "report.md").read_text()
    chat = load_model(out / "chat")
    assert chat.config.rope_theta == rec.longctx.rope_theta and chat.config.hidden_size == 64
    # --resume skips every finished stage.
    align_report = (out / "align" / "report.md").read_text()
    again = run_nano(rec, resume=True)
    assert "pretrain" not in again["timings_s"] and again["stages"]["pretrain"]["steps"] == 6
    # the finished alignment too: its report (and timings) kept, the same RL model in chat/
    assert "align" not in again["timings_s"] and again["align"]["rl_dir"] == report["align"]["rl_dir"]
    assert (out / "align" / "report.md").read_text() == align_report
    assert (out / "chat/model.safetensors").read_bytes() == rl_weights
    # ... and the 20-minute target is not measured then (it used to read "0.0 min, met").
    timing = again["targets"]["core recipe (corpus to SFT) <= 20 min wall"]
    assert timing["met"] is None and timing["value"] is None and "pretrain" in timing["reused"]
    assert "not measured (corpus, tokenizer, shards, pretrain, longctx, sft reused" in (out / "report.md").read_text()
    # --resume under other settings than a finished stage was made with is refused, and nothing is removed.
    weights = (out / "pretrain/hf/model.safetensors").read_bytes()
    for change, words in (("pretrain.steps=7", r"pretrain\.steps 6 -> 7"), ("corpus.copy=301", r"corpus\.copy 300 -> 301"),
                          ("align.iterations=3", r"align\.iterations 2 -> 3")):
        with pytest.raises(ConfigError, match=words):
            run_nano(load_recipe(None, tiny + [change], cls=NanoRecipe), resume=True)
    assert (out / "pretrain/hf/model.safetensors").read_bytes() == weights and (out / "align/ppo/hf").exists()
    # SFT run again: alignment starts afresh from the new SFT model, never from the old RL checkpoints.
    (out / "sft" / "done.json").unlink()
    (out / "align" / "stale").write_text("from the old SFT model")
    third = run_nano(rec, resume=True)
    assert "sft" in third["timings_s"] and not (out / "align" / "stale").exists()
    assert (out / "chat/model.safetensors").read_bytes() == (out / "align/ppo/hf/model.safetensors").read_bytes()


def test_pretraining_curve_scores_both_operators():
    from puyu.recipes.nano import curve_problems

    small, _ = S.held_out_problems(0, 400, 10)
    curve = curve_problems(small, 200)
    assert len(curve) == 200 and len(set(curve)) == 200 and set(curve) <= set(small)
    assert sum(p.op == "+" for p in curve) == 100 and sum(p.op == "-" for p in curve) == 100
    assert curve_problems(small, 5) == curve_problems(small, 5) and len(curve_problems(small, 5)) == 5
    assert curve_problems(small[:3], 10) == small[:3]


def test_turn_ending_target_counts_sample_chats_and_chat_arithmetic_together():
    # a looping greeting among the sample chats must fail the target even when every arithmetic chat ended
    from puyu.recipes.nano import _targets, _turns_ended

    samples = [{"ends_with_im_end": True}] * 5 + [{"ends_with_im_end": False}]
    ev = {"chat_samples": {"samples": samples, "ends_with_im_end": 5 / 6},
          "chat_arith_100": {"accuracy": 0.5, "ends_with_im_end": 1.0, "n": 394},
          "base_arith_100": {"accuracy": 0.9}, "passkey": {"accuracy": 0.9}}
    assert _turns_ended(ev) == 399 / 400
    t = _targets({"eval": ev, "timings_s": {"core": 600.0}})
    key = next(k for k in t if k.startswith("chat turns end"))
    assert t[key] == {"value": 399 / 400, "met": False}
    ev["chat_samples"] = {"samples": [{"ends_with_im_end": True}] * 6, "ends_with_im_end": 1.0}
    ev["chat_arith_100"]["ends_with_im_end"] = 393 / 394
    assert _targets({"eval": ev, "timings_s": {"core": 600.0}})[key]["met"] is False
    ev["chat_arith_100"]["ends_with_im_end"] = 1.0
    assert _targets({"eval": ev, "timings_s": {"core": 600.0}})[key] == {"value": 1.0, "met": True}


def _tiny_corpus(*overrides: str) -> list[str]:
    """`--set` values for a corpus small enough to build in seconds, each `overrides` entry (KEY=VALUE) replacing
    the default of its key."""
    sets = dict(x.split("=", 1) for x in (
        "corpus.docs_chars=20000", "corpus.long_docs_chars=5000", "corpus.arithmetic=2000", "corpus.copy=100",
        "corpus.pretrain_chats=100", "corpus.pretrain_tools=20", "corpus.long_arithmetic=300", "corpus.chats=100",
        "corpus.clean=false", "corpus.test_small=40", "corpus.test_big=10", "progress=false", *overrides))
    return [f"{k}={v}" for k, v in sets.items()]


def test_long_context_reweighting_leaves_every_other_record_as_it_was(tmp_path):
    from puyu.recipes.nano import NanoRecipe, build_corpus
    from puyu.train.recipe import load_recipe

    tiny = _tiny_corpus("corpus.long_arithmetic=3000")
    base = load_recipe(None, tiny + ["corpus.long_arithmetic_p_short=null"], cls=NanoRecipe)
    mixed = load_recipe(None, tiny + ["corpus.long_arithmetic_p_short=0.25", "corpus.long_arithmetic_p_close=0.3"],
                        cls=NanoRecipe)
    build_corpus(base, tmp_path / "a")
    build_corpus(mixed, tmp_path / "b")
    for f in ("pretrain_train.jsonl", "pretrain_val.jsonl", "sft_train.jsonl", "sft_val.jsonl", "test_problems.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f

    def close_share(path):
        subs = [m for line in path.read_text().splitlines()
                for m in re.findall(r"(?<!\d)(\d{1,2})-(\d{1,2})=", line)]
        return sum(abs(int(a) - int(b)) <= 9 for a, b in subs) / len(subs)

    # uniform operands: ~18% of subtractions have |a-b| <= 9; reweighted: 30% by construction plus the rest's
    assert close_share(tmp_path / "a" / "longctx_train.jsonl") < 0.25 < 0.37 < close_share(
        tmp_path / "b" / "longctx_train.jsonl")


def test_extra_sft_arithmetic_chats_are_added_apart_from_every_other_record(tmp_path):
    """`corpus.sft_arithmetic_chats`: that many more arithmetic chats in SFT's training split, none of them a held-out
    problem, and every other file (SFT's other conversations and validation split included) as without them."""
    from puyu.recipes.nano import NanoRecipe, _load_tests, build_corpus
    from puyu.train.recipe import load_recipe

    tiny = _tiny_corpus("corpus.test_small=300")
    build_corpus(load_recipe(None, tiny + ["corpus.sft_arithmetic_chats=0"], cls=NanoRecipe), tmp_path / "a")
    build_corpus(load_recipe(None, tiny + ["corpus.sft_arithmetic_chats=500"], cls=NanoRecipe), tmp_path / "b")
    for f in ("pretrain_train.jsonl", "longctx_train.jsonl", "sft_val.jsonl", "test_problems.json", "tokenizer_text.txt"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    a = (tmp_path / "a" / "sft_train.jsonl").read_text().splitlines()
    b = (tmp_path / "b" / "sft_train.jsonl").read_text().splitlines()
    assert b[: len(a)] == a and len(b) == len(a) + 500
    held_out = {p.prompt for tests in _load_tests(tmp_path / "b") for p in tests}
    answers = [json.loads(line)["messages"][-1]["content"] for line in b[len(a):]]
    assert all(re.fullmatch(r"\d+[+-]\d+=-?\d+", x) for x in answers)
    assert not {x[: x.index("=") + 1] for x in answers} & held_out


def test_sft_arithmetic_p_close_reweights_only_the_extra_arithmetic_chats(tmp_path):
    """`corpus.sft_arithmetic_p_close`: the extra SFT arithmetic chats' subtractions have |a-b| <= 9 more often;
    every other record (the 4,000-style conversations, validation, pretraining) is as without it, and 0 draws
    exactly what the recipe drew before the setting existed."""
    from puyu.recipes.nano import NanoRecipe, _load_tests, build_corpus
    from puyu.train.recipe import load_recipe

    tiny = _tiny_corpus("corpus.test_small=300", "corpus.sft_arithmetic_chats=1500")
    build_corpus(load_recipe(None, tiny + ["corpus.sft_arithmetic_p_close=0"], cls=NanoRecipe), tmp_path / "a")
    build_corpus(load_recipe(None, tiny + ["corpus.sft_arithmetic_p_close=0.5"], cls=NanoRecipe), tmp_path / "b")
    for f in ("pretrain_train.jsonl", "longctx_train.jsonl", "sft_val.jsonl", "test_problems.json", "tokenizer_text.txt"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    a = (tmp_path / "a" / "sft_train.jsonl").read_text().splitlines()
    b = (tmp_path / "b" / "sft_train.jsonl").read_text().splitlines()
    assert len(a) == len(b) and a[:-1500] == b[:-1500]
    # p_close 0 is the generator as it was before the setting existed: these 300 chats hashed the same with the
    # source of commit a36b412, and the recipe's chats are arithmetic_chat's own draws
    rng = random.Random("puyu-sft-arith-0")
    ex = {S.Problem(*x) for x in [(12, "+", 34), (48, "-", 51), (5, "-", 9)]}
    old = json.dumps([S.arithmetic_chat(rng, ex, p_big=0.2, p_close=0.0) for _ in range(300)], sort_keys=True)
    pinned = "82d0e00d247cf61a5cb2c9c8cd89efbfa34ca0a72ad474be5506e4756acc6c3f"
    assert hashlib.sha256(old.encode()).hexdigest() == pinned
    rng = random.Random("puyu-sft-arith-0")
    held_out = {p for tests in _load_tests(tmp_path / "a") for p in tests}
    assert [json.loads(x) for x in a[-1500:]] == [S.arithmetic_chat(rng, held_out, p_big=0.2) for _ in range(1500)]

    def close_share(lines):
        subs = [m.groups() for x in lines
                for m in [re.fullmatch(r"(\d{1,2})-(\d{1,2})=-?\d+", json.loads(x)["messages"][-1]["content"])] if m]
        return sum(abs(int(x) - int(y)) <= 9 for x, y in subs) / len(subs)

    # uniform: ~18% of the < 100 subtractions are close; 0.5: half by construction plus ~18% of the rest
    assert close_share(a[-1500:]) < 0.26 < 0.5 < close_share(b[-1500:])
    answers = [json.loads(x)["messages"][-1]["content"] for x in b[-1500:]]
    assert not {x[: x.index("=") + 1] for x in answers} & {p.prompt for p in held_out}


def test_sft_no_call_tools_offers_the_tools_in_conversations_without_a_call_and_changes_nothing_else(tmp_path):
    from puyu.recipes.nano import NanoRecipe, build_corpus
    from puyu.train.recipe import load_recipe

    tiny = _tiny_corpus("corpus.chats=300", "corpus.sft_arithmetic_chats=50")
    build_corpus(load_recipe(None, tiny + ["corpus.sft_no_call_tools=0"], cls=NanoRecipe), tmp_path / "a")
    build_corpus(load_recipe(None, tiny + ["corpus.sft_no_call_tools=0.5"], cls=NanoRecipe), tmp_path / "b")
    for f in ("pretrain_train.jsonl", "longctx_train.jsonl", "tokenizer_text.txt"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    a = [json.loads(x) for x in (tmp_path / "a" / "sft_train.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / "sft_train.jsonl").read_text().splitlines()]
    assert [x["messages"] for x in a] == [x["messages"] for x in b]
    offered = [y for x, y in zip(a, b) if x != y]
    calls = lambda r: any(m.get("tool_calls") or m.get("code") for m in r["messages"])  # noqa: E731
    assert offered and all(r["tools"] == S.TOOLS and not calls(r) for r in offered)
    no_call = [x for x in a if not x.get("tools") and not x.get("interpreter")]
    assert 0.35 < len(offered) / len(no_call) < 0.65  # p = 0.5 of the conversations without a call
    assert a[-50:] == b[-50:]  # the extra arithmetic chats come after, untouched


def test_a_stage_made_before_extra_sft_arithmetic_chats_is_refused_when_they_are_asked_for(tmp_path):
    """A settings.json without `corpus.sft_arithmetic_chats` was made with none (MADE_BEFORE), whatever today's
    default: reused when the run asks for 0, refused with the key named when it asks for more."""
    from puyu.errors import ConfigError
    from puyu.recipes.nano import NanoRecipe, plan_stages, stage_settings

    st = {n: stage_settings(NanoRecipe(), n) for n in ("corpus", "sft")}
    dirs = _stage_dirs(tmp_path, ("corpus", "sft"))
    for n in dirs:
        _stamp(dirs[n], {k: v for k, v in st[n].items() if k != "corpus.sft_arithmetic_chats"})
    none = {n: {**v, "corpus.sft_arithmetic_chats": 0} for n, v in st.items()}
    assert plan_stages(dirs, none, True) == {"corpus": "reuse", "sft": "reuse"}
    more = {n: {**v, "corpus.sft_arithmetic_chats": 6000} for n, v in st.items()}
    with pytest.raises(ConfigError, match=r"corpus\.sft_arithmetic_chats \(not set: made before this setting existed, i\.e\. 0\) -> 6000"):
        plan_stages(dirs, more, True)


def test_a_long_context_stage_made_with_stream_windows_is_refused_by_the_whole_document_recipe(tmp_path):
    """A long-context settings.json without `longctx.pack` cut windows over the stream (MADE_BEFORE): reused when
    the run asks for stream rows (`stream`, or null: the stage's old packing; the fit, unused there, whatever it
    is), refused with the key and the old value named under today's whole documents."""
    from puyu.errors import ConfigError
    from puyu.recipes.nano import NanoRecipe, plan_stages, stage_settings
    from puyu.train.recipe import load_recipe

    st = {n: stage_settings(NanoRecipe(), n) for n in ("corpus", "pretrain", "longctx")}
    assert (st["longctx"]["longctx.pack"], st["longctx"]["longctx.pack_fit"]) == ("docs", "best")
    assert st["pretrain"]["pretrain.pack"] == "stream"
    dirs = _stage_dirs(tmp_path, ("corpus", "pretrain", "longctx"))
    older = {  # before `pack` (every fit "next"), and before `pack_fit` too (neither key)
        "pack": {n: {k: "next" if k.endswith(".pack_fit") else v for k, v in st[n].items() if not k.endswith(".pack")}
                 for n in st},
        "pack_fit": {n: {k: v for k, v in st[n].items() if not k.endswith((".pack", ".pack_fit"))} for n in st}}
    for made in older.values():
        for n in dirs:
            _stamp(dirs[n], made[n])
        for sets in (["longctx.pack=stream"], ["longctx.pack=null"], ["longctx.pack=stream", "longctx.pack_fit=best"]):
            r = load_recipe(None, sets, cls=NanoRecipe)
            then = {n: stage_settings(r, n) for n in st}
            assert plan_stages(dirs, then, True) == {"corpus": "reuse", "pretrain": "reuse", "longctx": "reuse"}, sets
        with pytest.raises(ConfigError, match=r"longctx\.pack \(not set: made before this setting existed, i\.e\. "
                                              r"\"stream\"\) -> \"docs\""):
            plan_stages(dirs, st, True)


def test_pretraining_tool_dialogues_draw_from_more_cities_when_asked(tmp_path):
    """`corpus.pretrain_tool_cities`: pretraining tool calls name cities beyond the demo's ten (the argument is
    then a copy, not a prior over ten names); SFT dialogues keep the ten the evaluation asks about."""
    from puyu.recipes.nano import NanoRecipe, build_corpus
    from puyu.train.recipe import load_recipe

    rng = random.Random(3)
    assert {S.tool_chat(rng)["messages"][2]["tool_calls"][0]["function"]["arguments"]["city"]
            for _ in range(300)} == set(S.CITIES)
    tiny = _tiny_corpus("corpus.pretrain_tools=400", "corpus.chats=200")

    def called(path):
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            for m in rec.get("messages", []):
                out += [c["function"]["arguments"]["city"] for c in m.get("tool_calls") or []]
        return out

    for flag, want_more in (("false", False), ("true", True)):
        r = load_recipe(None, tiny + [f"corpus.pretrain_tool_cities={flag}"], cls=NanoRecipe)
        build_corpus(r, tmp_path / flag)
        pre = called(tmp_path / flag / "pretrain_train.jsonl") + called(tmp_path / flag / "pretrain_val.jsonl")
        assert len(pre) >= 150
        others = [c for c in pre if c not in S.CITIES]
        assert all(c in S.MORE_CITIES for c in others)
        assert (len(others) > len(pre) // 2) is want_more, (flag, len(others), len(pre))
        assert set(called(tmp_path / flag / "sft_train.jsonl")) <= set(S.CITIES)


def test_with_city_renames_every_mention_and_refuses_other_chats():
    rng = random.Random(5)
    rec = S.tool_chat(rng)
    old = rec["messages"][2]["tool_calls"][0]["function"]["arguments"]["city"]
    new = S.with_city(rec, "Krakow")
    text = json.dumps(new)
    assert old not in text and text.count("Krakow") == 4  # question, argument, tool result, reply
    assert new["messages"][2]["tool_calls"][0]["function"]["arguments"] == {"city": "Krakow"}
    assert rec["messages"][2]["tool_calls"][0]["function"]["arguments"]["city"] == old  # the original is kept
    with pytest.raises(ValueError, match="not a tool chat"):
        S.with_city(S.greeting_chat(rng), "Krakow")


def test_more_cities_swap_only_tool_dialogues_of_their_stage(tmp_path):
    """`corpus.{pretrain,sft}_more_cities`: that share of a stage's tool dialogues asks about other cities (so
    the call's argument has to be copied), drawn apart and after the tokenizer's sample: the rest is unchanged."""
    from puyu.recipes.nano import NanoRecipe, build_corpus
    from puyu.train.recipe import load_recipe

    tiny = _tiny_corpus("corpus.chats=400")
    build_corpus(load_recipe(None, tiny, cls=NanoRecipe), tmp_path / "a")
    build_corpus(load_recipe(None, tiny + ["corpus.sft_more_cities=0.75"], cls=NanoRecipe), tmp_path / "b")
    build_corpus(load_recipe(None, tiny + ["corpus.pretrain_more_cities=1.0"], cls=NanoRecipe), tmp_path / "c")
    for f in ("tokenizer_text.txt", "pretrain_train.jsonl", "longctx_train.jsonl", "test_problems.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    for f in ("tokenizer_text.txt", "longctx_train.jsonl", "sft_train.jsonl", "test_problems.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "c" / f).read_bytes(), f

    def cities(path):
        return [c["function"]["arguments"]["city"] for line in path.read_text(encoding="utf-8").splitlines()
                for m in json.loads(line).get("messages", []) for c in m.get("tool_calls") or []]

    a, b = cities(tmp_path / "a" / "sft_train.jsonl"), cities(tmp_path / "b" / "sft_train.jsonl")
    assert len(a) == len(b) >= 60 and set(a) <= set(S.CITIES)
    more = sum(c in S.MORE_CITIES for c in b)
    assert 0.6 * len(b) < more < 0.9 * len(b) and set(b) <= set(S.CITIES) | set(S.MORE_CITIES)
    pre_a, pre_c = (cities(tmp_path / d / "pretrain_train.jsonl") for d in "ac")
    assert len(pre_a) == len(pre_c) >= 5 and set(pre_a) <= set(S.CITIES) and set(pre_c) <= set(S.MORE_CITIES)
    with pytest.raises(Exception, match="sft_more_cities"):
        load_recipe(None, tiny + ["corpus.sft_more_cities=1.5"], cls=NanoRecipe).validate()


@pytest.mark.parametrize("bad, words", [("eval.passkey_n=-1", "eval.passkey_n"),
                                        ("corpus.passkey_tokens=[5, 1]", "corpus.passkey_tokens"),
                                        ("corpus.copy_items=[0, 0]", "corpus.copy_items"),
                                        ("corpus.long_passkey_tokens=[100]", "corpus.long_passkey_tokens"),
                                        ("longctx.pack=windows", "longctx.pack must be stream, docs or null"),
                                        ("vocab_size=10", "vocab_size must be at least"),
                                        ("device=tpu", "device must be cpu, cuda"),
                                        ("device=mps", "MPS is not available")])
def test_corpus_ranges_and_eval_sizes_fail_before_the_first_stage(bad, words):
    from puyu.errors import ConfigError
    from puyu.recipes.nano import NanoRecipe
    from puyu.train.recipe import load_recipe

    with pytest.raises(ConfigError, match=words):
        load_recipe(None, [bad], cls=NanoRecipe).validate()


def test_stage_packing_defaults_to_streams_before_sft_and_follows_the_recipe():
    """`pack: null` keeps each stage's packing from before the setting existed (windows over the stream for
    pretraining and long-context, whole conversations for SFT); the recipe keeps long-context documents whole,
    so a passkey document's key and question are never cut apart."""
    from puyu.recipes.nano import NanoRecipe, stage_recipe
    from puyu.train.recipe import load_recipe

    unset = load_recipe(None, [f"{n}.pack=null" for n in ("pretrain", "longctx", "sft")], cls=NanoRecipe)
    assert [stage_recipe(unset, n, None).data.pack for n in ("pretrain", "longctx", "sft")] == ["stream", "stream", "docs"]
    nano = load_recipe(None, [], cls=NanoRecipe)
    data = stage_recipe(nano, "longctx", "x").data
    assert (data.pack, data.pack_fit) == ("docs", "best")
    assert stage_recipe(nano, "pretrain", None).data.pack == "stream"


@pytest.mark.parametrize("bad, words", [("align.method=xyz", "grpo or ppo"), ("align.group_size=1", "group_size"),
                                        ("align.grpo_weights={foo: 1}", "unknown kind"),
                                        ("align.grpo_iterations=0", "grpo_iterations"), ("align.grpo_lr=-1", "grpo_lr")])
def test_alignment_settings_fail_before_the_first_stage(bad, words):
    from puyu.errors import ConfigError
    from puyu.recipes.nano import NanoRecipe
    from puyu.train.recipe import load_recipe

    with pytest.raises(ConfigError, match=words):
        load_recipe(None, [bad], cls=NanoRecipe).validate()
    load_recipe(None, [bad, "align.enabled=false"], cls=NanoRecipe).validate()  # a stage that will not run


def test_a_recipe_directory_is_named_as_one_with_its_yaml_files(tmp_path):
    from puyu.errors import ConfigError
    from puyu.train.recipe import read_yaml

    (tmp_path / "nano.yaml").write_text("seed: 1\n")
    with pytest.raises(ConfigError, match=r"is a directory; give a YAML file in it \(there: nano\.yaml\)"):
        read_yaml(tmp_path)


def _stage_dirs(root, names=("corpus", "pretrain", "sft", "align")):
    return {n: root / n for n in names}


def _stamp(d, settings, done=True, model=True):
    d.mkdir(parents=True, exist_ok=True)
    (d / "settings.json").write_text(json.dumps(settings))
    if done:
        (d / "done.json").write_text("{}")
        if model and d.name in ("pretrain", "longctx", "sft"):  # a finished model stage holds its model
            (d / "hf").mkdir(exist_ok=True)
            (d / "hf" / "config.json").write_text("{}")


def test_resume_plan_checks_every_stage_before_any_work_and_redoes_what_follows_a_redone_stage(tmp_path):
    from puyu.errors import ConfigError
    from puyu.recipes.nano import plan_stages

    dirs = _stage_dirs(tmp_path)
    st = {"corpus": {"seed": 0}, "pretrain": {"seed": 0, "pretrain.steps": 6}, "sft": {"seed": 0, "pretrain.steps": 6,
                                                                                       "sft.steps": 2},
          "align": {"seed": 0, "pretrain.steps": 6, "sft.steps": 2, "align.lr": 1.0}}
    for n in dirs:
        _stamp(dirs[n], st[n], done=n != "align")
    assert plan_stages(dirs, st, True) == {"corpus": "reuse", "pretrain": "reuse", "sft": "reuse", "align": "continue"}
    assert set(plan_stages(dirs, st, False).values()) == {"make"}
    # Changed values of two stages: refused before any work, every changed key named, the first stage to delete.
    new = {k: {**v, **{x: v[x] + 1 for x in ("pretrain.steps", "sft.steps") if x in v}} for k, v in st.items()}
    with pytest.raises(ConfigError, match=r"pretrain was made with other settings .*pretrain\.steps 6 -> 7; "
                                          r"sft\.steps 2 -> 3\).*delete .*pretrain and the stages after it"):
        plan_stages(dirs, new, True)
    assert (dirs["sft"] / "done.json").exists()
    # pretrain deleted: it and every later stage are made again (the old SFT and RL were made from the old
    # pretrain), and their leftovers are not checked, even under other values.
    (dirs["pretrain"] / "done.json").unlink()
    (dirs["pretrain"] / "settings.json").unlink()
    assert plan_stages(dirs, st, True) == {"corpus": "reuse", "pretrain": "make", "sft": "make", "align": "make"}
    new = {k: {**v, "pretrain.steps": 7} if "pretrain.steps" in v else v for k, v in st.items()}
    assert plan_stages(dirs, new, True) == {"corpus": "reuse", "pretrain": "make", "sft": "make", "align": "make"}
    # A fresh run with other values killed in pretrain, leaving an older run's later stages: resumed, not refused.
    _stamp(dirs["pretrain"], new["pretrain"], done=False)
    assert plan_stages(dirs, new, True) == {"corpus": "reuse", "pretrain": "continue", "sft": "make", "align": "make"}


def test_a_finished_shards_stage_with_a_broken_shard_is_refused_with_what_to_delete(tmp_path):
    """--resume must not hand the training stages a shard whose tokenizing never finished (no meta.json)."""
    from puyu.errors import ConfigError
    from puyu.recipes.nano import plan_stages

    dirs = _stage_dirs(tmp_path, ("corpus", "shards", "pretrain"))
    st = {n: {"seed": 0} for n in dirs}
    for n in dirs:
        _stamp(dirs[n], st[n])
    (dirs["shards"] / "done.json").write_text(json.dumps({"passkey": {"pretrain": {"docs": 3}},
                                                          "pretrain_train": {"tokens": 9, "docs": 1}}))
    (dirs["shards"] / "pretrain_train").mkdir()
    with pytest.raises(ConfigError, match=r"pretrain_train in .*shards is not a finished shard \(no meta\.json\); "
                                          r"delete .*shards to redo it"):
        plan_stages(dirs, st, True)
    (dirs["shards"] / "pretrain_train" / "meta.json").write_text("{}")
    assert plan_stages(dirs, st, True) == {"corpus": "reuse", "shards": "reuse", "pretrain": "reuse"}


def test_an_interrupted_stage_is_checked_too_and_an_older_puyus_stage_is_not_stamped(tmp_path):
    from puyu.errors import ConfigError
    from puyu.recipes.nano import plan_stages

    dirs = _stage_dirs(tmp_path, ("corpus", "pretrain"))
    st = {"corpus": {"seed": 0}, "pretrain": {"seed": 0, "pretrain.lr": 0.0005}}
    _stamp(dirs["corpus"], st["corpus"])
    _stamp(dirs["pretrain"], st["pretrain"], done=False)  # interrupted: settings.json, checkpoints, no done.json
    assert plan_stages(dirs, st, True)["pretrain"] == "continue"
    with pytest.raises(ConfigError, match=r"pretrain\.lr 0\.0005 -> 0\.01"):
        plan_stages(dirs, {**st, "pretrain": {"seed": 0, "pretrain.lr": 0.01}}, True)
    # An older puyu's stages (no settings.json): finished ones reused unchecked, interrupted ones made afresh.
    (dirs["corpus"] / "settings.json").unlink()
    (dirs["pretrain"] / "settings.json").unlink()
    assert plan_stages(dirs, st, True) == {"corpus": "reuse", "pretrain": "make"}
    assert not (dirs["corpus"] / "settings.json").exists()


@pytest.mark.parametrize("marker, text, words", [("done.json", "{oops", "cannot read"),
                                                 ("settings.json", "[]", "holds a list, not a JSON object"),
                                                 ("settings.json", "null", "holds a NoneType")])
def test_a_corrupt_stage_marker_is_a_clear_error(tmp_path, marker, text, words):
    from puyu.errors import ConfigError
    from puyu.recipes.nano import plan_stages

    dirs = _stage_dirs(tmp_path, ("corpus",))
    _stamp(dirs["corpus"], {"seed": 0})
    (dirs["corpus"] / marker).write_text(text)
    with pytest.raises(ConfigError, match=words + r".*delete .*corpus"):
        plan_stages(dirs, {"corpus": {"seed": 0}}, True)


def test_a_finished_model_stage_without_its_model_is_refused(tmp_path):
    from puyu.errors import ConfigError
    from puyu.recipes.nano import plan_stages

    dirs = _stage_dirs(tmp_path, ("corpus", "sft"))
    for n in dirs:
        _stamp(dirs[n], {"seed": 0}, model=False)
    with pytest.raises(ConfigError, match=r"marks the sft stage finished but .*sft/hf holds no model; delete"):
        plan_stages(dirs, {"corpus": {"seed": 0}, "sft": {"seed": 0}}, True)
    (dirs["sft"] / "hf").mkdir()
    (dirs["sft"] / "hf" / "config.json").write_text("{}")
    assert plan_stages(dirs, {"corpus": {"seed": 0}, "sft": {"seed": 0}}, True)["sft"] == "reuse"


def test_a_setting_added_after_a_stage_was_made_counts_as_unchanged_at_its_default(tmp_path):
    """A stage made by a puyu without `sft.pack_fit` (settings.json lacks it) is reused when the run keeps the
    setting's default (next fit, the only packing there was), and refused, named, when it asks for another."""
    from puyu.errors import ConfigError
    from puyu.recipes.nano import NanoRecipe, plan_stages, stage_settings

    st = {n: stage_settings(NanoRecipe(), n) for n in ("corpus", "pretrain", "sft")}
    assert st["sft"]["sft.pack_fit"] == "next"
    dirs = _stage_dirs(tmp_path, ("corpus", "pretrain", "sft"))
    for n in dirs:
        _stamp(dirs[n], {k: v for k, v in st[n].items() if not k.endswith(".pack_fit")})
    assert plan_stages(dirs, st, True) == {"corpus": "reuse", "pretrain": "reuse", "sft": "reuse"}
    best = {n: {**v, "sft.pack_fit": "best"} if "sft.pack_fit" in v else v for n, v in st.items()}
    with pytest.raises(ConfigError, match=r"sft was made with other settings .*sft\.pack_fit \(not set: made before this setting "
                                          r"existed, i\.e\. \"next\"\) -> \"best\""):
        plan_stages(dirs, best, True)
