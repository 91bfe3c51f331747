"""Recipes (validation, the shipped YAML files), the `puyu data` CLI, the report with precision/recall
on the synthetic labels, and the in-memory `clean_texts` entry point."""

from __future__ import annotations

import glob
import os
import re

import pytest
import yaml

from puyu.cli import main
from puyu.data.pipeline import STEPS, clean_texts, load_recipe, parse_recipe, run_recipe
from puyu.data.report import aggregate, languages, precision_recall
from puyu.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = {"workdir": "w", "input": {"paths": ["x"]}, "steps": ["normalise"]}


@pytest.mark.parametrize("data,message", [
    ({**BASE, "stepz": []}, "unknown key(s) in recipe: stepz"),
    ({**BASE, "input": {"paths": ["x"], "pathz": 1}}, "unknown key(s) in recipe: input: pathz"),
    ({**BASE, "executor": {"kind": "local", "threads": 2}}, "unknown key(s) in recipe: executor: threads"),
    ({**BASE, "steps": ["normalize"]}, "unknown step 'normalize'"),
    ({**BASE, "steps": [{"minhash": {"treshold": 0.7}}]}, "unknown key(s) in step minhash: treshold"),
    ({**BASE, "steps": [{"topup": {"target": {"math": 1}, "mode": "x"}}]}, "topup mode must be"),
    ({**BASE, "steps": [{"minhash": {"bands": 40}}]}, "step minhash: bands x rows"),
    ({"workdir": "w", "steps": ["normalise"]}, "give input.paths"),
    ({**BASE, "steps": []}, "steps must be a non-empty list"),
    ({**BASE, "steps": [{"a": 1, "b": 2}]}, "each step must be"),
])
def test_recipe_errors_name_the_problem(data, message):
    with pytest.raises(ConfigError) as e:
        parse_recipe(data)
    assert message in str(e.value)


def test_topup_needs_a_domain_step(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"id": "a", "text": "x"}\n')
    r = parse_recipe({"workdir": str(tmp_path / "w"), "input": {"paths": [str(tmp_path / "in.jsonl")]},
                      "steps": [{"topup": {"target": {"math": 1.0}}}]})
    with pytest.raises(ConfigError, match="put a `domain` step before it"):
        run_recipe(r, progress=False)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "recipes", "data", "*.yaml"))))
def test_shipped_recipes_parse_and_give_their_command(path):
    rec = load_recipe(path)
    rel = os.path.relpath(path, REPO)
    header = open(path).read().split("\n")[:12]
    assert any(f"puyu data run {rel}" in line for line in header), "the header must give the exact command"
    for spec in rec.steps:
        name = spec if isinstance(spec, str) else next(iter(spec))
        assert name in STEPS
        opts = {} if isinstance(spec, str) else spec[name] or {}
        if "file" in opts:
            for f in [opts["file"]] if isinstance(opts["file"], str) else opts["file"]:
                assert os.path.exists(os.path.join(REPO, f)), f


def test_text_folder_recipe_on_a_folder(tmp_path, monkeypatch):
    import random

    from puyu.data.synthetic_text import TextGen

    gen = TextGen(random.Random(8))
    folder = tmp_path / "texts"
    folder.mkdir()
    good = [gen.document("knowledge") for _ in range(6)]
    for i, t in enumerate(good):
        (folder / f"doc{i}.txt").write_text(t)
    (folder / "copy.txt").write_text(good[0])
    (folder / "junk.txt").write_text("buy now")
    (folder / "bad.txt").write_bytes(b"\xff\xfe\x00broken")
    data = yaml.safe_load(open(os.path.join(REPO, "recipes", "data", "text_folder.yaml")))
    data.update(workdir=str(tmp_path / "w"), input={"paths": [str(folder)]}, executor={"workers": 1})
    monkeypatch.chdir(REPO)  # the recipe names its blocklist relative to the repository root
    res = run_recipe(parse_recipe(data), progress=False)
    kept = sorted(d.id for d in res.documents())
    assert kept == ["copy.txt"] + [f"doc{i}.txt" for i in range(1, 6)]  # files are read in sorted order
    report = open(res.report).read()
    assert "| exact_dedup | 7 | 1 |" in report and "| reader | 9 | 1 |" in report
    assert "reader: undecodable bytes (1)" in report


