"""Exact deduplication across all shards.

The cheapest dedup, run before MinHash so the fuzzy index only sees distinct texts (the order used by
RefinedWeb, Penedo et al. 2023, and by the InternLM2 report's "deduplication" stage, which removes exact
copies of documents as well as near-duplicates). The first document in corpus order (shard, position)
is kept; later copies are dropped with the id of the one kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import numpy as np

from puyu.data.base import Context, GlobalStep, drop_by_index
from puyu.data.documents import Document


class ExactDedup(GlobalStep):
    """Drop documents whose text (after normalisation) equals an earlier document's text.

    The key is a 64-bit BLAKE2b digest of the text: collisions are negligible below ~10^9 documents
    (birthday bound 2^32). `lowercase` and `collapse_whitespace` widen what counts as "exact"."""

    name = "exact_dedup"
    category = "dedup"

    def __init__(self, lowercase: bool = False, collapse_whitespace: bool = True):
        self.lowercase = lowercase
        self.collapse_whitespace = collapse_whitespace
        self._summary: dict = {}

    def key(self, text: str) -> int:
        if self.lowercase:
            text = text.lower()
        if self.collapse_whitespace:
            text = " ".join(text.split())
        return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")

    def signature(self, doc: Document) -> tuple[str, int]:
        return doc.id, self.key(doc.text)

    def pack(self, sigs: list[tuple[str, int]]):
        return [i for i, _ in sigs], np.array([k for _, k in sigs], dtype=np.uint64)

    def decide(self, packed: list) -> list[dict[int, str]]:
        first: dict[int, str] = {}
        decisions = []
        n = dups = 0
        for ids, keys in packed:
            drops: dict[int, str] = {}
            for i, (doc_id, k) in enumerate(zip(ids, keys.tolist())):
                n += 1
                if k in first:
                    drops[i] = f"exact_dedup: duplicate (of {first[k]})"
                    dups += 1
                else:
                    first[k] = doc_id
            decisions.append(drops)
        self._summary = {"documents": n, "exact_duplicates": dups}
        return decisions

    def summary(self) -> dict:
        return self._summary

    def apply(self, docs: Iterable[Document], decision: dict[int, str], ctx: Context) -> Iterator[Document]:
        return drop_by_index(self, docs, decision, ctx)
