"""The engine against independent references: a naive full-recompute greedy loop, one-shot logits
(with the request's fixed dynamic-NTK base past max_position_embeddings), seeded sampling alone vs in a
busy batch, a scripted model for exact text, stop strings and Chinese/emoji streaming, and the cache
accounting (reuse, oversize requests, cancellation). The tests of generation run with the KV cache in each
format (`kv`: the model's float32, bf16, int8); their references then round keys/values as the format
stores them (`tiny_models.reference_logits`)."""

from __future__ import annotations

import threading

import pytest
import torch
from tiny_models import KV_MODES, ScriptedModel, reference_logits
from torch import nn

from puyu.engine.kv_cache import CacheFullError
from puyu.engine.sampling import SamplingParams
from puyu.engine.scheduler import Engine, EngineError, request_rope_base
from puyu.errors import PuyuError
from puyu.model.config import get_preset
from puyu.model.rope import dynamic_base
from puyu.model.transformer import InternLM2ForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def model():
    return InternLM2ForCausalLM(get_preset("nano-tiny")).reset_parameters(seed=0).eval()


def random_ids(n: int, seed: int, vocab: int = 512) -> list[int]:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.inference_mode()
def naive_greedy(model, ids: list[int], n: int, eos: int | None = 2, kv: str | None = None) -> list[int]:
    """Recompute the whole sequence for every new token (no cache at all; keys/values rounded as a cache of
    format `kv` stores them)."""
    seq, out = list(ids), []
    for _ in range(n):
        t = int(reference_logits(model, seq, kv)[-1].argmax())
        out.append(t)
        seq.append(t)
        if t == eos:
            break
    return out


@pytest.mark.parametrize("kv", KV_MODES)
def test_greedy_equals_naive_loop_with_chunked_prefill_and_late_arrivals(model, kv):
    lengths = [1, 7, 40, 131, 250, 3]
    prompts = [random_ids(n, seed=n) for n in lengths]
    late = [random_ids(n, seed=100 + n) for n in (90, 2, 17)]
    params = SamplingParams(max_new_tokens=24)
    with Engine(model, max_batch_size=4, cache_tokens=2048, block_size=8, prefill_chunk=32, kv=kv) as eng:
        handles = [eng.submit(p, params) for p in prompts]
        first = iter(handles[0])
        next(first)  # the run is under way ...
        handles += [eng.submit(p, params) for p in late]  # ... when more requests arrive
        results = [h.result() for h in handles]
        assert eng.stats()["cache_blocks_used"] == 0
    for p, r in zip(prompts + late, results):
        ref = naive_greedy(model, p, 24, kv=kv)
        assert r.token_ids == ref, f"prompt of {len(p)} tokens"
        assert r.finish_reason == ("stop" if ref[-1] == 2 else "length")
        assert r.prompt_token_ids == p


@pytest.mark.parametrize("fast", [True, "step"])
@pytest.mark.parametrize("kv", KV_MODES)
def test_a_burst_of_short_prompts_is_prefilled_together(model, kv, fast):
    """Through the kernel's prefill (every token a row), or PyTorch's packed prefill (one row)."""
    prompts = [random_ids(n, seed=200 + n) for n in (3, 9, 5, 12, 1, 7, 4, 10)]
    with Engine(model, max_batch_size=8, cache_tokens=1024, prefill_chunk=64, kv=kv, fast_decode=fast) as eng:
        results = eng.generate(prompts, SamplingParams(max_new_tokens=10, ignore_eos=True))
        steps = eng.stats()["steps"]
    for p, r in zip(prompts, results):
        assert r.token_ids == naive_greedy(model, p, 10, eos=None, kv=kv)
    assert steps == 9  # one packed prefill (+ first decode), then all decode together: 1 + 8


@pytest.mark.parametrize("kv", KV_MODES)
def test_chunked_prefill_logits_equal_one_shot(model, kv):
    ids = random_ids(200, seed=5)
    with Engine(model, cache_tokens=512, block_size=8, prefill_chunk=24, kv=kv) as eng:
        chunked = eng.prompt_logits(ids)
    one_shot = reference_logits(model, ids, kv)
    assert chunked.shape == one_shot.shape == (200, 512)
    # fp32 rounding; with bf16, also a key whose fp32 value differs in the last bit may round to the
    # neighbouring bf16 value (2^-8 relative) in one computation and not the other
    assert (chunked - one_shot).abs().max() <= (1e-4 if kv is None else 1e-3)


