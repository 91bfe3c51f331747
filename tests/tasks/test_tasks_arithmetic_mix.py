"""The arithmetic training mix: cells (operator, operand digit counts, negative result), the reweighting
toward one-digit operands and one-digit differences, determinism per seed, held-out problems kept out,
and the per-cell accuracy of the base-model check."""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

import pytest

from puyu.tasks import synthetic as S
from puyu.tasks.synthetic import Problem, arithmetic_cell


def _problems(recs: list[dict]) -> list[Problem]:
    """Every problem of plain, worksheet and after-text records, parsed back from the text."""
    out = []
    for r in recs:
        texts = [r["prompt"]] if "prompt" in r else [t for t, scored in r["segments"] if not scored]
        for t in texts:
            a, op, b = re.search(r"(\d+)([+-])(\d+)=$", t).groups()
            out.append(Problem(int(a), op, int(b)))
    return out


def test_cells_name_operator_digits_and_sign():
    assert arithmetic_cell(Problem(12, "+", 34)) == "+ 2d2d =2d"
    assert arithmetic_cell(Problem(7, "+", 0)) == "+ 1d1d =1d"
    assert arithmetic_cell(Problem(97, "+", 8)) == "+ 2d1d =3d"
    assert arithmetic_cell(Problem(40, "-", 8)) == "- 2d1d =2d"
    assert arithmetic_cell(Problem(12, "-", 19)) == "- 2d2d =1d neg"
    assert arithmetic_cell(Problem(3, "-", 3)) == "- 1d1d =1d"  # zero is not negative
    assert arithmetic_cell(Problem(5, "-", 200)) == "- 1d3d =3d neg"


def test_uniform_default_and_reweighted_shares():
    n = 20000
    uni = _problems(S.arithmetic_records(random.Random(0), n, 0.0, set()))
    mix = _problems(S.arithmetic_records(random.Random(0), n, 0.0, set(), p_short=0.25, p_close=0.3))
    assert len(uni) == len(mix) == n and all(p.a < 100 and p.b < 100 for p in uni + mix)

    def one_digit(ps, op=None):
        ops = [x for p in ps if op is None or p.op == op for x in (p.a, p.b)]
        return sum(x < 10 for x in ops) / len(ops)

    def close(ps):
        subs = [p for p in ps if p.op == "-"]
        return sum(abs(p.a - p.b) <= 9 for p in subs) / len(subs)

    # uniform 0..99: 10% one-digit operands, P(|a-b| <= 9) = (100 + 2 * sum_{d=1..9} (100 - d)) / 10^4 = 0.181
    assert one_digit(uni) == pytest.approx(0.10, abs=0.01) and close(uni) == pytest.approx(0.181, abs=0.015)
    # additions: each operand one-digit with p_short; subtractions: 30% close by construction, plus the
    # close pairs of the other 70% (one-digit 25%: ~P(close) of the mixed digit draw)
    assert one_digit(mix, "+") == pytest.approx(0.25, abs=0.015)
    assert close(mix) > 0.3 + 0.7 * 0.1
    assert Counter(p.op for p in mix)["-"] == pytest.approx(n / 2, rel=0.05)
    assert {arithmetic_cell(p) for p in mix} >= {"+ 1d1d =1d", "- 1d1d =1d neg", "- 2d2d =1d neg", "- 2d1d =2d",
                                                 "+ 2d2d =3d"}


def test_records_are_deterministic_per_seed_and_keep_their_shape():
    kw = dict(p_sheet=0.25, p_prefix=0.3, p_short=0.25, p_close=0.3)
    a = S.arithmetic_records(random.Random(5), 500, 0.1, set(), **kw)
    b = S.arithmetic_records(random.Random(5), 500, 0.1, set(), **kw)
    c = S.arithmetic_records(random.Random(6), 500, 0.1, set(), **kw)
    assert a == b and a != c and len(a) == 500
    for r in a:
        if "prompt" in r:
            p = _problems([r])[0]
            assert r["completion"] == str(p.a + p.b if p.op == "+" else p.a - p.b)
        else:
            assert all(isinstance(t, str) and isinstance(s, bool) for t, s in r["segments"])
            assert [s for _, s in r["segments"]][1::2] == [True] * (len(r["segments"]) // 2)


def test_reweighted_mix_never_trains_on_held_out_problems():
    small, big = S.held_out_problems(0, 400, 200)
    exclude = set(small) | set(big)
    # the close pairs are few (about 1,800 a-b pairs with |a-b| <= 9), so held-out ones would be drawn often
    assert sum(p.op == "-" and abs(p.a - p.b) <= 9 for p in small) > 20
    recs = S.arithmetic_records(random.Random(3), 40000, 0.1, exclude, p_sheet=0.25, p_prefix=0.3,
                                p_short=0.25, p_close=0.3)
    seen = set(_problems(recs))
    assert len(seen) > 5000 and not seen & exclude


def test_recipe_rejects_a_probability_out_of_range():
    from puyu.errors import ConfigError
    from puyu.recipes.nano import NanoRecipe

    r = NanoRecipe()
    r.corpus.arithmetic_p_close = 1.5
    with pytest.raises(ConfigError, match="arithmetic_p_close"):
        r.validate()


@dataclass
class _Result:
    token_ids: list[int]


class _ScriptedEngine:
    def __init__(self, replies):
        self.replies = replies

    def generate(self, prompts, params):
        assert len(prompts) == len(self.replies)
        return [_Result(r) for r in self.replies]


def test_base_check_scores_each_cell(tiny_tokenizer):
    from puyu.train.evaluate import arithmetic_accuracy

    tok = tiny_tokenizer
    probs = [Problem(12, "+", 34), Problem(12, "+", 5), Problem(33, "-", 28), Problem(12, "-", 19)]
    replies = ["46", "18", "5", "-5"]  # right, wrong, right, wrong
    res = arithmetic_accuracy(None, tok, probs, engine=_ScriptedEngine([tok.encode(x) + [tok.eos_id] for x in replies]))
    assert res["by_cell"] == {"+ 2d1d =2d": {"accuracy": 0.0, "n": 1}, "+ 2d2d =2d": {"accuracy": 1.0, "n": 1},
                              "- 2d2d =1d": {"accuracy": 1.0, "n": 1}, "- 2d2d =1d neg": {"accuracy": 0.0, "n": 1}}
    assert res["accuracy"] == 0.5 and res["by_op"] == {"+": 0.5, "-": 0.5}
