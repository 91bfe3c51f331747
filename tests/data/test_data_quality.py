"""Quality and value scoring: the n-gram LM is a proper distribution, each dimension moves the right
way, and the combined value score separates clean text from adverts, SEO spam and word salad on
documents generated apart from the training data."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from puyu.data.classifiers import TextClassifier, training_data
from puyu.data.documents import Document
from puyu.data.ngram import NGramLM, tokenize
from puyu.data.quality import QualityScore, calibrated, compression_ratio
from puyu.data.synthetic import Generator, training_set
from puyu.errors import ConfigError


def test_tokenize_maps_numbers():
    assert tokenize("In 1902, 3.5 km!") == ["in", "<num>", ",", "<num>", "km", "!"]


@pytest.mark.parametrize("order", [1, 2, 3])
def test_ngram_probabilities_sum_to_one(order):
    texts, _ = training_set("seed", 40, seed=9)
    lm = NGramLM(order).fit(texts)
    vocab = list(lm.unigrams)
    assert "the" in vocab and "<num>" in vocab and "</s>" in vocab
    # P(w | context) over the vocabulary plus the unknown word sums to 1, for seen and unseen contexts
    for ctx in [("of", "the"), ("zzz", "qqq"), ("<s>", "<s>"), ("the", "zzz")]:
        total = sum(lm.prob(w, ctx) for w in vocab) + lm.prob("qqq-unseen", ctx)
        assert abs(total - 1.0) < 1e-9, (ctx, total)
    if order > 1:  # context matters: "the" after "of" is likelier than after an unseen word
        assert lm.prob("the", ("of",)) > lm.prob("the", ("zzz",))


def test_ngram_perplexity_prefers_fluent_text():
    texts, _ = training_set("seed", 200, seed=9)
    lm = NGramLM(3).fit(texts)
    g = Generator(77)
    fluent = [g.clean().text for _ in range(30)]
    salad = [g.text.word_salad(t) for t in fluent]
    better = [lm.perplexity(f) < lm.perplexity(s) for f, s in zip(fluent, salad)]
    assert all(better)


def test_compression_and_calibration():
    prose = Generator(1).clean().text
    assert compression_ratio("abc " * 500) < 0.05 < compression_ratio(prose)
    ref = np.sort(np.array([1.0, 2.0, 3.0, 4.0]))
    assert calibrated(ref, 0.5, higher_is_better=True) == 0.0  # worse than every reference
    assert calibrated(ref, 2.5, higher_is_better=True) == 1.0  # better than half: full marks
    assert calibrated(ref, 4.5, higher_is_better=False) == 0.0
    assert calibrated(ref, 3.5, higher_is_better=False) == 0.5  # only 4.0 does worse: 2 x 1/4
    assert calibrated(ref, 1.5, higher_is_better=False) == 1.0
    assert calibrated(ref, 3.5, higher_is_better=True) == 1.0
    assert calibrated(ref, 1.5, higher_is_better=True) == 0.5


@pytest.fixture(scope="module")
def scorer():
    q = QualityScore(train={"synthetic": {"docs": 400, "seed": 31}})
    q.setup()
    return q


def test_value_score_separates_clean_from_junk(scorer):
    g = Generator(555)  # different seed, all templates: documents the scorer was not trained on
    groups = {"clean": [g.clean(d).text for d in ("knowledge", "math", "code", "other") for _ in range(15)],
              "advert": [g.text.advert() for _ in range(30)],
              "seo_spam": [g.text.seo_spam() for _ in range(30)],
              "word_salad": [g.text.word_salad(g.clean().text) for _ in range(30)]}
    docs = {k: [Document(f"{k}{i}", t) for i, t in enumerate(v)] for k, v in groups.items()}
    reasons = {k: scorer.process_batch(v) for k, v in docs.items()}
    kept_clean = sum(r is None for r in reasons["clean"]) / len(reasons["clean"])
    assert kept_clean >= 0.95
    for junk in ("advert", "seo_spam", "word_salad"):
        dropped = sum(r is not None for r in reasons[junk]) / len(reasons[junk])
        assert dropped >= 0.9, (junk, dropped)
    v = docs["clean"][0].metadata["value"]
    assert set(v) == {"score", "fluency", "density", "classifier", "perplexity", "compression"}
    assert 0 <= v["score"] <= 1
    # each dimension on its own points the right way
    mean = {k: np.mean([d.metadata["value"]["fluency"] for d in v_]) for k, v_ in docs.items()}
    assert mean["clean"] > 0.5 > mean["word_salad"]
    dens = {k: np.mean([d.metadata["value"]["density"] for d in v_]) for k, v_ in docs.items()}
    rep = Document("r", "\n".join([groups["clean"][0].split(". ")[0] + "."] * 20))
    scorer.process_batch([rep])
    assert rep.metadata["value"]["density"] < 0.1 < dens["clean"]


def test_quality_weights_and_threshold(scorer):
    with pytest.raises(ConfigError, match="unknown quality weight"):
        QualityScore(weights={"beauty": 1})
    d = Document("x", Generator(3).clean().text)
    scorer.process_batch([d])
    v = d.metadata["value"]
    assert v["score"] == pytest.approx((v["fluency"] + v["density"] + v["classifier"]) / 3, abs=1e-3)


def test_training_data_from_a_file(tmp_path):
    path = tmp_path / "train.jsonl"
    texts, labels = training_set("safety", 60, seed=4)
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in zip(texts, labels)))
    t2, l2 = training_data({"path": str(path)}, "safety")
    assert t2 == texts and l2 == labels
    clf = TextClassifier().fit(t2, l2)
    assert sorted(clf.classes) == ["safe", "unsafe"]
    with pytest.raises(ConfigError, match="train must be"):
        training_data({"url": "x"}, "safety")
    with pytest.raises(ConfigError, match="unknown key"):
        training_data({"synthetic": {"size": 3}}, "safety")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no label"}) + "\n")
    with pytest.raises(ConfigError, match="no label"):
        training_data({"path": str(bad)}, "safety")
    with pytest.raises(ConfigError, match="two labels"):
        TextClassifier().fit(["a", "b"], ["x", "x"])


def test_training_sets_are_disjoint_from_the_corpus():
    corpus = {d.text for d in Generator(0).corpus(300)}
    for kind in ("quality", "safety", "domain", "seed"):
        texts, labels = training_set(kind, 80, seed=random.Random(kind).randrange(10**6))
        assert not corpus & set(texts)
        assert len(set(labels)) == (1 if kind == "seed" else 4 if kind == "domain" else 2)


def test_training_is_repeatable():
    texts, labels = training_set("domain", 120, seed=8)
    a = TextClassifier().fit(texts, labels).predict_proba(texts[:20])
    b = TextClassifier().fit(texts, labels).predict_proba(texts[:20])
    assert (a == b).all()  # bit-identical: reruns after a crash retrain the same model
