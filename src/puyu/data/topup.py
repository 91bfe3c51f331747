"""Targeted top-ups of weak domains: a domain classifier, and resampling to a target mixture.

The InternLM2 launch article credits part of the data gains to "targeted supplementation" of domains
where the model was weak (knowledge, math, code). Two steps:

  domain  (per document) a classifier labels each document knowledge / math / code / other and writes
          metadata["domain"] and metadata["domain_prob"]; it never drops anything.
  topup   (global) counts documents per domain over the whole corpus, then gives each domain d the
          sampling factor f_d that moves the mixture to `target`: in "upsample" mode the biggest
          domain relative to its target keeps f = 1 and the others are repeated (no document is lost);
          in "resample" mode the corpus size is kept and over-represented domains are subsampled.
          Factors are capped at `max_factor` (repeating data more than ~4 times stops helping:
          Muennighoff et al. 2023, "Scaling Data-Constrained Language Models"). Each document gets
          floor(f) copies plus one more with probability frac(f), decided by a hash of (seed, id), so
          the result does not depend on shard order or worker count. Copies get ids "ID#topupK".
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np

from puyu.data.base import Context, GlobalStep, Step, truth
from puyu.data.classifiers import TextClassifier, training_data
from puyu.data.documents import Document
from puyu.data.segment import segmented
from puyu.errors import ConfigError

DOMAINS = ("knowledge", "math", "code", "other")


class DomainClassifier(Step):
    """Label each document's domain (see the module docstring); trained on `train` (labels are the
    domain names). When documents carry a synthetic ground-truth domain, "truth->predicted" pairs are
    recorded so the report can print the confusion matrix."""

    name = "domain"
    category = "topup"
    observe = ("domain", "domain_prob")
    batch_size = 256

    def __init__(self, train: dict | None = None):
        self.train = train
        self.clf: TextClassifier | None = None

    def setup(self) -> None:
        texts, labels = training_data(self.train, "domain", default_docs=400, default_seed=4000)
        self.clf = TextClassifier().fit(texts, labels)

    def process_batch(self, docs: list[Document]) -> list[str | None]:
        probs = self.clf.predict_proba([segmented(d) for d in docs])
        classes = self.clf.classes
        for doc, row in zip(docs, probs):
            k = int(np.argmax(row))
            doc.metadata["domain"] = classes[k]
            doc.metadata["domain_prob"] = round(float(row[k]), 4)
        return [None] * len(docs)

    def observations(self, doc: Document) -> dict:
        true = truth(doc, "domain")
        return {"domain_confusion": f"{true}->{doc.metadata['domain']}"} if true else {}


def _uniform(seed: int, doc_id: str) -> float:
    """A deterministic U[0, 1) draw for a document."""
    h = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def mixture_factors(counts: dict[str, int], target: dict[str, float], mode: str,
                    max_factor: float) -> dict[str, float]:
    """Sampling factor per domain that moves `counts` towards the `target` shares (see module doc).
    Domains absent from `target` keep factor 1; target domains with no documents are skipped."""
    present = {d: n for d, n in counts.items() if d in target and n > 0}
    if not present:
        return {d: 1.0 for d in counts}
    share = sum(target[d] for d in present)
    t = {d: target[d] / share for d in present}  # renormalised over the domains we have
    n_in_target = sum(present.values())
    if mode == "upsample":
        size = max(n / t[d] for d, n in present.items())  # smallest total with every f_d >= 1
    else:
        size = n_in_target
    factors = {d: 1.0 for d in counts}
    for d, n in present.items():
        factors[d] = min(max_factor, t[d] * size / n)
    return factors


class TopUp(GlobalStep):
    """Resample to a target domain mixture; see the module docstring. Needs a `domain` step earlier
    in the pipeline (or any step that writes metadata[`key`])."""

    name = "topup"
    category = "topup"

    def __init__(self, target: dict[str, float] | None = None, mode: str = "upsample",
                 max_factor: float = 4.0, seed: int = 0, key: str = "domain"):
        if not target:
            raise ConfigError("topup needs a `target` mixture, e.g. {knowledge: 0.3, math: 0.25, ...}")
        if any(v < 0 for v in target.values()) or sum(target.values()) <= 0:
            raise ConfigError("topup target shares must be >= 0 and not all zero")
        if mode not in ("upsample", "resample"):
            raise ConfigError(f"topup mode must be 'upsample' or 'resample', not {mode!r}")
        self.target = {str(k): float(v) for k, v in target.items()}
        self.mode, self.max_factor, self.seed, self.key = mode, max_factor, seed, key
        self._summary: dict = {}

    def signature(self, doc: Document) -> str:
        return str(doc.metadata.get(self.key, "unknown"))

    def decide(self, packed: list[list[str]]) -> list[dict[str, float]]:
        counts = Counter(d for shard in packed for d in shard)
        factors = mixture_factors(dict(counts), self.target, self.mode, self.max_factor)
        expected = {d: counts[d] * factors[d] for d in counts}
        total = sum(expected.values()) or 1
        self._summary = {"counts_before": dict(counts), "factors": {d: round(f, 3) for d, f in factors.items()},
                         "expected_share_after": {d: round(v / total, 4) for d, v in expected.items()}}
        return [factors] * len(packed)

    def summary(self) -> dict:
        return self._summary

    def apply(self, docs: Iterable[Document], decision: dict[str, float], ctx: Context) -> Iterator[Document]:
        st = ctx.stats(self.label)
        for doc in docs:
            dom = self.signature(doc)
            f = decision.get(dom, 1.0)
            copies = math.floor(f) + (1 if _uniform(self.seed, doc.id) < f - math.floor(f) else 0)
            if copies == 0:
                st.record(doc, "topup: downsampled", modified=False)
                ctx.reject(doc, self.label, f"topup: downsampled (domain {dom}, factor {f:.2f})")
                continue
            st.record(doc, None, modified=False)
            yield doc
            for k in range(1, copies):
                st.added += 1
                yield Document(f"{doc.id}#topup{k}", doc.text, {**doc.metadata, "topup_copy": k})
