"""A small word n-gram language model, for perplexity as a language-quality (fluency) signal.

CCNet (Wenzek et al. 2020) ranks web text by the perplexity of a 5-gram KenLM model trained on
Wikipedia; the InternLM2 launch article scores "language quality" among its value dimensions. Here the
model is trained on the high-quality seed set itself, with interpolated absolute discounting (Ney, Essen
& Kneser 1994, D = 0.75): each order's counts are discounted by D and the freed mass goes to the next
lower order, down to an add-one unigram over the vocabulary plus an unknown word. Numbers are mapped to
one token, so "41 plus 10" and "87 plus 3" look alike to the model. Chinese is modelled over jieba
words (puyu.data.segment): a word trigram model over segmented text, as for English.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

from puyu.data.segment import Segmented, as_segmented

_TOKEN = re.compile(r"[^\W\d_]+|\d+(?:[.,]\d+)*|[^\w\s]")
BOS, EOS, NUM = "<s>", "</s>", "<num>"


def tokenize(text: str | Segmented) -> list[str]:
    """Lower-cased words (jieba words in Chinese runs), numbers (as <num>) and single punctuation
    marks. Takes a text or its cached segmentation."""
    seg = as_segmented(text)
    if seg.text.isascii():
        return [NUM if t[0].isdigit() else t for t in _TOKEN.findall(seg.text.lower())]
    return [NUM if t[0].isdigit() else t for tok in seg.tokens for t in _TOKEN.findall(tok.lower())]


class NGramLM:
    """Word n-gram LM. `fit(texts)` then `perplexity(text)`; picklable (plain dicts)."""

    def __init__(self, order: int = 3, discount: float = 0.75):
        if order < 1:
            raise ValueError("order must be >= 1")
        if not 0 < discount < 1:
            raise ValueError("discount must be in (0, 1)")
        self.order = order
        self.discount = discount
        # tables[k][context of k words] = (count of the context, distinct next words, {next: count})
        self.tables: list[dict[tuple[str, ...], tuple[int, int, dict[str, int]]]] = []
        self.unigrams: dict[str, int] = {}
        self.n_tokens = 0

    def fit(self, texts: Iterable[str | Segmented]) -> NGramLM:
        raw: list[dict[tuple[str, ...], Counter]] = [{} for _ in range(self.order)]
        for text in texts:
            toks = [BOS] * (self.order - 1) + tokenize(text) + [EOS]
            for i in range(self.order - 1, len(toks)):
                w = toks[i]
                for k in range(self.order):
                    ctx = tuple(toks[i - k:i])
                    raw[k].setdefault(ctx, Counter())[w] += 1
        self.unigrams = dict(raw[0].get((), Counter()))
        self.n_tokens = sum(self.unigrams.values())
        self.tables = [{ctx: (sum(c.values()), len(c), dict(c)) for ctx, c in level.items()} for level in raw]
        return self

    def prob(self, word: str, context: tuple[str, ...]) -> float:
        """P(word | the last order-1 tokens of `context`); any unseen word shares the unknown mass."""
        vocab = len(self.unigrams) + 1  # + unknown word
        d = self.discount
        p = (self.unigrams.get(word, 0) + 1) / (self.n_tokens + vocab)
        for k in range(1, self.order):
            ctx = context[len(context) - k:] if k <= len(context) else None
            entry = self.tables[k].get(ctx) if ctx is not None else None
            if entry is None:
                break  # a longer context containing an unseen shorter one is unseen too
            total, distinct, nexts = entry
            p = max(nexts.get(word, 0) - d, 0.0) / total + d * distinct / total * p
        return p

    def logprobs(self, text: str | Segmented) -> list[float]:
        """Natural-log probability of each token of `text` (and of the end marker)."""
        if not self.tables:
            raise RuntimeError("fit() the model first")
        toks = [BOS] * (self.order - 1) + tokenize(text) + [EOS]
        n = self.order - 1
        return [math.log(self.prob(toks[i], tuple(toks[i - n:i]))) for i in range(n, len(toks))]

    def perplexity(self, text: str | Segmented) -> float:
        lp = self.logprobs(text)
        return math.exp(-sum(lp) / len(lp))
