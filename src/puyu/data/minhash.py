"""MinHash-LSH near-duplicate removal across all shards (datasketch).

InternLM2 report, section 3.1.1: MinHash deduplication on 5-gram shingles with 128 hash functions and
a Jaccard threshold of 0.7. Those are the defaults here.

Shingles are 5-grams of `segment.shingle_units`: lower-cased words in space-separated text, single
characters in CJK runs (character 5-grams; jieba-word 5-grams would turn each edit into up to five
broken word grams and put edited Chinese copies near the threshold), with Traditional characters
folded to Simplified (OpenCC t2s) so the two scripts of one text are near-duplicates. Exact dedup is
not folded: it stays byte-exact.

How it runs (a `GlobalStep`):
  map     for each surviving document, its 128-value MinHash signature (`datasketch.MinHash`, the
          affine32 permutation scheme) over 5-gram shingles of words / CJK characters; one (n, 128) uint32 array per shard.
  decide  in the driver, documents are visited in corpus order (shard, position). Each is queried in a
          `datasketch.MinHashLSH` index of the documents kept so far; candidates are verified with the
          128-permutation Jaccard estimate >= threshold. A verified match means drop ("near-duplicate
          of the earlier document"); otherwise the document is kept and inserted. Only kept documents
          enter the index, so a chain a~b~c with a, c dissimilar never drops c because of b.
  apply   drop by position.

LSH banding. The default 20 bands x 6 rows gives P(candidate) = 1 - (1 - J^6)^20 = 0.998 at J = 0.8,
0.92 at 0.7 and 0.27 at 0.5 (favouring recall); the verification step then removes candidates whose
estimated Jaccard is below the threshold (standard error sqrt(J(1-J)/128) = 0.044 at J = 0.5), which is
what keeps false positives under 1% for pairs at J <= 0.5. tests/data/test_data_minhash.py measures both.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

import numpy as np

from puyu.data.base import Context, GlobalStep, drop_by_index
from puyu.data.documents import Document
from puyu.data.segment import shingle_units

_MULT = np.uint64(0x100000001B3)  # FNV-64 prime: the polynomial base for combining word hashes


def _identity(x: int) -> int:
    return x


def shingle_words(text: str) -> list[str]:
    """Shingle units: lower-cased words with punctuation removed, one unit per CJK character
    (Traditional folded to Simplified): near-duplicates that differ only in case, punctuation,
    spacing or Chinese script then share all their shingles."""
    return shingle_units(text)


def shingles(text: str, n: int = 5) -> list[str]:
    """Unit n-gram shingles (as space-joined strings). A text shorter than n units is one shingle."""
    words = shingle_words(text)
    if len(words) < n:
        return [" ".join(words)] if words else []
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def jaccard(a: str, b: str, n: int = 5) -> float:
    """Exact Jaccard similarity of the two texts' shingle sets."""
    sa, sb = set(shingles(a, n)), set(shingles(b, n))
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


class MinHashDedup(GlobalStep):
    """Near-duplicate removal; see the module docstring for the algorithm and where the numbers come
    from. Options: `ngram` (5), `num_perm` (128), `threshold` (0.7), `bands` x `rows` (20 x 6, must fit
    in num_perm), `seed` for the permutations (the same on every worker, so signatures compare)."""

    name = "minhash"
    category = "dedup"

    def __init__(self, ngram: int = 5, num_perm: int = 128, threshold: float = 0.7,
                 bands: int = 20, rows: int = 6, seed: int = 1):
        if bands * rows > num_perm:
            raise ValueError(f"bands x rows = {bands * rows} exceeds num_perm = {num_perm}")
        self.ngram, self.num_perm, self.threshold = ngram, num_perm, threshold
        self.bands, self.rows, self.seed = bands, rows, seed
        self._template = None
        self._summary: dict = {}

    def __getstate__(self):
        return {**self.__dict__, "_template": None}

    def _minhash(self):
        if self._template is None:
            from datasketch import MinHash

            # shingles arrive already hashed to 32 bits (see shingle_hashes); the affine32 scheme
            # passes each value through murmur3's fmix32 finalizer before permuting
            self._template = MinHash(num_perm=self.num_perm, seed=self.seed, hashfunc=_identity)
        return self._template

    def shingle_hashes(self, text: str) -> list[int]:
        """32-bit hashes of the unit n-gram shingles of `text` (the same set as `shingles`): each
        unit is hashed once (crc32, stable across processes, unlike Python's hash), and n-grams are
        combined polynomially in numpy instead of joining and hashing n-word strings."""
        words = shingle_words(text)
        if not words:
            return []
        ids = np.array([zlib.crc32(w.encode("utf-8")) for w in words], dtype=np.uint64)
        n = min(self.ngram, len(ids))  # a text shorter than n words is one shingle
        width = len(ids) - n + 1
        h = ids[:width].copy()
        for k in range(1, n):
            h = h * _MULT + ids[k:k + width]  # uint64 arithmetic wraps
        return ((h >> np.uint64(32)) ^ h).astype(np.uint32).tolist()

    def signature_of(self, text: str) -> np.ndarray:
        """The MinHash signature (num_perm uint32 values) of a text; all-0xFFFFFFFF when empty."""
        m = self._minhash().copy()
        m.update_batch(self.shingle_hashes(text))
        return m.hashvalues

    def signature(self, doc: Document) -> tuple[str, np.ndarray]:
        return doc.id, self.signature_of(doc.text)

    def pack(self, sigs: list[tuple[str, np.ndarray]]):
        ids = [i for i, _ in sigs]
        arr = np.stack([s for _, s in sigs]) if sigs else np.zeros((0, self.num_perm), np.uint32)
        return ids, arr.astype(np.uint32, copy=False)

    def decide(self, packed: list) -> list[dict[int, str]]:
        from datasketch import LeanMinHash, MinHashLSH

        lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm, params=(self.bands, self.rows))
        kept: list[np.ndarray] = []
        kept_ids: list[str] = []
        empty = np.uint32(0xFFFFFFFF)
        decisions: list[dict[int, str]] = []
        n_docs = n_dup = 0
        for ids, arr in packed:
            drops: dict[int, str] = {}
            for i, (doc_id, hv) in enumerate(zip(ids, arr)):
                n_docs += 1
                if (hv == empty).all():  # no words: nothing to compare
                    continue
                m = LeanMinHash(seed=self.seed, hashvalues=hv, scheme="affine32")
                best, best_j = -1, 0.0
                for key in lsh.query(m):
                    est = float(np.mean(kept[key] == hv))
                    if est >= self.threshold and (est > best_j or (est == best_j and key < best)):
                        best, best_j = key, est
                if best >= 0:
                    drops[i] = f"minhash: near-duplicate (of {kept_ids[best]}, jaccard~{best_j:.2f})"
                    n_dup += 1
                else:
                    lsh.insert(len(kept), m)
                    kept.append(hv)
                    kept_ids.append(doc_id)
            decisions.append(drops)
        self._summary = {"documents": n_docs, "near_duplicates": n_dup}
        return decisions

    def summary(self) -> dict:
        return self._summary

    def apply(self, docs: Iterable[Document], decision: dict[int, str], ctx: Context) -> Iterator[Document]:
        return drop_by_index(self, docs, decision, ctx)
