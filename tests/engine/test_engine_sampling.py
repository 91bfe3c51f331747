"""Sampling: parameter validation, and each logits transform against the transformers implementation
as an independent reference; the sampled distribution against the exact probabilities."""

from __future__ import annotations

import pytest
import torch

from puyu.engine.sampling import (
    SamplingError,
    SamplingParams,
    apply_repetition_penalty,
    argmax_rows,
    make_generator,
    sample,
    token_logprobs,
    truncate_sorted,
)
from puyu.errors import PuyuError


@pytest.mark.parametrize("kwargs, field", [
    ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"max_new_tokens": 2.5}, "max_new_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -3}, "top_k"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"seed": "7"}, "seed"),
    ({"stop": [""]}, "stop"),
    ({"stop": [3]}, "stop"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"stop_token_ids": ["2"]}, "stop_token_ids"),
    ({"logprobs": 1}, "logprobs"),
])
def test_invalid_params_raise_clear_errors(kwargs, field):
    with pytest.raises(SamplingError, match=field) as e:
        SamplingParams(**kwargs)
    assert isinstance(e.value, PuyuError) and isinstance(e.value, ValueError)


def test_defaults_and_normalisation():
    p = SamplingParams()
    assert (p.max_new_tokens, p.temperature, p.top_p, p.top_k, p.repetition_penalty) == (256, 0.0, 1.0, 0, 1.0)
    assert p.seed is None and p.stop == [] and p.stop_token_ids == [] and p.logprobs is False and p.greedy
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop_token_ids=(5, 6)).stop_token_ids == [5, 6]


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g)
    history = [[1, 4, 4, 9], [0, 49], [7]]
    seen = torch.zeros(3, 50, dtype=torch.bool)
    for i, h in enumerate(history):
        seen[i, h] = True
    for penalty in (1.3, 0.7):
        ours = apply_repetition_penalty(logits, seen, torch.full((3,), penalty))
        for i, h in enumerate(history):
            ref = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([h]), logits[i:i + 1].clone())
            torch.testing.assert_close(ours[i], ref[0])


@pytest.mark.parametrize("top_k, top_p", [(5, 1.0), (0, 0.6), (8, 0.3), (0, 0.999), (1, 1.0)])
def test_truncation_matches_transformers(top_k, top_p):
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 40, generator=g) * 2
    sorted_logits, order = logits.sort(-1, descending=True)
    ours = truncate_sorted(sorted_logits, torch.full((4,), top_k), torch.full((4,), top_p))
    kept = torch.zeros_like(logits, dtype=torch.bool).scatter(1, order, ours > float("-inf"))
    ref = logits.clone()
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1:
        ref = TopPLogitsWarper(top_p)(None, ref)
    assert torch.equal(kept, ref > float("-inf"))


def test_greedy_rows_take_argmax_and_ignore_generators():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 4.9]])
    out = sample(logits, [SamplingParams(), SamplingParams()], [None, None])
    assert out.tolist() == [1, 0]


def test_argmax_rows_equals_torch_argmax():
    """The NumPy argmax of float32 CPU logits against torch's: ties take the first index, a NaN counts as
    the largest, -inf rows, strided views; other dtypes go through torch."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2048, generator=g)
    x[1, :] = 0.5  # all tied
    x[2, 100] = x[2, 7] = 99.0  # a tie between two maxima
    x[3, 9] = x[3, 4] = float("nan")
    x[4, :] = float("-inf")
    for t in (x, x[:, ::3], x.t().contiguous().t(), x[:0], x.double(), x.bfloat16()):
        got = argmax_rows(t)
        assert got.dtype == torch.int64 and torch.equal(got, t.argmax(-1))
    assert argmax_rows(x)[:5].tolist()[1:] == [0, 7, 4, 0]


def test_sampled_distribution_matches_softmax():
    """With temperature 0.5 and top-k 3, frequencies over many draws match the renormalised softmax."""
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0])
    p = SamplingParams(temperature=0.5, top_k=3, seed=0)
    g = make_generator(0)
    n = 6000
    counts = torch.zeros(6)
    draws = sample(logits.expand(n, 6).clone(), [p] * n, [g] * n)
    counts += torch.bincount(draws, minlength=6)
    exact = torch.zeros(6)
    exact[:3] = (logits[:3] / 0.5).softmax(-1)
    assert counts[3:].sum() == 0
    assert torch.allclose(counts / n, exact, atol=0.025)


def test_seeded_rows_independent_of_batch_neighbours():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 100, generator=g)
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=42)
    alone = [sample(logits[2:3], [p], [make_generator(42)]).item()]
    gens = [make_generator(None), None, make_generator(42), make_generator(7), None]
    params = [SamplingParams(temperature=0.7), SamplingParams(), p, SamplingParams(temperature=1.2, top_k=4),
              SamplingParams(repetition_penalty=1.5)]
    seen = [None, None, None, None, torch.zeros(100, dtype=torch.bool)]
    batched = sample(logits, params, gens, seen)
    assert batched[2].item() == alone[0]


def test_token_logprobs_are_raw_log_softmax():
    logits = torch.randn(2, 10)
    toks = torch.tensor([3, 7])
    lp = token_logprobs(logits, toks)
    torch.testing.assert_close(lp, torch.log(torch.softmax(logits, -1)[[0, 1], [3, 7]]))
