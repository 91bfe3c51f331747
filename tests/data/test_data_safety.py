"""Safety steps: blocklists match whole words / domains and subdomains; the classifier catches toxic
text with no blocklisted word, on templates it was not trained on."""

from __future__ import annotations

import pytest

from puyu.data.documents import Document
from puyu.data.safety import DomainBlocklist, SafetyClassifier, WordBlocklist, url_host
from puyu.data.synthetic import Generator
from puyu.errors import ConfigError


def test_domain_blocklist_matches_subdomains_only():
    step = DomainBlocklist(domains=["bad.example", "evil.org"])
    assert step.process(Document("1", "x", {"url": "https://m.bad.example/page?q=1"})) == \
        "domain_blocklist: blocked domain (bad.example)"
    assert step.process(Document("2", "x", {"url": "http://EVIL.org"})).endswith("(evil.org)")
    assert step.process(Document("3", "x", {"url": "https://notbad.example/"})) is None
    assert step.process(Document("4", "x", {"url": "https://bad.example.com/"})) is None
    assert step.process(Document("5", "x", {})) is None
    assert url_host("www.x.org/a") == "www.x.org" and url_host("http://[bad") == ""


def test_word_blocklist_whole_words_and_file(tmp_path):
    f = tmp_path / "words.txt"
    f.write_text("# comment\nxxx\nsex cam\n\n")
    step = WordBlocklist(file=str(f))
    assert step.process(Document("1", "Watch XXX clips here.")) == "word_blocklist: blocked words (xxx)"
    assert step.process(Document("2", "a live Sex  cam? no: sex cam!")) == "word_blocklist: blocked words (sex cam)"
    assert step.process(Document("3", "the xxxl shirt and the sexcam.")) is None
    lenient = WordBlocklist(words=["xxx"], max_hits=1)
    assert lenient.process(Document("4", "xxx once")) is None
    assert lenient.process(Document("5", "xxx twice xxx")) is not None
    with pytest.raises(ConfigError, match="word_blocklist needs"):
        WordBlocklist()
    with pytest.raises(ConfigError, match="cannot read"):
        WordBlocklist(file=str(tmp_path / "missing.txt"))


def test_safety_classifier_generalises_to_unseen_templates():
    from puyu.data.synthetic_text import OTHER, TOXIC

    step = SafetyClassifier(train={"synthetic": {"docs": 400, "seed": 21}})
    step.setup()
    g = Generator(999)
    t = g.text
    # toxic comment threads built only from the templates training never saw (training uses TOXIC[::2])
    unseen = [Document(f"t{i}", t.paragraphs(t.prose(TOXIC[1::2], 5) + t.prose(OTHER, 5))) for i in range(60)]
    clean = [Document(f"c{i}", g.clean().text) for i in range(120)]
    adverts = [Document(f"a{i}", t.advert()) for i in range(30)]
    hits = [r is not None for r in step.process_batch(unseen)]
    false = [r is not None for r in step.process_batch(clean + adverts)]
    assert sum(hits) / len(hits) >= 0.9, sum(hits) / len(hits)
    assert sum(false) / len(false) <= 0.02
    assert all(0.0 <= d.metadata["unsafe_prob"] <= 1.0 for d in unseen + clean)
    assert step.process_batch(unseen[:1])[0].startswith("safety_classifier: unsafe")
