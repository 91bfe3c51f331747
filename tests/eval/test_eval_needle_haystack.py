"""Needles in a Chinese haystack with a tokenizer that spells `。` as three byte tokens: sentence ends
are found on the decoded text, so needles spread over the depths (a single-token test found no end and
put every needle at 0); a haystack without sentence ends is refused; `--haystack DIR` is accepted."""

from __future__ import annotations

import pytest
import serving_fixtures as sf

from puyu.eval import Context, get_task
from puyu.eval.task import EvalError

SENTENCES = ["今天天气很好。", "我们去公园散步！", "你喜欢喝茶吗？", "河边有一棵大树。", "市场里很热闹。"]


@pytest.fixture(scope="module")
def byte_tok(tmp_path_factory):
    tok = sf.make_tokenizer(tmp_path_factory.mktemp("needle_tok"))
    assert len(tok.encode("好。")) >= 4  # the premise: 。 is split into byte tokens
    return tok


def _find(seq, sub):
    return next(i for i in range(len(seq) - len(sub) + 1) if seq[i:i + len(sub)] == sub)


def test_chinese_haystack_needles_spread_over_depths_after_sentence_ends(byte_tok, tmp_path):
    hay = tmp_path / "hay"
    hay.mkdir()
    (hay / "a.txt").write_text("".join(SENTENCES * 40), encoding="utf-8")
    depths = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    ctx = Context(seed=0, tokenizer=byte_tok, options={"haystack": str(hay), "lengths": "600",
                                                       "depths": ",".join(map(str, depths)),
                                                       "trained_length": "600"})
    samples = get_task("needle").samples(ctx)
    starts = []
    for s in samples:
        key = s.record["answers"][0]
        needle = byte_tok.encode(f" The pass key is {key}. Remember it. {key} is the pass key.")
        start = _find(s.prompt_ids, needle)
        starts.append(start)
        before = byte_tok.decode(s.prompt_ids[:start])
        assert start > 0 and before.rstrip().endswith(("。", "！", "？", ".")), (s.id, before[-10:])  # depth 0: after the header
    assert len(set(starts)) == len(depths) and starts == sorted(starts)


def test_haystack_without_sentence_ends_is_refused_and_the_cli_flag(byte_tok, tmp_path):
    hay = tmp_path / "flat"
    hay.mkdir()
    (hay / "a.txt").write_text("今天天气很好 " * 300, encoding="utf-8")
    ctx = Context(seed=0, tokenizer=byte_tok, options={"haystack": str(hay), "lengths": "300",
                                                       "trained_length": "300"})
    with pytest.raises(EvalError, match="no sentence end"):
        get_task("needle").samples(ctx)

    from puyu.cli import build_parser

    args = build_parser().parse_args(["eval", "run", "needle", "--haystack", str(hay), "--model", "m"])
    from puyu.eval.cli import _options

    assert _options(args.option, args)["haystack"] == str(hay)
