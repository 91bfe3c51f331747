"""The local engine and a real `puyu serve` (through the API backend) give the same predictions on raw
arithmetic prompts: both stop at the tokenizer's stop ids (`</s>` and `<|im_end|>`), and both record the
same prompt. The tiny model's output row for `<|im_end|>` is made to win where its most frequent token
would, so generations do hit `<|im_end|>` (a model that never emits it could not tell the two apart)."""

from __future__ import annotations

import json
from collections import Counter

import serving_fixtures as sf
import torch

from puyu.cli import main


def _rows(path):
    return sorted((json.loads(x) for x in path.read_text().splitlines() if x.strip()), key=lambda r: r["id"])


def test_local_and_api_backends_predict_the_same_on_arithmetic(tmp_path_factory, tmp_path):
    from puyu.engine.sampling import SamplingParams
    from puyu.engine.scheduler import Engine
    from puyu.model.chat_format import IM_END
    from puyu.model.checkpoint import load_model, save_pretrained
    from puyu.model.config import get_preset
    from puyu.model.transformer import InternLM2ForCausalLM
    from puyu.serve.app import create_app

    root = tmp_path_factory.mktemp("agree")
    tok = sf.make_tokenizer(root / "tok")
    cfg = get_preset("nano-tiny", vocab_size=tok.vocab_size, max_position_embeddings=256)
    model = InternLM2ForCausalLM(cfg).reset_parameters(seed=0).eval()
    im_end = tok.special_ids[IM_END]
    # the token the random model emits most in greedy continuations of a±b prompts
    with Engine(model, tok, max_batch_size=8) as eng:
        outs = eng.generate([[tok.bos_id] + tok.encode(f"{a}+{b}=") for a, b in [(12, 34), (5, 77), (40, 2), (91, 8)]],
                            SamplingParams(max_new_tokens=8, temperature=0.0))
    common = Counter(t for r in outs for t in r.token_ids).most_common(1)[0][0]
    with torch.no_grad():
        model.output.weight[im_end] = model.output.weight[common] * 1.5
    save_pretrained(model, root / "model", tokenizer=tok)

    engine = Engine(load_model(root / "model"), tok, max_batch_size=8)
    srv = sf.ServerThread(create_app(engine, tok, "puyu-test"))
    try:
        common_args = ["arithmetic", "--option", "n=10", "--option", "sizes=100,1000", "--temperature", "0",
                       "--no-progress"]
        assert main(["eval", "run", *common_args, "--model", str(root / "model"), "--out", str(tmp_path / "l")]) == 0
        assert main(["eval", "run", *common_args, "--api-base", srv.url, "--out", str(tmp_path / "a")]) == 0
    finally:
        srv.stop()
        engine.close()
    local = _rows(tmp_path / "l" / "arithmetic" / "predictions.jsonl")
    api = _rows(tmp_path / "a" / "arithmetic" / "predictions.jsonl")
    assert len(local) == len(api) == 20
    assert sum(r["finish_reason"] == "stop" for r in api) >= 3  # <|im_end|> was generated
    for x, y in zip(local, api):
        assert x["id"] == y["id"] and x["prompt"] == y["prompt"]
        assert (x["output"], x["extracted"], x["score"]) == (y["output"], y["extracted"], y["score"]), x["id"]
        assert IM_END not in x["output"]
