"""The native decode kernel against independent references: its matrix product against torch's, its
decode and prefill logits against the model's generic forward over the whole sequence (no cache), for
head sizes that take the vector and the portable attention paths, GQA ratios, biases, every RoPE
scaling with per-request bases, one thread and two (rows split, or weight rows split), and each
instruction set's build (AVX-512, AVX2 + FMA, portable C; skipped where the CPU lacks one). Then the engine around it: same greedy tokens on every decode path, in-place weight
updates seen, fallbacks when the kernel cannot apply, fork safety and two engines at once."""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest
import torch
from tiny_models import KV_MODES, reference_logits
from tiny_models import make_model as tiny_model

import puyu.engine.fused_decode as fd
from puyu.engine.fused_decode import PORTABLE_FLAGS, FusedDecode, FusedDecodeUnavailable
from puyu.engine.kv_cache import PagedKVCache, SequenceBlocks
from puyu.engine.sampling import SamplingParams
from puyu.engine.scheduler import Engine, decode, prefill, request_rope_base
from puyu.model.transformer import InternLM2ForCausalLM

pytestmark = pytest.mark.skipif(not fd.available(), reason="no C compiler: the kernel cannot be built here")

CASES = {  # head_dim: 32 and 64 take the vector attention paths, 16 and 24 the portable ones
    "d32-gqa2": dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2),
    "d64-mha": dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=2),
    "d16-gqa4-bias": dict(num_attention_heads=4, num_key_value_heads=1, bias=True),
    "d24-linear": dict(hidden_size=96, num_attention_heads=4, num_key_value_heads=2,
                       rope_scaling={"type": "linear", "factor": 2.0}),
    "d32-dynamic": dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=1,
                        rope_scaling={"type": "dynamic", "factor": 2.0}),
    # hidden and intermediate >= 1024: one-row products take the large-weight path
    "d128-wide": dict(hidden_size=1024, intermediate_size=1056, num_hidden_layers=1, num_attention_heads=8,
                      num_key_value_heads=2),
}
# (threads, kernel options): one thread; two threads splitting each product's weight rows; two threads
# each running the whole forward for its own rows of the batch.
SPLITS = {"one-thread": (1, {}), "weight-rows": (2, dict(min_parallel=0, split_rows=1000)),
          "batch-rows": (2, dict(split_rows=1))}


def make_model(**kw) -> InternLM2ForCausalLM:
    return tiny_model(**{"intermediate_size": 100, **kw})  # 100: a K that is not a multiple of 16


def full_logits(model, tokens: list[int], base) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([tokens]), rope_base=base)[0]  # [T, V]


def isa_flags(isa: str) -> tuple[str, ...]:
    """The build flags of one instruction set; skips (never fails) where this CPU cannot run it."""
    if isa not in fd.cpu_isas():
        pytest.skip(f"this CPU cannot run the {isa} build")
    return fd.ISA_FLAGS[isa]


ISAS = ["avx512", "avx2", "portable"]


@pytest.mark.parametrize("isa", ISAS)
def test_linear_matches_torch(isa):
    flags = isa_flags(isa)
    assert fd.ISA_NAMES[fd.load(flags).puyu_decode_isa()] == isa
    g = torch.Generator().manual_seed(0)
    for m in (1, 2, 3, 4, 5, 7, 8, 9, 16, 21, 24, 35, 100, 520):
        # tails in rows, columns and K; K >= 1024 takes the one-row path for large weights (rows8); on
        # AVX2, blocks of 16 rows take the 16-row broadcast kernel (bcast16: panels of 6 weight rows, the
        # last ones of 3-5 where N % 6 != 0, or N itself below 7) and a block of 8 bcast8x8 (only blocks of 8
        # for 1024 < K <= 2048), packed once when they fit 64 KB, else block by block in each weight chunk
        # (100 and 520 rows: a prefill's)
        for n, k in [(48, 64), (45, 70), (17, 33), (130, 16), (5, 300), (8, 1024), (13, 1056), (27, 1030), (7, 96),
                     (19, 520)]:
            x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
            for bias in (b, None):
                got, ref = fd.linear(x, w, bias, flags=flags), torch.nn.functional.linear(x, w, bias)
                assert torch.allclose(got, ref, atol=3e-4, rtol=1e-5), (m, n, k, (got - ref).abs().max())