@pytest.mark.parametrize("kv", KV_MODES)
def test_dynamic_ntk_past_max_positions_uses_the_fixed_base(kv):
    cfg = get_preset("nano-tiny", rope_scaling={"type": "dynamic", "factor": 2.0})  # 256 positions
    m = InternLM2ForCausalLM(cfg).reset_parameters(seed=1).eval()
    ids, new = random_ids(600, seed=9), 300
    base = request_rope_base(cfg, 600, new)
    assert base == dynamic_base(cfg, 900) > dynamic_base(cfg, 600) > cfg.rope_theta
    # A small mask budget makes later chunks shrink: several chunk sizes are exercised.
    with Engine(m, cache_tokens=1024, block_size=16, prefill_chunk=128, mask_bytes=128 * 400 * 4, kv=kv) as eng:
        chunked = eng.prompt_logits(ids, max_new_tokens=new)
        steps = eng.stats()["steps"]
    assert steps > 600 // 128 + 1
    pinned = reference_logits(m, ids, kv, base)
    unpinned = reference_logits(m, ids, kv)  # the base for 600 tokens, not 900
    assert (chunked - pinned).abs().max() <= (1e-4 if kv is None else 1e-3)
    assert (chunked - unpinned).abs().max() > 1e-3  # the base really matters here


def test_greedy_decode_past_max_positions_matches_pinned_naive_loop():
    cfg = get_preset("nano-tiny", rope_scaling={"type": "dynamic", "factor": 2.0})
    m = InternLM2ForCausalLM(cfg).reset_parameters(seed=2).eval()
    ids, new = random_ids(250, seed=11), 20
    base = request_rope_base(cfg, len(ids), new)
    with Engine(m, cache_tokens=1024, prefill_chunk=64) as eng:
        got = eng.generate([ids], SamplingParams(max_new_tokens=new, ignore_eos=True))[0].token_ids
    seq, ref = list(ids), []
    with torch.inference_mode():
        for _ in range(new):
            t = int(m(torch.tensor([seq]), rope_base=base)[0, -1].argmax())
            ref.append(t)
            seq.append(t)
    assert got == ref


def test_seeded_sampling_same_alone_and_in_busy_batch(model):
    p = SamplingParams(max_new_tokens=20, temperature=0.9, top_k=40, top_p=0.95, seed=1234, ignore_eos=True)
    prompt = random_ids(30, seed=1)
    with Engine(model, max_batch_size=8, cache_tokens=4096) as eng:
        alone = eng.generate([prompt], p)[0].token_ids
        others = [(random_ids(n, seed=50 + n), SamplingParams(max_new_tokens=n, temperature=1.1))
                  for n in (5, 60, 11, 33)]
        busy = [eng.submit(o, sp) for o, sp in others[:2]]
        mine = eng.submit(prompt, p)
        busy += [eng.submit(o, sp) for o, sp in others[2:]]
        busy.append(eng.submit(random_ids(8, seed=3), SamplingParams(max_new_tokens=30)))
        in_batch = mine.result().token_ids
        [h.result() for h in busy]
        other_seed = eng.generate([prompt], SamplingParams(**{**p.__dict__, "seed": 99}))[0].token_ids
    assert in_batch == alone
    assert other_seed != alone


def test_repetition_penalty_matches_transformers_processor(model):
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    ids = random_ids(12, seed=4)
    proc = RepetitionPenaltyLogitsProcessor(1.8)
    seq, ref = list(ids), []
    with torch.inference_mode():
        for _ in range(15):
            logits = proc(torch.tensor([seq]), model(torch.tensor([seq]))[:, -1])
            ref.append(int(logits.argmax()))
            seq.append(ref[-1])
    with Engine(model, cache_tokens=512) as eng:
        got = eng.generate([ids], SamplingParams(max_new_tokens=15, repetition_penalty=1.8, ignore_eos=True))
    assert got[0].token_ids == ref


