"""The native kernel's worker pool (fused_decode.c): every part of a parallel region runs exactly once,
whichever threads come; a worker that never gets a core (held) leaves all its parts to the caller, which
finishes the region instead of waiting, and the decode's logits do not change with who ran what."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_model

import puyu.engine.fused_decode as fd
from puyu.engine.fused_decode import FusedDecode
from puyu.engine.kv_cache import PagedKVCache, SequenceBlocks

pytestmark = pytest.mark.skipif(not fd.available(), reason="no C compiler: the kernel cannot be built here")


@pytest.fixture
def released():
    yield
    fd.pool_hold(False)
    fd.pool_mark_contended(0)


@pytest.mark.parametrize("parts", [2, 3, 8, 17])
def test_every_part_runs_once_per_region(parts, released):
    before = fd.pool_stats()
    counts, used = fd.pool_probe(threads=2, parts=parts, regions=300, work_us=2)
    after = fd.pool_stats()
    assert used == 2
    assert counts == [300] * parts
    assert after[0] - before[0] == 300  # regions
    assert (after[1] - before[1]) + (after[2] - before[2]) == 300 * parts  # caller's + workers' parts


def test_workers_take_parts_when_they_run(released):
    """With parts that take a while and spinning workers, the workers do some of them (the caller alone
    could not finish 4 x 2 ms parts before a spinning worker claims one)."""
    fd.pool_probe(threads=2, parts=2, regions=5, spin_us=100_000)  # start and warm the worker
    before = fd.pool_stats()
    counts, _ = fd.pool_probe(threads=2, parts=4, regions=3, work_us=2000, spin_us=100_000)
    after = fd.pool_stats()
    assert counts == [3] * 4
    assert after[2] - before[2] > 0


@pytest.mark.parametrize("spin_us", [0, 200])
def test_a_worker_that_never_comes_leaves_its_parts_to_the_caller(spin_us, released):
    fd.pool_probe(threads=2, parts=2, regions=1)  # the worker exists
    fd.pool_hold(True)
    before = fd.pool_stats()
    counts, used = fd.pool_probe(threads=2, parts=5, regions=200, work_us=1, spin_us=spin_us)
    after = fd.pool_stats()
    assert used == 2 and counts == [200] * 5
    assert after[1] - before[1] == 1000 and after[2] == before[2]  # the caller ran every part


def test_decode_with_held_workers_is_unchanged(released):
    """The whole forward with workers that take nothing gives the same logits, bit for bit, as with
    workers that take their share (rows split across threads) or as one thread (weight rows split):
    each part computes the same sums whoever runs it."""
    model = make_model(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, intermediate_size=100)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in (7, 12, 3, 20)]
    nxt = torch.randint(3, cfg.vocab_size, (len(prompts),), generator=g).tolist()
    out = {}
    for name, threads, hold, split_rows in [("one", 1, False, 4), ("rows", 2, False, 1), ("held-rows", 2, True, 1),
                                            ("weights", 2, False, 1000), ("held-weights", 2, True, 1000)]:
        step = FusedDecode(model, threads=threads, min_parallel=0, split_rows=split_rows)
        cache = PagedKVCache(cfg, num_blocks=40, block_size=4)
        seqs = [SequenceBlocks(cache, len(p) + 2) for p in prompts]
        step.prefill(cache, seqs, prompts, [None] * len(prompts))
        fd.pool_hold(hold)
        out[name] = step.run(cache, seqs, nxt, [len(p) for p in prompts], [None] * len(prompts))
        fd.pool_hold(False)
    assert torch.equal(out["held-rows"], out["rows"])
    assert torch.equal(out["held-weights"], out["one"]) and torch.equal(out["weights"], out["one"])
    assert torch.allclose(out["rows"], out["one"], atol=1e-5)  # other tile shapes: rounding only


def test_an_oversubscribed_machine_decodes_on_the_caller(released):
    """Marked oversubscribed (as after a pool thread was preempted), a decode whose products or rows would
    be split across threads runs on the caller alone (no parallel region), with one thread's logits."""
    model = make_model(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, intermediate_size=100)
    cfg = model.config
    prompts = [[3, 4, 5, 6, 7], [8, 9, 10], [11, 12, 13, 14], [15, 16]]
    logits = {}
    for split_rows in (1000, 1):
        step = FusedDecode(model, threads=2, min_parallel=0, split_rows=split_rows)
        cache = PagedKVCache(cfg, num_blocks=40, block_size=4)
        seqs = [SequenceBlocks(cache, len(p) + 4) for p in prompts]
        step.prefill(cache, seqs, prompts, [None] * len(prompts))
        fd.pool_mark_contended(60)
        before = fd.pool_stats()
        for i in range(3):
            logits[split_rows, i] = step.run(cache, seqs, [20 + i] * 4, [len(p) + i for p in prompts], [None] * 4)
        assert fd.pool_stats()[0] == before[0], split_rows
        fd.pool_mark_contended(0)
    one = FusedDecode(model, threads=1)
    cache = PagedKVCache(cfg, num_blocks=40, block_size=4)
    seqs = [SequenceBlocks(cache, len(p) + 4) for p in prompts]
    one.prefill(cache, seqs, prompts, [None] * len(prompts))
    for i in range(3):
        ref = one.run(cache, seqs, [20 + i] * 4, [len(p) + i for p in prompts], [None] * 4)
        assert torch.equal(logits[1000, i], ref) and torch.equal(logits[1, i], ref)


