"""`--limit` against a run folder: a rerun with a smaller limit reports the samples of that limit (the
extra predictions stay in predictions.jsonl, out of the figures), `--rescore --limit N` reports N, and a
limit larger than the data runs all of it with a note instead of refusing."""

from __future__ import annotations

import json

import pytest
import serving_fixtures as sf

from puyu.cli import main


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    from puyu.model.checkpoint import save_pretrained
    from puyu.model.config import get_preset
    from puyu.model.transformer import InternLM2ForCausalLM

    root = tmp_path_factory.mktemp("rand")
    tok = sf.make_tokenizer(root / "tok")
    cfg = get_preset("nano-tiny", vocab_size=tok.vocab_size, max_position_embeddings=128)
    save_pretrained(InternLM2ForCausalLM(cfg).reset_parameters(seed=0), root / "model", tokenizer=tok)
    return root / "model"


def _task(out):
    return json.loads((out / "report.json").read_text())["tasks"][0]


def test_a_smaller_limit_reports_its_own_samples(random_model, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["eval", "run", "arithmetic", "--model", str(random_model), "--option", "sizes=100", "--option", "n=6",
            "--out", str(out), "--no-progress"]
    assert main(base) == 0
    assert main(base + ["--limit", "3"]) == 0
    t = _task(out)
    assert (t["n_samples"], t["expected_samples"], t["complete"]) == (3, 3, True)
    assert "incomplete" not in (out / "report.md").read_text()
    assert len((out / "arithmetic" / "predictions.jsonl").read_text().splitlines()) == 6  # nothing lost
    rescore = ["eval", "run", "arithmetic", "--rescore", "--option", "sizes=100", "--option", "n=6", "--out",
               str(out), "--no-progress"]
    assert main(rescore + ["--limit", "5"]) == 0
    t = _task(out)
    assert (t["n_samples"], t["expected_samples"], t["complete"]) == (5, 5, True)
    assert json.loads((out / "arithmetic" / "run.json").read_text())["limit"] == 5
    capsys.readouterr()
    assert main(base + ["--limit", "50"]) == 0  # more than the 6 problems: all of them, with a note
    assert "--limit 50 is more than its 6 samples" in capsys.readouterr().err
    assert _task(out)["n_samples"] == 6
