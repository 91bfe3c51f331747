"""The synthetic corpus: deterministic, the label shares it promises, derived documents after their
source at the promised similarity, planted broken lines counted in the manifest."""

from __future__ import annotations

import json
import os
from collections import Counter

from puyu.data.documents import list_shards, read_shard
from puyu.data.minhash import jaccard
from puyu.data.synthetic import DERIVED, LABELS, Generator, write_corpus


def test_corpus_is_deterministic_with_label_shares():
    a, b = Generator(3).corpus(1000), Generator(3).corpus(1000)
    assert [(d.id, d.text) for d in a] == [(d.id, d.text) for d in b]
    assert [d.text for d in Generator(4).corpus(50)] != [d.text for d in a[:50]]
    counts = Counter(d.metadata["synthetic"]["label"] for d in a)
    assert sum(counts.values()) == 1000
    for label, spec in LABELS.items():
        if label != "clean":
            assert counts[label] == round(spec.share * 1000), label
    assert len({d.id for d in a}) == 1000


def test_derived_documents_follow_their_source():
    docs = Generator(5).corpus(1500)
    pos = {d.id: i for i, d in enumerate(docs)}
    by_id = {d.id: d for d in docs}
    for d in docs:
        syn = d.metadata["synthetic"]
        if syn["label"] not in DERIVED:
            continue
        src = by_id[syn["source"]]
        assert pos[src.id] < pos[d.id]
        assert src.metadata["synthetic"]["label"] == "clean"
        if syn["label"] == "exact_dup":
            assert d.text == src.text
        else:
            assert abs(jaccard(src.text, d.text) - syn["jaccard"]) < 1e-3
            lo, hi = (0.72, 0.99) if syn["label"] == "near_dup" else (0.1, 0.56)
            assert lo <= syn["jaccard"] <= hi, syn


def test_unrelated_clean_documents_are_dissimilar():
    docs = [d for d in Generator(6).corpus(400) if d.metadata["synthetic"]["label"] == "clean"][:80]
    worst = max(jaccard(a.text, b.text) for i, a in enumerate(docs) for b in docs[i + 1:])
    assert worst < 0.35  # far below the 0.7 dedup threshold: only planted pairs are near-duplicates


def test_write_corpus_plants_broken_lines(tmp_path):
    m = write_corpus(str(tmp_path), n_docs=120, shards=3, seed=2)
    assert m["reader_errors"] == 6 and m["documents"] == 120
    assert json.loads((tmp_path / "_manifest.json").read_text()) == m
    shards = list_shards([str(tmp_path)])
    assert len(shards) == 3 and all(s.kind == "jsonl" for s in shards)
    docs = [d for s in shards for d in read_shard(s)]
    assert sum(d.error is not None for d in docs) == 6
    assert Counter(d.metadata["synthetic"]["label"] for d in docs if d.error is None) == Counter(m["labels"])
    assert not [f for f in os.listdir(tmp_path) if ".tmp." in f]