@pytest.mark.parametrize("split", sorted(SPLITS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_decode_logits_equal_full_forward(case, split):
    model = make_model(**CASES[case])
    cfg = model.config
    threads, opts = SPLITS[split]
    step = FusedDecode(model, threads=threads, **opts)
    g = torch.Generator().manual_seed(0)
    lengths, new = [5, 23, 1, 40, 17], [3, 9, 4, 2, 6]  # some run past max_position_embeddings (32)
    prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in lengths]
    cache = PagedKVCache(cfg, num_blocks=60, block_size=4)
    seqs, bases = [], []
    for p, n in zip(prompts, new):
        seq = SequenceBlocks(cache, len(p) + n)
        base = request_rope_base(cfg, len(p), n)  # per-request bases differ under dynamic NTK
        prefill(model, cache, seq, p, 0, base)
        seqs.append(seq)
        bases.append(base)
    tokens = [list(p) for p in prompts]
    for _ in range(max(new) - 1):
        live = [i for i in range(len(prompts)) if len(tokens[i]) - len(prompts[i]) < new[i] - 1]
        nxt = torch.randint(3, cfg.vocab_size, (len(live),), generator=g).tolist()
        for i, t in zip(live, nxt):
            tokens[i].append(t)
        got = decode(model, cache, [seqs[i] for i in live], nxt, [len(tokens[i]) - 1 for i in live],
                     [bases[i] for i in live], step)
        for row, i in enumerate(live):
            ref = full_logits(model, tokens[i], bases[i])[-1]
            # fp32 rounding grows with the logits (the model's own cached decode differs from its full
            # forward by ~2e-5 at |logit| ~9 in the wide case)
            tol = 2e-5 * max(1.0, float(ref.abs().max()) / 2)
            assert torch.allclose(got[row], ref, atol=tol, rtol=1e-5), (case, split, i, (got[row] - ref).abs().max())


@pytest.mark.parametrize("isa", ["avx2", "portable"])
@pytest.mark.parametrize("case", ["d32-gqa2", "d16-gqa4-bias", "d32-dynamic", "d64-mha", "d128-wide"])
def test_narrower_builds_decode_the_same(case, isa):
    """The AVX2 and portable builds (on any CPU that runs them) against the model's full forward: a
    prefill, then decode steps with the batch's rows split across two threads and with the weights split."""
    model = make_model(**CASES[case])
    cfg = model.config
    step = FusedDecode(model, threads=2, flags=isa_flags(isa))
    assert step.isa == isa
    cache = PagedKVCache(cfg, num_blocks=80, block_size=8)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in (9, 30, 50, 3, 17)]
    seqs = [SequenceBlocks(cache, len(p) + 2) for p in prompts]
    bases = [request_rope_base(cfg, len(p), 2) for p in prompts]
    got = step.prefill(cache, seqs, prompts, bases)
    for p, base, row in zip(prompts, bases, got):
        ref = full_logits(model, p, base)[-1]
        # fp32 rounding grows with the logits: the wide case's prefill differs from the full forward by up to
        # 4.6e-5 at |logit| ~10 on an AMD Zen 4 (torch's own kernels there sum in another order than on Intel)
        tol = 2e-5 * max(1.0, float(ref.abs().max()) / 2)
        assert torch.allclose(row, ref, atol=tol), (case, isa, (row - ref).abs().max())
    nxt = torch.randint(3, cfg.vocab_size, (len(prompts),), generator=g).tolist()
    for split_rows in (1, 1000):
        step.split_rows = split_rows
        step.min_parallel = 0
        got = decode(model, cache, seqs, nxt, [len(p) for p in prompts], bases, step)
        for p, t, base, row in zip(prompts, nxt, bases, got):
            ref = full_logits(model, p + [t], base)[-1]
            assert torch.allclose(row, ref, atol=tol * max(1.0, float(ref.abs().max()) / 2)), (split_rows, (row - ref).abs().max())


def test_isa_choice(monkeypatch):
    """$PUYU_KERNEL_ISA forces a build; an unknown name or an instruction set the CPU lacks is refused."""
    monkeypatch.setenv("PUYU_KERNEL_ISA", "portable")
    assert fd.default_flags() == PORTABLE_FLAGS
    monkeypatch.setenv("PUYU_KERNEL_ISA", "sse9")
    with pytest.raises(FusedDecodeUnavailable, match="expected one of"):
        fd.default_isa()
    monkeypatch.setattr(fd, "_cpu_flags", lambda: "flags : fpu sse2")
    monkeypatch.setenv("PUYU_KERNEL_ISA", "avx2")
    with pytest.raises(FusedDecodeUnavailable, match="cannot run it"):
        fd.default_isa()
    monkeypatch.delenv("PUYU_KERNEL_ISA")
    assert fd.default_isa() == "portable"
    monkeypatch.setattr(fd, "_cpu_flags", lambda: "flags : fpu sse2 avx avx2 fma")
    if fd.platform.machine() in ("x86_64", "AMD64"):
        assert fd.default_isa() == "avx2"


