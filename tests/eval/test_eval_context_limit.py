"""A prompt + max_new_tokens beyond the model's context is handled the same way by the local backend and
by a real `puyu serve` through the API backend: the completion is capped at the room left (recorded as
`capped_max_new_tokens`), and a prompt that does not fit at all is recorded as that sample's `error`
(score 0, counted in the report) without stopping the run (before, the API run died on the first 400
and the local one ran past the context silently)."""

from __future__ import annotations

import json

import serving_fixtures as sf

from puyu.cli import main

CONTEXT = 96


def _rows(path):
    return sorted((json.loads(x) for x in path.read_text().splitlines() if x.strip()), key=lambda r: r["id"])


def test_local_and_api_cap_and_record_over_long_prompts_alike(tmp_path_factory, tmp_path):
    from puyu.engine.scheduler import Engine
    from puyu.model.checkpoint import load_model, save_pretrained
    from puyu.model.config import get_preset
    from puyu.model.transformer import InternLM2ForCausalLM
    from puyu.serve.app import create_app

    root = tmp_path_factory.mktemp("ctx")
    tok = sf.make_tokenizer(root / "tok")
    cfg = get_preset("nano-tiny", vocab_size=tok.vocab_size, max_position_embeddings=CONTEXT)
    model = InternLM2ForCausalLM(cfg).reset_parameters(seed=0).eval()
    save_pretrained(model, root / "model", tokenizer=tok)
    data = tmp_path / "gsm.jsonl"
    rows = [{"question": "What is 2 plus 3?", "answer": "2+3=5\n#### 5"},
            {"question": "the weather city sunny rain " * 40, "answer": "#### 1"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    engine = Engine(load_model(root / "model"), tok, max_batch_size=4)
    srv = sf.ServerThread(create_app(engine, tok, "puyu-test"))
    try:
        common = ["gsm8k", "--data", str(data), "--no-progress"]  # gsm8k asks for 512 new tokens > CONTEXT
        assert main(["eval", "run", *common, "--model", str(root / "model"), "--out", str(tmp_path / "l")]) == 0
        assert main(["eval", "run", *common, "--api-base", srv.url, "--out", str(tmp_path / "a")]) == 0
    finally:
        srv.stop()
        engine.close()
    local = _rows(tmp_path / "l" / "gsm8k" / "predictions.jsonl")
    api = _rows(tmp_path / "a" / "gsm8k" / "predictions.jsonl")
    assert len(local) == len(api) == 2
    for r in (local, api):
        short, long_ = r
        assert 0 < short["capped_max_new_tokens"] == CONTEXT - short["prompt_tokens"] < 512
        assert short["completion_tokens"] <= short["capped_max_new_tokens"] and not short.get("error")
        assert long_["error"] and "context" in long_["error"] and long_["score"] == 0.0
        assert long_["prompt_tokens"] > CONTEXT and long_["output"] == ""
    assert local[0]["prompt_tokens"] == api[0]["prompt_tokens"] and local[0]["output"] == api[0]["output"]
    assert local[1]["prompt_tokens"] == api[1]["prompt_tokens"]
    for out in ("l", "a"):
        rep = json.loads((tmp_path / out / "report.json").read_text())["tasks"][0]
        assert (rep["context_errors"], rep["capped"]) == (1, 1)
        md = (tmp_path / out / "report.md").read_text()
        assert "1 prompts longer than the context" in md and "error: " in md