def test_cli_synth_steps_and_errors(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "c"), "--docs", "40", "--shards", "2", "--seed", "3"]) == 0
    assert "40 documents in 2 shards" in capsys.readouterr().out
    assert len(glob.glob(str(tmp_path / "c" / "shard_*.jsonl.zst"))) == 2
    assert main(["data", "steps"]) == 0
    listing = capsys.readouterr().out
    for name in STEPS:
        assert re.search(rf"^{name}  \[", listing, re.M), name
    bad = tmp_path / "bad.yaml"
    bad.write_text("workdir: w\ninput: {paths: [x]}\nsteps: [normalise]\nbogus: 1\n")
    assert main(["data", "run", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown key(s) in " + str(bad) + ": bogus (allowed: description, executor, input, "
                   "name, output, report, steps, synthetic, workdir)"]
    assert main(["data", "run", str(tmp_path / "missing.yaml")]) == 1
    assert capsys.readouterr().err.startswith("error: cannot read recipe")
    assert main(["data"]) == 2


def test_full_synthetic_recipe_reports_precision_and_recall(tmp_path, capsys, monkeypatch):
    data = yaml.safe_load(open(os.path.join(REPO, "recipes", "data", "synthetic.yaml")))
    data["workdir"] = str(tmp_path / "syn")
    data["synthetic"].update(docs=700, shards=3, seed=5)  # keeps the recipe's Chinese and mixed shares
    data["executor"] = {"kind": "local", "workers": 1}
    for spec in data["steps"]:  # smaller training sets keep the test quick
        opts = next(iter(spec.values()))
        if opts and "train" in opts:
            opts["train"]["synthetic"]["docs"] = 300
    path = tmp_path / "syn.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(REPO)
    assert main(["data", "run", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "documents read" in out and "report:" in out
    agg = aggregate(data["workdir"])
    pr = {(r["step"], r["action"]): r for r in precision_recall(agg)}
    for key in [("reader", "drop"), ("characters", "drop"), ("punctuation", "drop"), ("language", "drop"),
                ("gopher_quality", "drop"), ("gopher_repetition", "drop"), ("c4", "drop"), ("c4", "modify"),
                ("exact_dedup", "drop"), ("minhash", "drop"), ("domain_blocklist", "drop"),
                ("word_blocklist", "drop"), ("safety_classifier", "drop"), ("quality", "drop"),
                ("normalise", "modify")]:
        r = pr[key]
        # quality: 0.85, since its cross-fitted calibration trades a little recall (0.889 here) for
        # precision (recipe at 1,000 documents: precision 0.570 -> 0.774, recall 0.942 -> 0.923; README)
        assert r["recall"] >= (0.85 if key == ("quality", "drop") else 0.9), (key, r)
        if key != ("quality", "drop"):  # quality is scored per language below
            assert r["precision"] >= (0.75 if key == ("normalise", "modify") else 0.95), (key, r)
    # per language: the recipe's corpus is 30% Chinese and 4% mixed (synthetic.yaml)
    assert languages(agg) == ["en", "mixed", "zh"]
    en = {(r["step"], r["action"]): r for r in precision_recall(agg, "en")}
    assert en[("quality", "drop")]["precision"] >= 0.75 and en[("quality", "drop")]["recall"] >= 0.9
    zh = {(r["step"], r["action"]): r for r in precision_recall(agg, "zh")}
    for key in [("normalise", "drop"), ("normalise", "modify"), ("punctuation", "drop"), ("gopher_quality", "drop"),
                ("gopher_repetition", "drop"), ("c4", "modify"), ("exact_dedup", "drop"), ("minhash", "drop"),
                ("word_blocklist", "drop")]:
        assert zh[key]["recall"] >= 0.9 and zh[key]["precision"] >= 0.95, (key, zh[key])
    # the Chinese quality score is the weak spot (see README): word salad is caught, but the value
    # score also drops some clean Chinese documents; this pins that it stays a minority
    zq = zh[("quality", "drop")]
    assert zq["recall"] >= 0.6, zq
    zh_clean = agg["steps"]["quality"]["langs"]["zh"]["clean"]
    assert zh_clean[1] <= 0.3 * zh_clean[0], zh_clean
    mixed = {(r["step"], r["action"]): r for r in precision_recall(agg, "mixed")}
    assert all(r["fp"] <= 1 for r in mixed.values()), mixed  # mixed documents are all clean: kept
    report = open(os.path.join(data["workdir"], "report", "report.md")).read()
    assert "## Precision and recall on the synthetic labels" in report and "## Domain mixture" in report
    for png in ("counts.png", "reasons.png", "scores.png", "domains.png"):
        assert os.path.getsize(os.path.join(data["workdir"], "report", png)) > 5000
    # the top-up moved the mixture towards its target
    before = next(t["categories"]["domain"] for t in agg["steps"].values() if "domain" in t["categories"])
    after = agg["output_domains"]
    share = lambda c, d: c.get(d, 0) / sum(c.values())  # noqa: E731
    assert share(after, "code") > share(before, "code") and share(after, "math") > share(before, "math")
    assert main(["data", "report", data["workdir"]]) == 0


def test_clean_texts_in_memory(tmp_path):
    import random

    from puyu.data.synthetic_text import TextGen

    gen = TextGen(random.Random(12))
    good = [gen.document(d) for d in ("knowledge", "other", "math", "code") for _ in range(3)]
    texts = good[:6] + [good[0], "too short", gen.foreign("de")] + good[6:]
    kept = clean_texts(texts, workdir=str(tmp_path / "mem"), shards=3)
    assert [k.strip() for k in kept] == [g.strip() for g in good]


def test_parquet_output_and_result_documents(tmp_path, small_corpus):
    res = run_recipe(parse_recipe({"workdir": str(tmp_path / "w"), "input": {"paths": [small_corpus]},
                                   "output": {"format": "parquet"}, "report": False,
                                   "steps": ["normalise", "exact_dedup"]}), progress=False)
    assert all(p.endswith(".parquet") for p in res.output_files) and len(res.output_files) == 4
    docs = list(res.documents())
    assert len(docs) == res.documents_out == 600 - 30  # 5% of the corpus are exact copies
    assert all(d.metadata["synthetic"]["label"] != "exact_dup" for d in docs)


def test_dedup_steps_keep_documentation_and_drop_copies(tmp_path):
    from puyu.data.pipeline import DEDUP_STEPS

    page = "\n".join(f"    method_{i}(self, key, default=None)\n        Return the value for key {i}." for i in range(30))
    other = page.replace("value", "entry").replace("key", "name")
    near = page.replace("Return the value for key 7.", "Return a value for key 7.")
    kept = clean_texts([page, other, page, near], workdir=str(tmp_path / "d"), steps=DEDUP_STEPS, shards=2)
    assert kept == [page, other]  # aligned, symbol-heavy text survives; the copy and near-copy do not


def test_lone_surrogates_are_repaired_at_input(tmp_path):
    """A lone UTF-16 surrogate (valid in a Python str and in JSON escapes, not in UTF-8) becomes U+FFFD
    instead of a TypeError from the writer."""
    from puyu.data.pipeline import clean_documents

    text = "The harbour town sits at the mouth of a wide river \ud800 and its life follows the tides."
    res = clean_documents([text, "x\ud83d\ude00y"], str(tmp_path / "w"), steps=["normalise"])
    assert [d.text for d in res.documents()] == [text.replace("\ud800", "\ufffd"), "x\U0001F600y"]
    with pytest.raises(ConfigError, match="item 0 is a int"):
        clean_texts([3], str(tmp_path / "w2"))


def test_cli_synth_defaults_match_the_recipe():
    from puyu.data import cli

    recipe = yaml.safe_load(open(os.path.join(REPO, "recipes", "data", "synthetic.yaml")))["synthetic"]
    import argparse

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(["synth", "out"])
    assert (args.zh_share, args.mixed_share) == (recipe["zh_share"], recipe["mixed_share"])


def test_rerun_refuses_when_the_inputs_changed(tmp_path):
    from puyu.errors import PuyuError

    folder = tmp_path / "in"
    folder.mkdir()
    text = ("The harbour town sits at the mouth of a wide river, and for centuries its life has followed the "
            "tides. Fishing boats leave before dawn and return in the afternoon.")
    (folder / "a.txt").write_text(text)
    recipe = parse_recipe({"workdir": str(tmp_path / "w"), "input": {"paths": [str(folder)]},
                           "steps": ["normalise"], "report": False})
    assert run_recipe(recipe, progress=False).documents_out == 1
    assert run_recipe(recipe, progress=False).documents_out == 1  # unchanged inputs: resumes (nothing to do)
    (folder / "a.txt").write_text(text + " The market fills with the smell of salt.")
    with pytest.raises(PuyuError, match=r"input files changed .*1 changed, 0 new, 0 gone.*--fresh"):
        run_recipe(recipe, progress=False)
    (folder / "b.txt").write_text(text)
    with pytest.raises(PuyuError, match=r"1 new"):
        run_recipe(recipe, progress=False)
    res = run_recipe(recipe, progress=False, fresh=True)
    assert sorted(d.text for d in res.documents()) == sorted([text + " The market fills with the smell of salt.", text])