def test_logprobs_are_raw_model_log_probabilities(model):
    ids = random_ids(10, seed=6)
    with Engine(model, cache_tokens=512) as eng:
        r = eng.generate([ids], SamplingParams(max_new_tokens=5, logprobs=True, ignore_eos=True))[0]
    seq = ids + r.token_ids
    with torch.inference_mode():
        lp = model(torch.tensor([seq]))[0].log_softmax(-1)
    ref = [lp[len(ids) - 1 + i, t].item() for i, t in enumerate(r.token_ids)]
    assert r.logprobs == pytest.approx(ref, abs=1e-4)


# ---- cache accounting --------------------------------------------------------------------------------
@pytest.mark.parametrize("kv", KV_MODES)
def test_freed_blocks_are_reused_and_requests_wait_for_room(model, kv):
    with Engine(model, cache_tokens=64, block_size=8, max_batch_size=4, kv=kv) as eng:  # 8 blocks
        p = SamplingParams(max_new_tokens=20, ignore_eos=True)
        a, b = random_ids(20, seed=7), random_ids(19, seed=8)  # 40 and 39 tokens: 5 blocks each
        ra, rb = eng.generate([a, b], p)  # cannot run together: b waits for a's blocks
        assert eng.stats()["cache_blocks_used"] == 0 and eng.stats()["cache_blocks_reserved"] == 0
        assert ra.token_ids == naive_greedy(model, a, 20, eos=None, kv=kv)
        assert rb.token_ids == naive_greedy(model, b, 20, eos=None, kv=kv)
        assert eng.stats()["steps"] > 30  # one after the other (~38 steps), not in one batch (~20)
        assert eng.stats()["cache_blocks_total"] == 8


def test_request_larger_than_cache_gets_clear_error_and_engine_survives(model):
    with Engine(model, cache_tokens=64, block_size=8) as eng:
        with pytest.raises(CacheFullError, match="needs 80 tokens.*holds 64 tokens") as e:
            eng.generate([random_ids(60, seed=1)], SamplingParams(max_new_tokens=20))
        assert isinstance(e.value, PuyuError)
        with pytest.raises(CacheFullError):
            eng.submit(random_ids(65, seed=1), SamplingParams(max_new_tokens=0))
        ok = eng.generate([random_ids(10, seed=1)], SamplingParams(max_new_tokens=4))[0]
        assert len(ok.token_ids) >= 1


def test_cancel_frees_cache_at_once(model):
    with Engine(model, cache_tokens=1024, block_size=8) as eng:
        h = eng.submit(random_ids(50, seed=2), SamplingParams(max_new_tokens=500, ignore_eos=True))
        events = iter(h)
        for _ in range(3):
            assert next(events).finish_reason is None
        h.cancel()
        assert eng.stats()["cache_blocks_used"] == 0 and eng.stats()["running"] == 0
        rest = list(events)
        assert rest[-1].finish_reason == "abort"
        assert h.result().finish_reason == "abort"
        # Leaving a stream early cancels too.
        for _ in eng.stream(random_ids(5, seed=3), SamplingParams(max_new_tokens=400, ignore_eos=True)):
            break
        assert eng.stats()["cache_blocks_used"] == 0


def test_kv_bytes_per_token_matches_theory(model):
    with Engine(model, cache_tokens=256) as eng:
        s = eng.stats()
    assert s["kv_bytes_per_token"] == model.config.kv_bytes_per_token(4)
    assert s["cache_blocks_total"] * s["block_size"] == s["cache_tokens"] == 256


def test_bad_requests_and_arguments(model):
    with Engine(model, cache_tokens=256) as eng:
        with pytest.raises(EngineError, match="tokenizer"):
            eng.generate(["hello"])
        with pytest.raises(EngineError, match="empty"):
            eng.generate([[]])
        with pytest.raises(EngineError, match="outside the vocabulary"):
            eng.generate([[5, 512]])
        with pytest.raises(EngineError, match="stop strings"):
            eng.generate([[5]], SamplingParams(stop=["x"]))
        with pytest.raises(EngineError, match="2 SamplingParams for 1"):
            eng.generate([[5]], [SamplingParams(), SamplingParams()])
        assert eng.generate([[5]], SamplingParams(max_new_tokens=0))[0].finish_reason == "length"
        assert eng.generate([]) == []
    with pytest.raises(EngineError, match="closed"):
        eng.submit([5])
    with pytest.raises(EngineError, match="max_batch_size"):
        Engine(model, max_batch_size=0)


