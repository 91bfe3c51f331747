"""The nano recipe's training stages as torchrun workers: how many processes a stage gets, that two
processes train what one does, and that a worker's error reaches the caller as itself."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tiny_models import TINY_NANO

from puyu.errors import ConfigError
from puyu.recipes.nano import NanoRecipe
from puyu.recipes.stage_procs import run_in_procs, stage_procs
from puyu.train.recipe import load_recipe


@pytest.mark.parametrize("sets, cores, want", [
    ([], 2, {"pretrain": (2, 1), "longctx": (1, "auto"), "sft": (2, 1)}),  # longctx's batch of 3 does not split
    ([], 1, {"pretrain": (1, "auto"), "longctx": (1, "auto"), "sft": (1, "auto")}),
    ([], 8, {"pretrain": (2, 4), "longctx": (1, "auto"), "sft": (2, 4)}),
    (["threads=1"], 8, {"pretrain": (1, 1), "longctx": (1, 1), "sft": (1, 1)}),  # a budget of one thread
    (["threads=6"], 2, {"pretrain": (2, 3), "longctx": (1, 6), "sft": (2, 3)}),
    (["device=cuda:0"], 8, {"pretrain": (1, "auto"), "longctx": (1, "auto"), "sft": (1, "auto")}),  # one GPU process
    (["procs=1"], 8, {"pretrain": (1, "auto"), "longctx": (1, "auto"), "sft": (1, "auto")}),
    (["procs=4", "longctx.batch_size=4"], 2, {"pretrain": (4, 1), "longctx": (4, 1), "sft": (4, 1)}),
])
def test_processes_per_stage(sets, cores, want):
    device = [x.split("=")[1] for x in sets if x.startswith("device=")]
    r = load_recipe(None, [x for x in sets if not x.startswith("device=")], cls=NanoRecipe)
    r.device = device[0] if device else r.device  # (set after loading: this machine need not have CUDA)
    assert {name: stage_procs(r, name, cores=cores) for name in want} == want


@pytest.mark.parametrize("sets, words", [
    (["procs=0"], "procs must be auto or a whole number"), (["procs=two"], "procs must be auto or a whole number"),
    (["procs=2"], "longctx.batch_size is 3"), (["procs=2", "longctx.batch_size=4", "sft.batch_size=9"], "sft.batch_size is 9"),
])
def test_bad_process_settings_fail_before_any_work(sets, words):
    with pytest.raises(ConfigError, match=words):
        load_recipe(None, sets, cls=NanoRecipe).validate()


def test_a_workers_error_comes_back_as_its_own_class(tmp_path):
    """Rank 0's user-facing error (here: no tokenizer in an empty out_dir) is raised again by the launcher,
    not as torchrun's exit status; no job or result file is left behind."""
    from puyu.errors import TokenizerError

    r = load_recipe(None, [f"out_dir={tmp_path}", "progress=false"], cls=NanoRecipe)
    with pytest.raises(TokenizerError):
        run_in_procs(r, "sft", 2, 1)
    assert not list((tmp_path / "sft").glob("procs_*"))


@pytest.mark.slow
def test_two_processes_train_what_one_does(tmp_path):
    """A miniature nano run with procs=2 (two real torchrun workers per training stage) against procs=1: the
    same losses at every logged step to float32 rounding (the all-reduce sums in another order), rank 0's
    pretraining curve, each stage's process count and world_size in the report, the job files cleared."""
    from puyu.recipes.nano import run_nano

    tiny = TINY_NANO + [
            "pretrain.steps=20", "pretrain.eval_every=10", "longctx.steps=4", "longctx.eval_every=2",
            "longctx.batch_size=4", "longctx.seq_len=256", "corpus.long_passkey_tokens=[50, 256]", "sft.steps=10",
            "sft.eval_every=10", "eval.passkey_n=3", "eval.task_eval_problems=5", "eval.tool_n=4",
            "eval.interpreter_arith_n=2", "align.enabled=false", "progress=false", "threads=2"]
    reports = {n: run_nano(load_recipe(None, tiny + [f"out_dir={tmp_path / str(n)}", f"procs={n}"], cls=NanoRecipe))
               for n in (1, 2)}

    def losses(n, stage, kind):
        lines = (tmp_path / str(n) / stage / "metrics.jsonl").read_text().splitlines()
        return [rec["loss"] for rec in map(json.loads, lines) if rec["kind"] == kind]

    for stage, n_logged in (("pretrain", 2), ("longctx", 1), ("sft", 1)):
        assert reports[2]["stages"][stage]["procs"] == 2 and reports[2]["stages"][stage]["world_size"] == 2
        assert reports[1]["stages"][stage]["procs"] == 1 and reports[1]["stages"][stage]["world_size"] == 1
        for kind in ("train", "val"):
            two, one = losses(2, stage, kind), losses(1, stage, kind)
            assert len(two) >= n_logged and two == pytest.approx(one, rel=1e-4), (stage, kind)
    curve = reports[2]["curve"]
    assert [c["step"] for c in curve] == [10, 20] and all(0.0 <= c["arith_acc_100"] <= 1.0 for c in curve)
    assert not list((tmp_path / "2").glob("*/procs_*.json"))


