"""The streamlined decode step against the model's generic forward over the whole sequence (no cache):
ragged batches, GQA ratios, biases, every RoPE scaling with per-request bases, the row split forced on,
and the engine's greedy output with the step on and off."""

from __future__ import annotations

import pytest
import torch
from tiny_models import KV_MODES, make_model

from puyu.engine.decode_step import DecodeStep, RowSplitter
from puyu.engine.kv_cache import PagedKVCache, SequenceBlocks
from puyu.engine.sampling import SamplingParams
from puyu.engine.scheduler import Engine, decode, prefill, request_rope_base

CASES = {
    "gqa2": {},
    "mha": dict(num_key_value_heads=4),
    "gqa4-bias": dict(num_attention_heads=8, num_key_value_heads=2, bias=True),
    "mqa-linear": dict(num_key_value_heads=1, rope_scaling={"type": "linear", "factor": 2.0}),
    "dynamic": dict(rope_scaling={"type": "dynamic", "factor": 2.0}),
}


@pytest.mark.parametrize("split", [False, True], ids=["one-call", "row-split"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_step_logits_equal_full_forward(case, split):
    model = make_model(**CASES[case])
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    lengths, new = [5, 23, 1, 40], [3, 9, 4, 2]  # two of them run past max_position_embeddings (32)
    prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in lengths]
    cache = PagedKVCache(cfg, num_blocks=40, block_size=4)
    # threads=2 and split_bytes=0 force the threaded split even for these tiny weights.
    step = DecodeStep(model, RowSplitter(threads=2, split_bytes=0) if split else RowSplitter(threads=1))
    seqs, bases = [], []
    for p, n in zip(prompts, new):
        seq = SequenceBlocks(cache, len(p) + n)
        base = request_rope_base(cfg, len(p), n)
        prefill(model, cache, seq, p, 0, base)
        seqs.append(seq)
        bases.append(base)
    seq_tokens = [list(p) for p in prompts]
    g2 = torch.Generator().manual_seed(1)
    for _ in range(max(new) - 1):
        live = [i for i in range(len(prompts)) if len(seq_tokens[i]) - len(prompts[i]) < new[i] - 1]
        nxt = [int(torch.randint(3, cfg.vocab_size, (1,), generator=g2)) for _ in live]
        for i, t in zip(live, nxt):
            seq_tokens[i].append(t)
        positions = [len(seq_tokens[i]) - 1 for i in live]
        got = decode(model, cache, [seqs[i] for i in live], nxt, positions, [bases[i] for i in live], step)
        plain = decode(model, cache, [seqs[i] for i in live], nxt, positions, [bases[i] for i in live])
        for row, i in enumerate(live):
            with torch.inference_mode():
                ref = model(torch.tensor([seq_tokens[i]]), rope_base=bases[i])[0, -1]
            assert torch.allclose(got[row], ref, atol=1e-5, rtol=1e-5), (case, i, (got[row] - ref).abs().max())
            assert torch.allclose(plain[row], ref, atol=1e-5, rtol=1e-5)
    step.close()


@pytest.mark.parametrize("threads", [2, 3])  # 1000 rows: bmm blocks for 2 threads, Python slices for 3
def test_row_split_equals_one_call(threads):
    splitter = RowSplitter(threads=threads, split_bytes=0)
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(1000, 64, generator=g), torch.randn(1000, generator=g)
    for rows in (1, 2, 5, 16):
        x = torch.randn(rows, 64, generator=g)
        assert splitter.wants(x, w)
        for bias in (b, None):
            got, ref = splitter.linear(x, w, bias), torch.nn.functional.linear(x, w, bias)
            assert got.shape == ref.shape == (rows, 1000)
            assert torch.allclose(got, ref, atol=1e-5)
    assert not splitter.wants(torch.randn(17, 64), w)  # many rows: one call is already parallel
    splitter.close()


@pytest.mark.parametrize("kv", KV_MODES)
def test_engine_greedy_tokens_same_with_and_without_fast_decode(kv):
    model = make_model(rope_scaling={"type": "dynamic", "factor": 2.0})
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 131, (n,), generator=g).tolist() for n in (3, 17, 30)]
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    outs = []
    for fast in ("step", False):
        with Engine(model, max_batch_size=3, cache_tokens=512, block_size=4, fast_decode=fast, kv=kv) as eng:
            assert isinstance(eng._decoder, DecodeStep) == bool(fast)
            outs.append([r.token_ids for r in eng.generate(prompts, params)])
    assert outs[0] == outs[1]


def test_forward_hooks_make_the_engine_use_the_model_forward():
    """Hooks registered on the model (even after the engine was built) still run at every decode step."""
    model = make_model()
    calls = []
    with Engine(model, max_batch_size=1, cache_tokens=256, block_size=4) as eng:
        assert not eng._decoder.hooked()
        handle = model.model.layers[1].register_forward_hook(lambda mod, args, out: calls.append(1))
        assert eng._decoder.hooked()
        eng.generate([[5, 6, 7]], SamplingParams(max_new_tokens=6, ignore_eos=True))
        handle.remove()
        assert not eng._decoder.hooked()
    assert len(calls) == 6  # the prefill and five decode steps
