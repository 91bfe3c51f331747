"""The Ray executor on a local Ray instance gives the same output and rejects as the local executor,
and a run started locally can be finished by Ray (same markers)."""

from __future__ import annotations

import glob
import io
import json
import os

import pytest
import zstandard

from puyu.data.pipeline import parse_recipe, run_recipe

STEPS = ["normalise", "characters", "punctuation", "gopher_quality", "gopher_repetition", "exact_dedup",
         "minhash", {"safety_classifier": {"train": {"synthetic": {"docs": 200, "seed": 3}}}},
         {"domain": {"train": {"synthetic": {"docs": 120, "seed": 4}}}},
         {"topup": {"target": {"knowledge": 0.3, "math": 0.3, "code": 0.2, "other": 0.2}}}]


def recipe(workdir, corpus, kind):
    return parse_recipe({"workdir": str(workdir), "input": {"paths": [corpus]}, "report": False,
                         "executor": {"kind": kind, "workers": 2}, "steps": STEPS})


def rows(pattern):
    out = []
    for f in sorted(glob.glob(pattern)):
        with open(f, "rb") as fh:
            out += [json.loads(x) for x in io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh),
                                                            encoding="utf-8")]
    return out


@pytest.mark.slow
def test_ray_executor_matches_local(small_corpus, tmp_path):
    ray = pytest.importorskip("ray")
    local = run_recipe(recipe(tmp_path / "local", small_corpus, "local"), progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_recipe(recipe(tmp_path / "ray", small_corpus, "ray"), progress=False)
        # finish with Ray a run whose last stage was lost
        wd = tmp_path / "local"
        last = max(int(os.path.basename(p)) for p in glob.glob(str(wd / "stages" / "*")))
        for p in glob.glob(str(wd / "stages" / str(last) / "*.done.json")):
            os.remove(p)
        for p in local.output_files:
            os.remove(p)
        resumed = run_recipe(recipe(wd, small_corpus, "ray"), progress=False, executor="ray")
    finally:
        ray.shutdown()
    ref = rows(str(tmp_path / "local" / "output" / "*.jsonl.zst"))
    assert rows(str(tmp_path / "ray" / "output" / "*.jsonl.zst")) == ref
    assert sorted(r["id"] for r in rows(str(tmp_path / "ray" / "rejects" / "*"))) == \
        sorted(r["id"] for r in rows(str(tmp_path / "local" / "rejects" / "*")))
    assert remote.documents_out == local.documents_out == resumed.documents_out == len(ref)
    assert any("#topup" in r["id"] for r in ref)
