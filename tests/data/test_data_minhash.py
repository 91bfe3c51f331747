"""MinHash-LSH and exact dedup, measured on pairs built at controlled Jaccard similarity.

Pairs: a base text of 150-300 invented words (so every 5-gram shingle is distinct) and a copy with
words replaced until the exact shingle Jaccard lands near a target; the true Jaccard is then computed
and each pair binned by it. Requirement: recall >= 0.95 for pairs at J >= 0.8, false positives <= 1%
for pairs at J <= 0.5.
"""

from __future__ import annotations

import random

import pytest

from puyu.data.base import Context
from puyu.data.dedup import ExactDedup
from puyu.data.documents import Document
from puyu.data.minhash import MinHashDedup, jaccard, shingles
from puyu.data.synthetic import make_near_duplicate
from puyu.data.synthetic_text import TextGen


def run_global(step, shards: list[list[Document]]) -> list[list[Document]]:
    """signature -> decide -> apply, as the executor does, shard by shard."""
    step.label = step.name
    packed = [step.pack(step.signature_batch(docs)) for docs in shards]
    decisions = step.decide(packed)
    return [list(step.apply(docs, dec, Context())) for docs, dec in zip(shards, decisions)]


@pytest.fixture(scope="module")
def pairs():
    rng = random.Random(7)
    gen = TextGen(rng)
    out = []
    for i in range(700):
        base = " ".join(gen.name().lower() for _ in range(rng.randint(150, 300)))
        target = rng.uniform(0.8, 0.98) if i % 2 == 0 else rng.uniform(0.05, 0.5)
        text, j = make_near_duplicate(base, target, rng, gen)
        assert abs(j - jaccard(base, text)) < 1e-12
        out.append((base, text, j))
    return out


def test_shingles_ignore_case_and_punctuation():
    assert shingles("The cat, sat on THE mat!", 3) == ["the cat sat", "cat sat on", "sat on the", "on the mat"]
    assert shingles("two words", 5) == ["two words"] and shingles("", 5) == []
    assert jaccard("a b c d e f", "a b c d e f") == 1.0


def test_shingle_hashes_are_the_shingle_set():
    step = MinHashDedup()
    for base, near, _ in [(a, b, j) for a, b, j in pairs_small()]:
        for text in (base, near):
            assert len(set(step.shingle_hashes(text))) == len(set(shingles(text)))
        # shared shingles hash alike: the hashed sets have the same Jaccard as the string sets
        ha, hb = set(step.shingle_hashes(base)), set(step.shingle_hashes(near))
        assert abs(len(ha & hb) / len(ha | hb) - jaccard(base, near)) < 1e-12
    assert step.shingle_hashes("") == [] and len(step.shingle_hashes("just three words")) == 1


def pairs_small():
    rng = random.Random(3)
    gen = TextGen(rng)
    for _ in range(20):
        base = " ".join(gen.name().lower() for _ in range(120))
        near, j = make_near_duplicate(base, rng.uniform(0.3, 0.95), rng, gen)
        yield base, near, j


def test_minhash_recall_and_false_positives_at_controlled_jaccard(pairs):
    docs = [Document(f"{side}{k}", text) for k, (a, b, _) in enumerate(pairs) for side, text in (("a", a), ("b", b))]
    half = len(docs) // 2  # pairs straddle nothing here, but the corpus is split into two shards
    kept = run_global(MinHashDedup(), [docs[:half], docs[half:]])
    kept_ids = {d.id for shard in kept for d in shard}
    assert all(f"a{k}" in kept_ids for k in range(len(pairs)))  # the first of each pair always stays
    high = [f"b{k}" not in kept_ids for k, (_, _, j) in enumerate(pairs) if j >= 0.8]
    low = [f"b{k}" not in kept_ids for k, (_, _, j) in enumerate(pairs) if j <= 0.5]
    assert len(high) >= 300 and len(low) >= 300
    recall, fpr = sum(high) / len(high), sum(low) / len(low)
    print(f"minhash recall@J>=0.8 {recall:.4f} ({len(high)} pairs), FPR@J<=0.5 {fpr:.4f} ({len(low)} pairs)")
    assert recall >= 0.95
    assert fpr <= 0.01
    # the measurement can tell a bad configuration apart: a 0.95 threshold misses many J~0.8-0.9 pairs
    strict = {d.id for shard in run_global(MinHashDedup(threshold=0.95), [docs]) for d in shard}
    strict_high = [f"b{k}" not in strict for k, (_, _, j) in enumerate(pairs) if j >= 0.8]
    assert sum(strict_high) / len(strict_high) < 0.9


def test_minhash_works_across_shards_and_keeps_the_first():
    rng = random.Random(1)
    gen = TextGen(rng)
    base = " ".join(gen.name().lower() for _ in range(200))
    near, j = make_near_duplicate(base, 0.9, rng, gen)
    other = " ".join(gen.name().lower() for _ in range(200))
    shards = [[Document("s0-other", other)], [Document("s1-base", base)], [Document("s2-near", near)]]
    step = MinHashDedup()
    kept = run_global(step, shards)
    assert [[d.id for d in s] for s in kept] == [["s0-other"], ["s1-base"], []]
    assert step.summary() == {"documents": 3, "near_duplicates": 1}


def test_minhash_only_compares_with_kept_documents():
    # a ~ b and b ~ c but a !~ c: b is dropped as a's near-duplicate, and c then has no kept match
    rng = random.Random(2)
    gen = TextGen(rng)
    words = [gen.name().lower() for _ in range(400)]
    a, b, c = (" ".join(words[i:i + 200]) for i in (0, 20, 40))
    assert jaccard(a, b) > 0.75 and jaccard(b, c) > 0.75 and jaccard(a, c) < 0.7
    kept = run_global(MinHashDedup(), [[Document("a", a), Document("b", b), Document("c", c)]])
    assert [d.id for d in kept[0]] == ["a", "c"]


def test_minhash_options_are_checked():
    with pytest.raises(ValueError, match="exceeds num_perm"):
        MinHashDedup(num_perm=64, bands=20, rows=6)


def test_exact_dedup_across_shards():
    shards = [[Document("1", "same text"), Document("2", "other")],
              [Document("3", "same   text"), Document("4", "Same text")]]
    kept = run_global(ExactDedup(), shards)
    assert [[d.id for d in s] for s in kept] == [["1", "2"], ["4"]]
    kept = run_global(ExactDedup(lowercase=True), shards)
    assert [[d.id for d in s] for s in kept] == [["1", "2"], []]