def test_failure_in_forward_reaches_the_caller_and_engine_recovers(model):
    class Flaky(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config, self.output, self.fail = inner, inner.config, inner.output, True

        def forward(self, *a, **k):
            if self.fail:
                raise RuntimeError("simulated failure")
            return self.inner(*a, **k)

    flaky = Flaky(model)
    with Engine(flaky, cache_tokens=256) as eng:
        with pytest.raises(EngineError, match="simulated failure"):
            eng.generate([[5, 6]], SamplingParams(max_new_tokens=3))
        assert eng.stats()["cache_blocks_used"] == 0
        flaky.fail = False
        assert eng.generate([[5, 6]], SamplingParams(max_new_tokens=3, ignore_eos=True))[0].token_ids == \
            naive_greedy(model, [5, 6], 3, eos=None)


def test_submission_from_many_threads(model):
    out = {}
    with Engine(model, cache_tokens=2048, max_batch_size=3) as eng:
        def worker(i):
            out[i] = eng.generate([random_ids(5 + i, seed=i)], SamplingParams(max_new_tokens=6))[0].token_ids

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    for i in range(6):
        assert out[i] == naive_greedy(model, random_ids(5 + i, seed=i), 6)


# ---- text: a scripted model (tiny_models.ScriptedModel) makes the output known exactly ---------------------------------------------------
def scripted_engine(tok, prompt_text: str, reply_text: str, tail: list[int] | None = None):
    prompt = tok.encode(prompt_text, allow_special=True)
    reply = tok.encode(reply_text, allow_special=True) + (tail if tail is not None else [tok.eos_id])
    return Engine(ScriptedModel(tok.vocab_size, prompt + reply), tok, cache_tokens=1024, block_size=8), prompt, reply


TEXT = "你好，世界！🦄 龍が飛ぶ 😀 emoji 🚀 done"


def test_streaming_chinese_and_emoji_reassembles_exactly(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok.encode(TEXT)
    assert any(tok.sp.is_byte(i) for i in ids)  # byte-fallback pieces are really involved
    eng, prompt, reply = scripted_engine(tok, "<s>hi", TEXT)
    with eng:
        deltas = list(eng.stream(prompt, SamplingParams(max_new_tokens=200)))
        result = eng.generate(["<s>hi"], SamplingParams(max_new_tokens=200))[0]
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    assert deltas[-1].finish_reason == "stop"
    assert all("\ufffd" not in d.text for d in deltas)
    assert "".join(d.text for d in deltas) == TEXT == result.text
    assert [t for d in deltas for t in d.token_ids] == reply == result.token_ids
    assert result.prompt_token_ids == prompt
    assert sum(1 for d in deltas if d.text) > 5  # it did stream


def test_length_cut_inside_a_character_matches_full_decode(tiny_tokenizer):
    tok = tiny_tokenizer
    eng, prompt, reply = scripted_engine(tok, "<s>", "🦄🦄")
    with eng:
        r = eng.generate([prompt], SamplingParams(max_new_tokens=2))[0]
    assert r.finish_reason == "length" and r.token_ids == reply[:2]
    assert r.text == tok.decode(reply[:2]) and r.text.endswith("\ufffd")


@pytest.mark.parametrize("reply, stops, expected", [
    ("The answer is 42. Observation: more text", ["Observation:"], "The answer is 42. "),
    ("Obs erve. Observation: x", ["Observation:"], "Obs erve. "),
    ("abc 你好世界 def", ["好世", "def"], "abc 你"),
    ("first 🦄龍 then", ["龍 t"], "first 🦄"),
    ("no stop here at all", ["zzz"], "no stop here at all"),
])
def test_stop_strings_across_tokens_are_caught_and_never_emitted(tiny_tokenizer, reply, stops, expected):
    tok = tiny_tokenizer
    pieces = [tok.decode([i]) for i in tok.encode(reply)]
    assert not any(s in p for s in stops for p in pieces)  # every stop string spans token boundaries
    eng, prompt, _ = scripted_engine(tok, "<s>", reply)
    with eng:
        deltas = list(eng.stream(prompt, SamplingParams(max_new_tokens=100, stop=stops)))
    streamed = "".join(d.text for d in deltas)
    assert streamed == expected
    assert deltas[-1].finish_reason == "stop"  # by the stop string, or by eos in the last case
    if expected != reply:
        assert len([t for d in deltas for t in d.token_ids]) < len(tok.encode(reply))


def test_stop_token_ids_and_special_tokens_in_text(tiny_tokenizer):
    tok = tiny_tokenizer
    im_end = tok.special_ids["<|im_end|>"]
    reply = "call<|action_start|><|plugin|>\n{}<|action_end|>"
    eng, prompt, ids = scripted_engine(tok, "<s><|im_start|>user\nhi<|im_end|>\n", reply, tail=[im_end, 5, 6])
    assert tok.special_ids["<|im_start|>"] in prompt  # string prompts keep their special tokens
    with eng:
        stopped = eng.generate([prompt], SamplingParams(max_new_tokens=50, stop_token_ids=[im_end]))[0]
        through = eng.generate([prompt], SamplingParams(max_new_tokens=len(ids) - 1))[0]
    assert stopped.finish_reason == "stop" and stopped.text == reply and stopped.token_ids == ids[:-2]
    assert through.finish_reason == "length" and through.text == reply + "<|im_end|>" + tok.decode([5])


def test_chat_policy_streams_text_until_im_end(tiny_tokenizer):
    from puyu.engine.scheduler import chat_policy
    from puyu.model.chat_format import render_chat

    tok = tiny_tokenizer
    messages = [{"role": "user", "content": "你好"}]
    reply = "你好！我是书生。"
    eng, _, _ = scripted_engine(tok, render_chat(messages), reply, tail=[tok.special_ids["<|im_end|>"], 9, 9])
    with eng:
        chunks = list(chat_policy(eng, SamplingParams(max_new_tokens=50))(messages))
    assert "".join(chunks) == reply and len(chunks) > 1


def test_close_aborts_running_requests_and_dropped_engines_stop_their_thread(model):
    import gc

    eng = Engine(model, cache_tokens=1024)
    h = eng.submit(random_ids(10, seed=1), SamplingParams(max_new_tokens=900, ignore_eos=True))
    next(iter(h))
    eng.close()
    eng.close()  # idempotent
    assert h.result().finish_reason == "abort" and eng.stats()["cache_blocks_used"] == 0
    dropped = Engine(model, cache_tokens=256)
    dropped.generate([[5, 6]], SamplingParams(max_new_tokens=2))
    thread = dropped._thread
    del dropped
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.mark.parametrize("which", ["tiny_tokenizer", "ref_tokenizer"])
def test_incremental_detokenizer_is_exact_on_mixed_text(which, request):
    from puyu.engine.detokenize import IncrementalDetokenizer

    tok = request.getfixturevalue(which)  # the real InternLM2 tokenizer is skipped where absent
    text = "InternLM2 书生·浦语 🦄🐉 naïve café  spaces\n\ttabs <|im_end|> 12345 ∑∫ 𝔘𝔫𝔦 done"
    ids = tok.encode(text, allow_special=True)
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == tok.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize("kv", KV_MODES)
@pytest.mark.parametrize("fast", [True, "step"])
def test_prefix_reuse_skips_cached_prompt_blocks_and_changes_no_token(model, fast, kv):
    """A shared system prompt, then a next chat turn that sends the previous answer back: the cached
    blocks are adopted (fewer prefill tokens) and every output equals the no-reuse engine's."""
    system = random_ids(37, seed=20)
    first = system + random_ids(5, seed=21)
    p = SamplingParams(max_new_tokens=12, ignore_eos=True)
    outs = {}
    for reuse in (True, False):
        with Engine(model, cache_tokens=512, block_size=8, max_batch_size=4, fast_decode=fast,
                    prefix_cache=reuse, kv=kv) as eng:
            r1 = eng.generate([first], p)[0]
            hits1 = eng.stats()["prefix_hit_tokens"]
            r2 = eng.generate([system + random_ids(9, seed=22)], p)[0]  # same system prompt
            hits2 = eng.stats()["prefix_hit_tokens"] - hits1
            turn2 = first + r1.token_ids + random_ids(6, seed=23)  # the conversation goes on
            r3 = eng.generate([turn2], p)[0]
            hits3 = eng.stats()["prefix_hit_tokens"] - hits1 - hits2
            outs[reuse] = [r1.token_ids, r2.token_ids, r3.token_ids]
            if reuse:
                assert (hits1, hits2) == (0, 32)  # the 4 full blocks of the 37-token system prompt
                # prompt and answer were cached up to the answer's last token: 42 + 11 = 53 -> 6 blocks
                assert hits3 == 48
                assert eng.stats()["cache_blocks_used"] == 0 and eng.stats()["cache_blocks_kept"] > 0
            else:
                assert hits1 == hits2 == hits3 == 0
    assert outs[True] == outs[False]
    assert outs[True][2] == naive_greedy(model, turn2, 12, eos=None, kv=kv)


def test_prefix_reuse_respects_the_rope_base_and_cache_pressure():
    cfg = get_preset("nano-tiny")
    dyn = InternLM2ForCausalLM(cfg.replace(rope_scaling={"type": "dynamic", "factor": 2.0},
                                           max_position_embeddings=32)).reset_parameters(seed=0).eval()
    prompt = random_ids(40, seed=30)
    with Engine(dyn, cache_tokens=256, block_size=8, max_batch_size=2) as eng:
        eng.generate([prompt], SamplingParams(max_new_tokens=4, ignore_eos=True))
        eng.generate([prompt], SamplingParams(max_new_tokens=9, ignore_eos=True))  # a larger base
        assert eng.stats()["prefix_hit_tokens"] == 0
        eng.generate([prompt], SamplingParams(max_new_tokens=4, ignore_eos=True))  # the first one's base
        assert eng.stats()["prefix_hit_tokens"] == 32
    # A cache too small to keep everything: kept prefixes are evicted, every request still runs right.
    prompts = [random_ids(30, seed=40 + i) for i in range(6)]
    p = SamplingParams(max_new_tokens=10, ignore_eos=True)
    with Engine(model := InternLM2ForCausalLM(cfg).reset_parameters(seed=0).eval(), cache_tokens=96,
                block_size=8, max_batch_size=2) as eng:
        got = [r.token_ids for r in eng.generate(prompts + prompts[:2], p)]
        assert eng.stats()["cache_blocks_used"] == 0
    assert got == [naive_greedy(model, x, 10, eos=None) for x in prompts + prompts[:2]]


@pytest.mark.parametrize("kv", KV_MODES)
def test_the_rest_of_a_cached_prompt_keeps_the_mask_bound(model, monkeypatch, kv):
    """After a prefix hit, the uncached rest is prefilled in chunks whose [T, S] mask fits mask_bytes."""
    import puyu.engine.scheduler as E

    calls = []
    real = E.prefill

    def spy(model_, cache, seq, token_ids, start, base, all_logits=False):
        calls.append((len(token_ids), start))
        return real(model_, cache, seq, token_ids, start, base, all_logits)

    monkeypatch.setattr(E, "prefill", spy)
    shared = random_ids(200, seed=50)
    p = SamplingParams(max_new_tokens=4, ignore_eos=True)
    with Engine(model, cache_tokens=1024, block_size=8, fast_decode="step", mask_bytes=64 * 1024, kv=kv) as eng:
        eng.generate([shared], p)
        calls.clear()
        longer = shared + random_ids(120, seed=51)
        got = eng.generate([longer], p)[0].token_ids
        assert eng.stats()["prefix_hit_tokens"] == 200  # 25 full blocks of 8
    assert calls and calls[0][1] == 200 and sum(t for t, _ in calls) == 320 - 200 and len(calls) > 1
    assert all(t * (s + t) * 4 <= 64 * 1024 or t == 16 for t, s in calls)
    assert got == naive_greedy(model, longer, 4, eos=None, kv=kv)