def _workers(marker: str) -> list[int]:
    """Pids of live processes whose command line contains `marker`."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and marker in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                pids.append(int(d.name))
        except OSError:
            pass
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_no_worker_outlives_an_interrupted_launcher(tmp_path, how):
    """SIGINT or SIGKILL sent to the launching process alone (not its process group, as a terminal's Ctrl-C would):
    torchrun and both workers are gone within seconds, and none writes a later checkpoint."""
    import signal
    import subprocess
    import sys
    import time

    from puyu.recipes.nano import run_nano

    base = TINY_NANO + ["pretrain.steps=2", "pretrain.eval_every=2", "longctx.steps=1", "longctx.eval_every=1",
                        "longctx.seq_len=256", "corpus.long_passkey_tokens=[50, 256]", "sft.steps=1",
                        "sft.eval_every=1", "align.enabled=false", "progress=false", "procs=1", "threads=1",
                        "eval.passkey_n=1", "eval.task_eval_problems=2", "eval.tool_n=1", "eval.interpreter_arith_n=1"]
    run_nano(load_recipe(None, base + [f"out_dir={tmp_path}"], cls=NanoRecipe))  # the data and shards to train on
    long = base + [f"out_dir={tmp_path}", "pretrain.steps=100000", "pretrain.eval_every=100000"]
    metrics = tmp_path / "pretrain" / "metrics.jsonl"
    # the first run's lines would satisfy the wait below before the workers train (a fresh run deletes the file
    # when it starts, so the kill could then come before the new file exists)
    metrics.unlink()
    code = ("import sys; from puyu.recipes.nano import NanoRecipe; from puyu.recipes.stage_procs import run_in_procs; "
            "from puyu.train.recipe import load_recipe; "
            "run_in_procs(load_recipe(None, sys.argv[1:], cls=NanoRecipe), 'pretrain', 2, 1)")
    # SIGINT at its default, as in a terminal's foreground job: a test run started in the background by a
    # non-interactive shell (`make test &`) ignores SIGINT, and the launcher would inherit that and never stop
    launcher = subprocess.Popen([sys.executable, "-c", code, *long], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        marker = f"stage_worker {tmp_path / 'pretrain'}"
        deadline = time.time() + 120
        while len(_workers(marker)) < 2 or not metrics.is_file() or len(metrics.read_text().splitlines()) < 3:
            assert launcher.poll() is None and time.time() < deadline, "the workers did not start training"
            time.sleep(0.5)
        time.sleep(3)  # well into training (stopped in their set-up, workers can die of torchrun's end by chance)
        launcher.send_signal(getattr(signal, how))
        err = launcher.communicate(timeout=60)[1]
        assert "SignalException" not in err  # torchrun stopped by the signal passed on: quietly
        deadline = time.time() + 20
        while _workers(str(tmp_path / "pretrain" / "procs_job.json")):  # torchrun's command line and the workers'
            assert time.time() < deadline, f"still running after {how}"
            time.sleep(0.5)
        size = metrics.stat().st_size
        time.sleep(2)
        assert metrics.stat().st_size == size
    finally:  # a failure above must not leave a 100,000-step run behind
        if launcher.poll() is None:
            launcher.kill()
        for pid in _workers(str(tmp_path / "pretrain" / "procs_job.json")):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