def test_part_counts_that_change_between_regions_never_run_a_phantom_part():
    """Regions alternating between 2 and 8 parts: a worker that read a finished region's claim word while the
    next region stored its larger count once claimed a phantom part (run twice, counted in the next region's
    `done`), and the caller then waited forever. Run in a child so that a hang fails instead of blocking."""
    import subprocess
    import sys

    regions = 200_000
    code = ("import puyu.engine.fused_decode as fd\n"
            f"counts, used = fd.pool_probe(threads=2, parts=-8, regions={regions}, work_us=0, spin_us=50)\n"
            "print(used, *counts)")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the pool hung: a region's caller waited for parts that never finish")
    assert out.returncode == 0, out.stderr
    used, *counts = map(int, out.stdout.split())
    assert used == 2
    assert counts == [regions] * 2 + [regions // 2] * 6


# A child pinned to one CPU beside a busy process pinned to the same CPU: its threads wait for that core
# about half of the time (more with two of its own threads there).
_PINNED_BESIDE_A_BUSY_LOOP = """
import os, subprocess, sys, time
cpu = min(os.sched_getaffinity(0))
os.sched_setaffinity(0, {cpu})
busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # inherits the affinity
time.sleep(0.2)
try:
    import puyu.engine.fused_decode as fd
"""


def _child(body: str) -> str:
    import subprocess
    import sys
    import textwrap

    code = _PINNED_BESIDE_A_BUSY_LOOP + textwrap.indent(textwrap.dedent(body), "    ") + "finally:\n    busy.kill()\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _schedstat_or_skip():
    if fd.run_delay_s() is None:
        pytest.skip("/proc/thread-self/schedstat is not readable here: the pool falls back to counting switches")


def test_run_delay_is_the_time_a_thread_waited_for_its_core():
    """The signal of the pool's oversubscription rule: a thread spinning for 0.6 s of wall time on a core
    shared with a busy process waits for it a good part of that time (the scheduler shares it about evenly)."""
    _schedstat_or_skip()
    out = _child("""
        d0, t0 = fd.run_delay_s(), time.perf_counter()
        while time.perf_counter() - t0 < 0.6:
            pass
        print(fd.run_delay_s() - d0, time.perf_counter() - t0)
    """)
    waited, wall = map(float, out.split())
    assert 0.1 * wall < waited < wall, (waited, wall)


def test_a_pool_kept_from_its_cores_counts_the_machine_oversubscribed():
    """With its two threads and a busy process on one core, the pool's threads wait far more than a quarter
    of the time: the pool marks the machine oversubscribed (then decode calls run on the caller alone)."""
    _schedstat_or_skip()
    assert fd.load().puyu_preempt_rule() == -1
    out = _child("""
        fd.pool_mark_contended(0)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1.0 and fd.pool_contended_s() == 0:
            fd.pool_probe(threads=2, parts=8, regions=20, work_us=500)
        print(fd.pool_contended_s())
    """)
    assert float(out) > 0


def test_run_delay_reader_falls_back_where_the_kernel_keeps_no_statistics(tmp_path):
    """The reader's verdicts, on a file standing in for /proc/thread-self/schedstat: a delay; "0 0 0" (a kernel
    with scheduler statistics switched off: never readable, so the pool counts switches instead, rule 3);
    another format and a missing file likewise; each read is a fresh open, so the file may change between."""
    stat = tmp_path / "schedstat"
    flags = ("-O1", "-fPIC", "-shared", "-pthread", f'-DPUYU_SCHEDSTAT="{stat}"')
    lib = fd.load(flags)
    for text, want in [("123 456 7\n", 456), ("0 0 0\n", -2), ("running\n", -2), ("5 6\n", -2)]:
        stat.write_text(text)
        assert lib.puyu_run_delay_ns() == want, text
    stat.unlink()
    assert lib.puyu_run_delay_ns() == -2
    assert lib.puyu_preempt_rule() == -1
