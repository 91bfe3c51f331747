"""Enrichment: pull the documents of a large pool that are most like a high-quality seed set.

The InternLM2 launch article: high-quality seed corpora are used to retrieve similar documents from the
web-scale pool ("recall from seed data"), which raised the share of knowledge-rich text. DCLM (Li et al.
2024) does the same with a fastText classifier; here it is retrieval, as the article describes:

  setup   TF-IDF vectors (word 1-2 grams, sublinear tf) fitted on the seed documents, and a
          scikit-learn NearestNeighbors index (cosine) over them;
  map     each pool document's similarity = mean cosine similarity to its `k` nearest seed documents,
          written to metadata["seed_similarity"];
  decide  the cut-off: the similarity of the `top_fraction` quantile over the whole pool, or the fixed
          `min_similarity`;
  apply   keep documents at or above the cut-off.

When documents carry a synthetic ground-truth domain and the seed comes from the synthetic generator
with a `domain`, the report gives precision and recall of the pull against that domain.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from puyu.data.base import Context, GlobalStep, truth
from puyu.data.documents import Document, read_any
from puyu.errors import ConfigError


class Enrich(GlobalStep):
    """Keep the pool documents most similar to a seed set. `seed` is {path: FILE} (JSONL/Parquet/text)
    or {synthetic: {docs, seed, domain}}; exactly one of `top_fraction` / `min_similarity`."""

    name = "enrich"
    category = "enrich"
    batch_size = 256

    def __init__(self, seed: dict | None = None, top_fraction: float | None = None,
                 min_similarity: float | None = None, k: int = 5):
        if (top_fraction is None) == (min_similarity is None):
            raise ConfigError("enrich needs exactly one of `top_fraction` or `min_similarity`")
        if top_fraction is not None and not 0 < top_fraction <= 1:
            raise ConfigError("enrich top_fraction must be in (0, 1]")
        if not isinstance(seed, dict) or len(seed) != 1 or next(iter(seed)) not in ("path", "synthetic"):
            raise ConfigError("enrich needs `seed: {path: FILE}` or `seed: {synthetic: {docs, seed, domain}}`")
        self.seed, self.top_fraction, self.min_similarity, self.k = seed, top_fraction, min_similarity, k
        self.vectorizer = self.index = None
        self._summary: dict = {}

    @property
    def seed_domain(self) -> str | None:
        syn = self.seed.get("synthetic")
        return syn.get("domain") if isinstance(syn, dict) else None

    def seed_texts(self) -> list[str]:
        if "path" in self.seed:
            texts = [d.text for d in read_any(self.seed["path"]) if not d.error]
        else:
            from puyu.data.synthetic import Generator

            opts = dict(self.seed["synthetic"] or {})
            unknown = set(opts) - {"docs", "seed", "domain"}
            if unknown:
                raise ConfigError(f"unknown key(s) in enrich seed.synthetic: {', '.join(sorted(unknown))}")
            g = Generator(int(opts.get("seed", 5000)), split="train")
            texts = [g.clean(opts.get("domain")).text for _ in range(int(opts.get("docs", 200)))]
        if len(texts) < self.k:
            raise ConfigError(f"enrich seed set has {len(texts)} documents; need at least k={self.k}")
        return texts

    def setup(self) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.neighbors import NearestNeighbors

        texts = self.seed_texts()
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
        self.index = NearestNeighbors(n_neighbors=self.k, metric="cosine", algorithm="brute")
        self.index.fit(self.vectorizer.fit_transform(texts))

    def similarity(self, texts: list[str]) -> np.ndarray:
        dist, _ = self.index.kneighbors(self.vectorizer.transform(texts))
        return 1.0 - dist.mean(axis=1)

    def signature_batch(self, docs: list[Document]) -> list[float]:
        sims = self.similarity([d.text for d in docs])
        for d, s in zip(docs, sims):
            d.metadata["seed_similarity"] = round(float(s), 4)
        return [float(s) for s in sims]

    def decide(self, packed: list[list[float]]) -> list[float]:
        sims = np.array([s for shard in packed for s in shard])
        if self.min_similarity is not None or len(sims) == 0:
            cut = self.min_similarity or 0.0
        else:
            # the similarity of the top_fraction-th document: keep those at or above it
            k = max(1, int(round(self.top_fraction * len(sims))))
            cut = float(np.sort(sims)[::-1][k - 1])
        self._summary = {"pool": len(sims), "cutoff": round(cut, 4), "kept": int((sims >= cut).sum())}
        return [cut] * len(packed)

    def summary(self) -> dict:
        return self._summary

    def apply(self, docs: Iterable[Document], decision: float, ctx: Context) -> Iterator[Document]:
        st = ctx.stats(self.label)
        for doc in docs:
            sim = doc.metadata.get("seed_similarity", 0.0)
            group = truth(doc) or "all"
            st.observe("seed_similarity", sim, group)
            keep = sim >= decision
            if self.seed_domain and truth(doc, "domain"):
                hit = truth(doc, "domain") == self.seed_domain
                st.observe("enrich_truth", f"{'seed_domain' if hit else 'other'}:{'kept' if keep else 'dropped'}",
                           group)
            if keep:
                st.record(doc, None, modified=False)
                yield doc
            else:
                reason = f"enrich: similarity {sim:.3f} < {decision:.3f}"
                st.record(doc, reason, modified=False)
                ctx.reject(doc, self.label, reason)
