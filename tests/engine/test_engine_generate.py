"""`puyu generate` end to end through the CLI entry point, against the engine and a naive greedy loop."""

from __future__ import annotations

import json

import pytest
import torch

from puyu.cli import main
from puyu.model.chat_format import render_chat
from puyu.model.checkpoint import load_model
from puyu.model.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@torch.inference_mode()
def naive_greedy(model, ids, n, stops=(2,)):
    seq, out = list(ids), []
    for _ in range(n):
        t = int(model(torch.tensor([seq]))[0, -1].argmax())
        out.append(t)
        seq.append(t)
        if t in stops:
            break
    return out


@pytest.mark.parametrize("extra", [[], ["--no-prefix-cache"]], ids=["prefix-cache", "no-prefix-cache"])
def test_json_output_for_several_prompts_equals_naive_greedy(tiny_checkpoint, capsys, extra):
    rc = main(["generate", "--model", str(tiny_checkpoint), "hello world", "你好 😀", "x",
               "--max-new-tokens", "12", "--json", "--logprobs", *extra])
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["hello world", "你好 😀", "x"]
    model, tok = load_model(tiny_checkpoint), load_tokenizer(tiny_checkpoint)
    for r in rows:
        ids = [tok.bos_id] + tok.encode(r["prompt"])
        assert r["prompt_tokens"] == len(ids)
        assert r["token_ids"] == naive_greedy(model, ids, 12)
        assert r["text"] == tok.decode([t for t in r["token_ids"] if t != tok.eos_id])
        assert len(r["logprobs"]) == len(r["token_ids"]) and all(lp <= 0 for lp in r["logprobs"])


def test_single_prompt_streams_text_and_reports_finish(tiny_checkpoint, capsys):
    assert main(["generate", "--model", str(tiny_checkpoint), "the engine", "--max-new-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    model, tok = load_model(tiny_checkpoint), load_tokenizer(tiny_checkpoint)
    ref = naive_greedy(model, [tok.bos_id] + tok.encode("the engine"), 6)
    assert out == tok.decode([t for t in ref if t != tok.eos_id]) + "\n"
    assert "[finish: " in err


def test_chat_flag_uses_the_template_and_stops_at_im_end(tiny_checkpoint, capsys):
    assert main(["generate", "--model", str(tiny_checkpoint), "--chat", "--system", "be brief", "hi",
                 "--json", "--max-new-tokens", "10"]) == 0
    row = json.loads(capsys.readouterr().out)
    tok = load_tokenizer(tiny_checkpoint)
    prompt = tok.encode(render_chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]),
                        allow_special=True)
    assert row["prompt_tokens"] == len(prompt)
    assert row["token_ids"] == naive_greedy(load_model(tiny_checkpoint), prompt, 10, stops=tok.stop_ids)


def test_sampling_flags_seeded_and_ids_prompts(tiny_checkpoint, capsys):
    args = ["generate", "--model", str(tiny_checkpoint), "--ids", "1 40 41, 42", "--json", "--temperature", "0.9",
            "--top-k", "20", "--top-p", "0.9", "--seed", "3", "--max-new-tokens", "8", "--ignore-eos"]
    assert main(args) == 0 and main(args) == 0
    a, b = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert a["token_ids"] == b["token_ids"] and len(a["token_ids"]) == 8 and a["prompt_tokens"] == 4


def test_preset_without_tokenizer_takes_ids(capsys):
    assert main(["generate", "--model", "nano-tiny", "--ids", "1 2 3", "--max-new-tokens", "4", "--ignore-eos"]) == 0
    out = capsys.readouterr().out.split()
    assert len(out) == 4 and all(t.isdigit() for t in out)


@pytest.mark.parametrize("args, message", [
    (["--model", "nano-tiny", "some text"], "no tokenizer.model"),
    (["--model", "nano-tiny", "--ids", "1 x"], "not a list of integers"),
    (["--model", "nano-tiny", "--ids", "1 99999"], "outside the vocabulary"),
    (["--model", "nano-tiny", "--ids", "1", "--temperature", "-1"], "temperature"),
    (["--model", "nano-tiny", "--ids", "1", "--max-new-tokens", "100", "--cache-tokens", "64"], "whole cache holds 64"),
    (["--model", "nano-tiny", "--ids"], "no prompt given"),
    (["--model", "/nonexistent/dir", "--ids", "1"], "neither a checkpoint directory nor a preset"),
])
def test_user_errors_are_one_clear_line(args, message, capsys):
    assert main(["generate", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_prompt_past_the_context_is_refused_as_serve_refuses_it(tiny_checkpoint, capsys):
    """nano-tiny has 256 positions (max_position_embeddings): prompt + --max-new-tokens up to 256 runs, one
    token more is one error line in `puyu serve`'s words and nothing is generated; --context-length raises
    the limit (as serve's flag does)."""
    ids = " ".join(["7"] * 250)
    base = ["generate", "--model", str(tiny_checkpoint), "--ids", ids, "--ignore-eos", "--json"]
    assert main(base + ["--max-new-tokens", "6"]) == 0
    assert len(json.loads(capsys.readouterr().out)["token_ids"]) == 6
    assert main(base + ["--max-new-tokens", "7"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("error: this model's maximum context length is 256 tokens, but you "
                                                "requested 257 tokens (250 in the prompt, 7 in the completion)")
    assert main(base + ["--max-new-tokens", "7", "--context-length", "257"]) == 0
    assert len(json.loads(capsys.readouterr().out)["token_ids"]) == 7
    # a text prompt (the reported case: a long prompt, streamed) is counted as the engine encodes it
    text = "the engine " * 200
    n = len(load_tokenizer(tiny_checkpoint).encode("<s>" + text, allow_special=True))
    assert n > 256
    assert main(["generate", "--model", str(tiny_checkpoint), "short", text, "--max-new-tokens", "4"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and f"error: prompt [1]: this model's maximum context length is 256 tokens, but you " \
                             f"requested {n + 4} tokens ({n} in the prompt, 4 in the completion)" in out.err


@pytest.mark.parametrize("kv", ["bf16", "int8"])
def test_kv_flag_stores_the_cache_in_that_format(tiny_checkpoint, capsys, kv):
    from tiny_models import reference_logits

    assert main(["generate", "--model", str(tiny_checkpoint), "--ids", "1 20 33 47 5", "--kv", kv, "--json",
                 "--max-new-tokens", "8", "--ignore-eos"]) == 0
    row = json.loads(capsys.readouterr().out)
    model = load_model(tiny_checkpoint)
    seq = [1, 20, 33, 47, 5]
    for _ in range(8):
        seq.append(int(reference_logits(model, seq, kv)[-1].argmax()))
    assert row["token_ids"] == seq[5:]


def test_every_command_that_loads_a_model_takes_kv():
    from puyu.cli import build_parser

    parser = build_parser()
    for argv in (["generate", "--model", "m", "x"], ["chat", "m"], ["serve", "--model", "m"],
                 ["eval", "run", "arithmetic", "--model", "m"], ["info", "m"]):
        assert parser.parse_args(argv + ["--kv", "int8"]).kv == "int8", argv
        with pytest.raises(SystemExit):
            parser.parse_args(argv + ["--kv", "int4"])
