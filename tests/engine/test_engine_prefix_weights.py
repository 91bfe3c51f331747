"""Prefix reuse after the weights change in place (an RL update between requests): the engine must
never adopt keys/values computed with the older weights. References: a fresh engine and a naive
full-recompute greedy loop on the updated model."""

from __future__ import annotations

import pytest
import torch

from puyu.engine.sampling import SamplingParams
from puyu.engine.scheduler import Engine
from puyu.model.config import get_preset
from puyu.model.transformer import InternLM2ForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def random_ids(n: int, seed: int, vocab: int = 512) -> list[int]:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.inference_mode()
def naive_greedy(model, ids: list[int], n: int) -> list[int]:
    seq, out = list(ids), []
    for _ in range(n):
        t = int(model(torch.tensor([seq]))[0, -1].argmax())
        seq.append(t)
        out.append(t)
    return out


def _model():
    return InternLM2ForCausalLM(get_preset("nano-tiny")).reset_parameters(seed=0).eval()


def _perturb(model, how: str, seed: int = 5) -> None:
    """Noise on the attention and MLP weights of two layers, written in place."""
    g = torch.Generator().manual_seed(seed)
    for layer in list(model.model.layers)[:2]:
        for p in (layer.attention.wqkv.weight, layer.feed_forward.w1.weight):
            noise = torch.randn(p.shape, generator=g) * 0.5 * float(p.detach().std())
            if how == "add_":
                with torch.no_grad():
                    p.add_(noise)
            else:  # invisible to the version counter
                p.data.add_(noise)


@pytest.mark.parametrize("fast", [True, "step"])
def test_in_place_weight_update_flushes_cached_prefixes(fast):
    model = _model()
    prompt = random_ids(200, seed=1)
    p = SamplingParams(max_new_tokens=8, ignore_eos=True)
    with Engine(model, cache_tokens=1024, block_size=8, fast_decode=fast) as eng:
        before = eng.generate([prompt], p)[0].token_ids
        _perturb(model, "add_")
        after = eng.generate([prompt], p)[0].token_ids
        stats = eng.stats()
    with Engine(model, cache_tokens=1024, block_size=8, fast_decode=fast) as fresh:
        want = fresh.generate([prompt], p)[0].token_ids
    assert after == want == naive_greedy(model, prompt, 8)
    assert before != after  # the update matters, so the test can tell stale keys from fresh ones
    assert stats["prefix_hit_tokens"] == 0 and stats["prefix_flushes"] == 1
    # with unchanged weights reuse still works
    with Engine(model, cache_tokens=1024, block_size=8, fast_decode=fast) as eng:
        eng.generate([prompt], p)
        assert eng.generate([prompt], p)[0].token_ids == want
        assert eng.stats()["prefix_hit_tokens"] == 192 and eng.stats()["prefix_flushes"] == 0


def test_writes_through_data_need_the_explicit_invalidation():
    """`p.data.add_()` bypasses the version counter (the documented limit); `invalidate_prefix_cache`
    covers it."""
    model = _model()
    prompt = random_ids(200, seed=2)
    p = SamplingParams(max_new_tokens=8, ignore_eos=True)
    with Engine(model, cache_tokens=1024, block_size=8, fast_decode="step") as eng:
        eng.generate([prompt], p)
        _perturb(model, "data")
        eng.invalidate_prefix_cache()
        got = eng.generate([prompt], p)[0].token_ids
        assert eng.stats()["prefix_hit_tokens"] == 0 and eng.stats()["cache_blocks_kept"] > 0
    assert got == naive_greedy(model, prompt, 8)


def test_a_request_running_across_an_update_registers_nothing():
    """Blocks computed before the update by a request still running must not be registered at its end."""
    model = _model()
    prompt = random_ids(64, seed=3)
    p = SamplingParams(max_new_tokens=40, ignore_eos=True)
    with Engine(model, cache_tokens=1024, block_size=8, fast_decode="step") as eng:
        handle = eng.submit(prompt, p)
        it = iter(handle)
        next(it)  # the prompt is prefilled and registered under the old weights
        _perturb(model, "add_")
        list(it)
        want = naive_greedy(model, prompt, 8)
        got = eng.generate([prompt], SamplingParams(max_new_tokens=8, ignore_eos=True))[0].token_ids
        assert eng.stats()["prefix_hit_tokens"] == 0
    assert got == want
