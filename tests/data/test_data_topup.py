"""Top-ups (domain classifier, resampling to a target mixture) and enrichment (retrieval from a pool)."""

from __future__ import annotations

from collections import Counter

import pytest

from puyu.data.base import Context
from puyu.data.documents import Document
from puyu.data.enrich import Enrich
from puyu.data.synthetic import Generator
from puyu.data.topup import DomainClassifier, TopUp, mixture_factors
from puyu.errors import ConfigError


def test_mixture_factors_upsample_and_resample():
    counts = {"knowledge": 600, "math": 100, "code": 50, "other": 250}
    target = {"knowledge": 0.4, "math": 0.2, "code": 0.2, "other": 0.2}
    up = mixture_factors(counts, target, "upsample", max_factor=100)
    assert min(up.values()) == pytest.approx(1.0)
    after = {d: counts[d] * up[d] for d in counts}
    total = sum(after.values())
    assert {d: round(v / total, 6) for d, v in after.items()} == pytest.approx(target)
    re = mixture_factors(counts, target, "resample", max_factor=100)
    assert sum(counts[d] * re[d] for d in counts) == pytest.approx(1000)
    assert re["knowledge"] < 1 < re["code"]
    capped = mixture_factors(counts, target, "upsample", max_factor=3)
    assert max(capped.values()) == 3
    # domains outside the target keep factor 1; empty target domains are ignored
    part = mixture_factors({"knowledge": 10, "legal": 5}, {"knowledge": 0.5, "math": 0.5}, "upsample", 4)
    assert part == {"knowledge": 1.0, "legal": 1.0}


def test_topup_apply_is_deterministic_and_reaches_the_target():
    docs = [Document(f"d{i}", f"text {i}", {"domain": "math" if i % 10 == 0 else "knowledge"}) for i in range(2000)]
    step = TopUp(target={"knowledge": 0.5, "math": 0.5}, mode="upsample", max_factor=20)
    step.label = "topup"
    shards = [docs[:1000], docs[1000:]]
    decisions = step.decide([[step.signature(d) for d in s] for s in shards])
    runs = [[d.id for s, dec in zip(shards, decisions) for d in step.apply(s, dec, Context())] for _ in range(2)]
    assert runs[0] == runs[1]
    out = Counter("math" if int(i.split("#")[0][1:]) % 10 == 0 else "knowledge" for i in runs[0])
    assert out["knowledge"] == 1800  # upsample mode never drops
    assert abs(out["math"] / sum(out.values()) - 0.5) < 0.02
    assert len(set(runs[0])) == len(runs[0])  # copies get distinct ids
    assert step.summary()["factors"]["math"] == pytest.approx(9.0)
    # resample mode subsamples the big domain, with reasons
    down = TopUp(target={"knowledge": 0.5, "math": 0.5}, mode="resample", max_factor=10)
    down.label = "topup"
    ctx = Context()
    dec = down.decide([[down.signature(d) for d in docs]])[0]
    kept = list(down.apply(docs, dec, ctx))
    n_drop = ctx.steps["topup"].dropped  # knowledge keeps ~1000/1800 of its documents
    assert 700 < n_drop < 900 and ctx.steps["topup"].reasons == {"topup: downsampled": n_drop}
    assert abs(sum(1 for d in kept if d.metadata["domain"] == "math") / len(kept) - 0.5) < 0.03


def test_topup_validates_options():
    with pytest.raises(ConfigError, match="target"):
        TopUp()
    with pytest.raises(ConfigError, match="mode"):
        TopUp(target={"math": 1}, mode="magic")


def test_domain_classifier_on_unseen_documents():
    step = DomainClassifier(train={"synthetic": {"docs": 200, "seed": 41}})
    step.setup()
    g = Generator(4242)
    docs = [g.clean(d) for d in ("knowledge", "math", "code", "other") for _ in range(25)]
    assert step.process_batch(docs) == [None] * len(docs)
    acc = sum(d.metadata["domain"] == d.metadata["synthetic"]["domain"] for d in docs) / len(docs)
    assert acc >= 0.95
    assert step.observations(docs[0])["domain_confusion"].startswith("knowledge->")


def test_enrich_pulls_seed_like_documents():
    # about 9% of the pool is math; pull the top 10% most like a math seed set
    step = Enrich(seed={"synthetic": {"docs": 120, "seed": 9, "domain": "math"}}, top_fraction=0.1)
    step.label = "enrich"
    step.setup()
    pool = Generator(321).corpus(400)
    shards = [pool[:200], pool[200:]]
    sigs = [step.signature_batch(s) for s in shards]
    decisions = step.decide(sigs)
    ctx = Context()
    kept = [d for s, dec in zip(shards, decisions) for d in step.apply(s, dec, ctx)]
    assert abs(len(kept) - 40) <= 2
    math_in_pool = sum(d.metadata["synthetic"]["domain"] == "math" for d in pool)
    hits = sum(d.metadata["synthetic"]["domain"] == "math" for d in kept)
    assert hits / len(kept) >= 0.8  # precision of the pull
    assert hits / math_in_pool >= 0.9  # recall of the pool's math documents
    assert set(ctx.steps["enrich"].categories["enrich_truth"]) <= {"seed_domain:kept", "seed_domain:dropped",
                                                                   "other:kept", "other:dropped"}
    with pytest.raises(ConfigError, match="exactly one"):
        Enrich(seed={"path": "x"}, top_fraction=0.1, min_similarity=0.2)
