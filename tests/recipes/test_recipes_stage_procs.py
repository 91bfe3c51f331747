"""The nano recipe's training stages as torchrun workers: how many processes a stage gets, that two
processes train what one does, and that a worker's error reaches the caller as itself."""

from __future__ import annotations

import json

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
    not as torchrun's exit status; the job files are left for a look."""
    from puyu.errors import TokenizerError

    r = load_recipe(None, [f"out_dir={tmp_path}", "progress=false"], cls=NanoRecipe)
    with pytest.raises(TokenizerError):
        run_in_procs(r, "sft", 2, 1)
    assert json.loads((tmp_path / "sft" / "procs_result.json").read_text())["error"] == "TokenizerError"


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