@pytest.mark.parametrize("threads", [1, 2])
def test_prefill_of_packed_prompts_equals_full_forward(threads):
    """Every token of several fresh prompts is one row of a call; each sees only its own prompt."""
    model = make_model(**CASES["d32-gqa2"])
    cfg = model.config
    step = FusedDecode(model, threads=threads)
    cache = PagedKVCache(cfg, num_blocks=64, block_size=4)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in (1, 7, 16, 3)]
    seqs = [SequenceBlocks(cache, len(p) + 4) for p in prompts]
    logits = step.prefill(cache, seqs, prompts, [None] * len(prompts))
    assert logits.shape == (4, cfg.vocab_size)
    for p, row in zip(prompts, logits):
        assert torch.allclose(row, full_logits(model, p, None)[-1], atol=2e-5)
    # the cache it wrote serves the next decode step
    nxt = [5, 6, 7, 8]
    got = decode(model, cache, seqs, nxt, [len(p) for p in prompts], [None] * 4, step)
    for p, t, row in zip(prompts, nxt, got):
        assert torch.allclose(row, full_logits(model, p + [t], None)[-1], atol=2e-5)


@pytest.mark.parametrize("kv", KV_MODES)
@pytest.mark.parametrize("fast", [True, "step", False])
def test_engine_greedy_tokens_equal_on_every_decode_path(fast, kv):
    model = make_model(**CASES["d32-dynamic"])
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 131, (n,), generator=g).tolist() for n in (3, 17, 30, 8)]
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    ref = []
    for p in prompts:  # naive greedy loop over the full forward
        seq = list(p)
        base = request_rope_base(model.config, len(p), 12)
        for _ in range(12):
            seq.append(int(reference_logits(model, seq, kv, base)[-1].argmax()))
        ref.append(seq[len(p):])
    with Engine(model, max_batch_size=4, cache_tokens=512, block_size=4, fast_decode=fast, threads=2, kv=kv) as eng:
        assert eng.stats()["decode_path"] == {True: "fused-" + FusedDecode(model).isa, "step": "torch-step",
                                              False: "model"}[fast]
        assert [r.token_ids for r in eng.generate(prompts, params)] == ref


def test_weights_updated_in_place_are_used():
    model = make_model(**CASES["d32-gqa2"])
    step = FusedDecode(model)
    cache = PagedKVCache(model.config, num_blocks=8, block_size=4)
    seq = SequenceBlocks(cache, 8)
    prefill(model, cache, seq, [3, 4, 5], 0, None)
    before = decode(model, cache, [seq], [6], [3], [None], step)
    with torch.no_grad():
        model.output.weight.mul_(2.0)  # an optimizer step would do the same: same storage, new values
    after = decode(model, cache, [seq], [6], [3], [None], step)
    assert torch.allclose(after, 2 * before, atol=1e-5)
    with torch.no_grad():  # a parameter given new storage is noticed by its pointer
        model.output.weight = torch.nn.Parameter(model.output.weight.detach().clone() / 2)
    again = decode(model, cache, [seq], [6], [3], [None], step)
    assert torch.allclose(again, before, atol=1e-5)


def test_weights_that_stop_being_float32_fall_back_to_the_model_forward(caplog):
    model = make_model(**CASES["d32-gqa2"])
    with Engine(model, max_batch_size=1, cache_tokens=64, block_size=4) as eng:
        assert eng.stats()["decode_path"].startswith("fused")
        want = eng.generate([[3, 4, 5]], SamplingParams(max_new_tokens=4, ignore_eos=True))[0].token_ids
        wo = model.model.layers[0].attention.wo
        wo.weight = torch.nn.Parameter(wo.weight.detach().t().contiguous().t())  # same values, not contiguous
        got = eng.generate([[3, 4, 5]], SamplingParams(max_new_tokens=4, ignore_eos=True))[0].token_ids
    assert got == want  # the same numbers, read by the model's own forward
    assert "fused decode step skipped" in caplog.text and "not a contiguous float32" in caplog.text
    # the engine switched decoder once: one warning for the prefill and 3 decode steps, a new path
    assert caplog.text.count("fused decode step skipped") == 1
    assert eng.stats()["decode_path"] == "model"
    step = FusedDecode(model)
    model.model.layers[0].attention.wo.weight = torch.nn.Parameter(torch.zeros(3, 3))  # never read past it
    with pytest.raises(FusedDecodeUnavailable, match=r"shape \(3, 3\), the config says"):
        step._weights()


