"""Normalisation (ftfy repair, whitespace) and language identification (langid, batched)."""

from __future__ import annotations

import random

from puyu.data.base import Context
from puyu.data.documents import Document
from puyu.data.normalise import Language, Normalise
from puyu.data.synthetic_text import TextGen


def test_mojibake_is_repaired_exactly():
    gen = TextGen(random.Random(3))
    original = gen.document("other") + "\n\nThe café in Zürich — naïve résumé."
    broken = gen.mojibake(original)
    assert broken != original and "Ã" in broken
    d = Document("m", broken)
    assert Normalise().process(d) is None
    assert d.text == broken.encode("latin-1").decode("utf-8")  # the UTF-8 text before the damage
    assert "The café in Zürich — naïve résumé." in d.text


def test_whitespace_rules_keep_indentation():
    n = Normalise()
    assert n.normalise("def f(x):\r\n    return  x\t+ 1   \n\n\n\nnext\u00a0word\x07") == \
        "def f(x):\n    return x + 1\n\nnext word"
    d = Document("e", " \n\t \n")
    assert n.process(d) == "normalise: empty after normalisation"
    plain = Document("p", "Already clean text.\n\nTwo paragraphs.")
    before = plain.text
    n.process(plain)
    assert plain.text is before  # untouched text is not replaced: "modified" counts are exact


def test_language_batch_matches_langid_and_thresholds():
    gen = TextGen(random.Random(5))
    texts = [gen.document("knowledge"), gen.foreign("fr"), gen.foreign("de"), gen.foreign("es"),
             gen.document("other")]
    docs = [Document(str(i), t) for i, t in enumerate(texts)]
    step = Language(languages=["en"], min_score=0.65)
    step.label = "language"
    ctx = Context()
    kept = list(step.run(docs, ctx))
    assert [d.id for d in kept] == ["0", "4"]
    assert [d.metadata["language"] for d in docs] == ["en", "fr", "de", "es", "en"]
    # the batched matrix product gives langid's own (one document at a time) answers
    for d in docs:
        lang, score = step.identifier.classify(d.text[:2000])
        assert lang == d.metadata["language"] and abs(score - d.metadata["language_score"]) < 1e-3
    st = ctx.steps["language"]
    assert st.n_in == 5 and st.dropped == 3
    assert st.reasons == {"language: fr not in ['en']": 1, "language: de not in ['en']": 1,
                          "language: es not in ['en']": 1}
    strict = Language(languages=["en"], min_score=1.01)
    assert strict.process_batch([Document("x", texts[0])])[0].startswith("language: low confidence")