def test_no_compiler_means_the_torch_step(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(fd, "_libs", {})
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("PUYU_CACHE_DIR", str(tmp_path))
    assert not fd.available()
    assert "no C compiler" in caplog.text
    with pytest.raises(FusedDecodeUnavailable, match="no C compiler"):
        fd.load()
    with Engine(make_model(), max_batch_size=1, cache_tokens=64, block_size=4) as eng:
        assert eng.stats()["decode_path"] == "torch-step"
        assert len(eng.generate([[3, 4]], SamplingParams(max_new_tokens=3, ignore_eos=True))[0].token_ids) == 3
    monkeypatch.setenv("PUYU_FUSED_DECODE", "0")
    monkeypatch.delenv("CC")
    assert not fd.available()


def test_a_compile_error_is_reported(monkeypatch, tmp_path):
    bad = tmp_path / "bad.c"
    bad.write_text("this is not C\n")
    monkeypatch.setattr(fd, "SOURCE", bad)
    monkeypatch.setattr(fd, "_libs", {})
    monkeypatch.setenv("PUYU_CACHE_DIR", str(tmp_path))
    with pytest.raises(FusedDecodeUnavailable, match="failed"):
        fd.load()
    assert not list((tmp_path / "kernels").glob("*.so"))  # nothing half-written left behind


def test_another_source_with_the_same_flags_is_built_not_served_from_the_cache(monkeypatch, tmp_path):
    """benchmarks/weights_ab.py builds other copies of fused_decode.c with the flags of this one: the loaded
    libraries are kept per source and flags, so a second source is never answered with the first's library."""
    monkeypatch.setenv("PUYU_CACHE_DIR", str(tmp_path))
    first = fd.load()
    other = tmp_path / "other.c"
    other.write_text(fd.SOURCE.read_text() + "\nint puyu_test_probe(void) { return 7; }\n")
    monkeypatch.setattr(fd, "SOURCE", other)
    second = fd.load()
    assert second is not first and second.puyu_test_probe() == 7
    assert not hasattr(first, "puyu_test_probe")


def test_unwritable_cache_dir_and_a_damaged_library(monkeypatch, tmp_path):
    monkeypatch.setattr(fd, "_libs", {})
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("PUYU_CACHE_DIR", str(blocker))  # kernels/ cannot be created under a file
    monkeypatch.setattr(fd.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert fd.cache_dir() == tmp_path / "tmp" / f"puyu-{os.getuid()}" / "kernels"
    lib = fd.load()
    built = list(fd.cache_dir().glob("fused_decode-*.so"))
    assert len(built) == 1 and lib.puyu_decode_isa() in (0, 1, 2)
    damaged = tmp_path / "damaged.so"
    damaged.write_bytes(b"not a shared object")
    # Replaced, not overwritten in place: this process still has the old file mapped.
    os.replace(damaged, built[0])  # damaged: rebuilt on the next load
    monkeypatch.setattr(fd, "_libs", {})
    assert fd.load().puyu_decode_isa() in (0, 1, 2)


def _decode_in_child(q):
    model = make_model(**CASES["d32-gqa2"])
    with Engine(model, max_batch_size=2, cache_tokens=128, block_size=4, threads=2) as eng:
        q.put([r.token_ids for r in eng.generate([[3, 4, 5], [6, 7]], SamplingParams(max_new_tokens=5, ignore_eos=True))])


def test_a_forked_child_decodes_with_its_own_workers():
    """The kernel's worker threads do not survive fork(); the child must start its own, not wait forever."""
    model = make_model(**CASES["d32-gqa2"])
    params = SamplingParams(max_new_tokens=5, ignore_eos=True)
    with Engine(model, max_batch_size=2, cache_tokens=128, block_size=4, threads=2) as eng:
        want = [r.token_ids for r in eng.generate([[3, 4, 5], [6, 7]], params)]  # workers exist now
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_decode_in_child, args=(q,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0, "the forked child hung or died"
    assert q.get(timeout=5) == want


def test_two_engines_decode_at_once():
    """Two engines' threads share the worker pool: one gets it, the other runs on its own thread."""
    models = [make_model(**CASES["d32-gqa2"]), make_model(**CASES["d16-gqa4-bias"])]
    params = SamplingParams(max_new_tokens=20, ignore_eos=True)
    prompts = [[3, 4, 5, 6], [7, 8], [9]]
    want = []
    for m in models:
        with Engine(m, max_batch_size=3, cache_tokens=256, block_size=4, fast_decode="step") as eng:
            want.append([r.token_ids for r in eng.generate(prompts, params)])
    got = [None, None]

    def run(i):
        with Engine(models[i], max_batch_size=3, cache_tokens=256, block_size=4, threads=2) as eng:
            for _ in range(5):
                got[i] = [r.token_ids for r in eng.generate(prompts, params)]

    ts = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert got == want
