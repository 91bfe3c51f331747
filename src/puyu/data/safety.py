"""Safety filtering: domain blocklist, word blocklist, and a trainable unsafe-content classifier.

InternLM2 report, section 3.1.1 ("safety filtering"): a domain blocklist (about 13M unsafe domains) and
a word blocklist (36,289 words), then pornography and toxicity classifiers. The lists here are small
files the recipe names; the classifier is trained on labelled text (by default the synthetic set: toxic
and sexual-spam documents vs clean documents and adverts).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from puyu.data.base import Step
from puyu.data.classifiers import TextClassifier, training_data
from puyu.data.documents import Document
from puyu.data.segment import segmented
from puyu.errors import ConfigError


def load_list(items: list[str] | None, file: str | list[str] | None, what: str) -> list[str]:
    """Entries from `items` and/or one or more files (one per line; blank lines and '#' comments
    skipped)."""
    out = [str(x).strip().lower() for x in (items or [])]
    for path in ([file] if isinstance(file, str) else file or []):
        try:
            with open(path, encoding="utf-8") as f:
                out += [ln.strip().lower() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        except OSError as e:
            raise ConfigError(f"{what}: cannot read {path}: {e.strerror}") from e
    out = [x for x in out if x]
    if not out:
        raise ConfigError(f"{what} needs a non-empty `{what.split('_')[0]}s` list or `file`")
    return out


def url_host(url: str) -> str:
    try:
        return (urlsplit(url if "//" in url else "//" + url).hostname or "").lower()
    except ValueError:
        return ""


class DomainBlocklist(Step):
    """Drop documents whose metadata URL is on a blocked domain or any subdomain of one
    (m.example.com matches example.com). Documents without a URL pass."""

    name = "domain_blocklist"
    category = "safety"

    def __init__(self, domains: list[str] | None = None, file: str | None = None, url_key: str = "url"):
        self.domains = frozenset(d.lstrip(".") for d in load_list(domains, file, "domain_blocklist"))
        self.url_key = url_key

    def blocked(self, host: str) -> str | None:
        parts = host.split(".")
        for i in range(len(parts) - 1):
            cand = ".".join(parts[i:])
            if cand in self.domains:
                return cand
        return None

    def process(self, doc: Document) -> str | None:
        url = doc.metadata.get(self.url_key)
        if not isinstance(url, str):
            return None
        hit = self.blocked(url_host(url))
        return f"domain_blocklist: blocked domain ({hit})" if hit else None


class WordBlocklist(Step):
    """Drop documents containing more than `max_hits` occurrences of blocklisted words. `max_hits` 0,
    i.e. any hit drops, is C4's rule (Raffel et al. 2020, section 2.2, with the "List of Dirty, Naughty,
    Obscene or Otherwise Bad Words").

    Words without CJK characters match as whole words, case-insensitive. Chinese entries match on jieba
    word boundaries: an occurrence counts when it covers whole words (网络赌博) or lies inside one word
    (色情 in 色情片), not when it straddles a word edge (色情 in 角色/情感 or 出色/情节, 援交 in
    救援/交通, 百家乐 in 百家/乐园). The runs holding a candidate are segmented by a jieba tokenizer of
    the step's own that has the list's terms as dictionary words (jieba's `suggest_freq(term, tune=True)`:
    just frequent enough to be kept whole), because the shared one (segment.py) splits some terms in
    context (在代/开发票, 看成/人/影片) while with the terms added it still cuts 角色/情感 and 救援/交通
    the ordinary way. That tokenizer is built on the first candidate (~1 s); clean documents cost one
    regex scan. Matching is on the text and the list folded to Simplified script (OpenCC t2s), so one
    list catches both scripts; each entry is also expanded to its Taiwan phrasing (OpenCC s2twp, folded
    back: 网络赌博 -> 网路赌博, 成人视频 -> 成人影片). Not caught: regional wording s2twp does not
    know (Hong Kong and Cantonese usage), slang, homophones, and terms split by spaces or symbols, which
    real blocklists list as entries of their own. `file` may name several lists (e.g. the English and
    the Chinese one)."""

    name = "word_blocklist"
    category = "safety"

    def __init__(self, words: list[str] | None = None, file: str | list[str] | None = None, max_hits: int = 0):
        from puyu.data.segment import cjk_count, fold_script, taiwan_phrasing

        entries = set(load_list(words, file, "word_blocklist"))
        self.words = sorted(entries, key=len, reverse=True)
        latin = [w for w in self.words if not cjk_count(w)]
        cjk = {fold_script(w) for w in self.words if cjk_count(w)}
        cjk |= {fold_script(taiwan_phrasing(w)) for w in cjk}
        self.cjk_terms = frozenset(cjk)
        self._cjk_lengths = sorted({len(w) for w in cjk}, reverse=True)
        self.max_hits = max_hits
        self._re = (re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, latin)) + r")(?!\w)", re.IGNORECASE)
                    if latin else None)
        # candidate positions: every place one of the terms starts (a lookahead, so overlaps are seen)
        self._re_cjk = (re.compile("(?=(?:" + "|".join(map(re.escape, sorted(cjk, key=len, reverse=True))) + "))")
                        if cjk else None)
        self._tk = None

    def __getstate__(self):  # the tokenizer is rebuilt lazily in each worker
        return {**self.__dict__, "_tk": None}

    @property
    def tokenizer(self):
        """A jieba tokenizer that knows the list's Chinese terms (see the class docstring)."""
        if self._tk is None:
            from puyu.data.segment import _jieba

            tk = _jieba().Tokenizer()
            tk.initialize()
            for w in sorted(self.cjk_terms):
                tk.add_word(w, tk.suggest_freq(w, tune=True) * 5)
            self._tk = tk
        return self._tk

    def cjk_hits(self, text: str) -> list[str]:
        """Chinese terms in `text` (folded to Simplified) that sit on jieba word boundaries."""
        from bisect import bisect_right

        from puyu.data.segment import CJK_RUN, fold_script

        folded = fold_script(text)
        starts = [m.start() for m in self._re_cjk.finditer(folded)]
        if not starts:
            return []
        runs = [(m.start(), m.end()) for m in CJK_RUN.finditer(folded)]
        run_starts = [r[0] for r in runs]
        spans_of: dict[int, list[tuple[int, int]]] = {}
        hits: list[str] = []
        taken = 0  # occurrences do not overlap one another
        for pos in starts:
            if pos < taken:
                continue
            k = bisect_right(run_starts, pos) - 1
            r0, r1 = runs[k]
            if k not in spans_of:
                spans_of[k] = []
                for w in self.tokenizer.lcut(folded[r0:r1], HMM=True):
                    spans_of[k].append((r0, r0 + len(w)))
                    r0 += len(w)
                r0 = runs[k][0]
            spans = spans_of[k]
            edges = {a for a, _ in spans} | {r1}
            for n in self._cjk_lengths:
                end = pos + n
                if end > r1 or folded[pos:end] not in self.cjk_terms:
                    continue
                whole = pos in edges and end in edges
                inside = any(a <= pos and end <= b for a, b in spans)
                if whole or inside:
                    hits.append(folded[pos:end])
                    taken = end
                    break
        return hits

    def process(self, doc: Document) -> str | None:
        from puyu.data.segment import cjk_count

        hits = self._re.findall(doc.text) if self._re is not None else []
        if self._re_cjk is not None and cjk_count(doc.text):
            hits += self.cjk_hits(doc.text)
        if len(hits) > self.max_hits:
            shown = ", ".join(sorted({h.lower() for h in hits})[:5])
            return f"word_blocklist: blocked words ({shown})"
        return None


class SafetyClassifier(Step):
    """Drop documents the classifier scores unsafe with probability >= `threshold` (0.5: the
    classifier's own decision boundary; the InternLM2 report does not publish its thresholds). Training
    data: `train` (see puyu.data.classifiers); its labels must include "unsafe". Writes
    metadata["unsafe_prob"]."""

    name = "safety_classifier"
    category = "safety"
    observe = ("unsafe_prob",)
    batch_size = 256

    def __init__(self, threshold: float = 0.5, train: dict | None = None):
        self.threshold = threshold
        self.train = train
        self.clf: TextClassifier | None = None

    def setup(self) -> None:
        texts, labels = training_data(self.train, "safety", default_seed=2000)
        # unigram counts, not bigrams with sublinear tf: measured on sentence frames held out of
        # training, bigram features memorise the frames (recall ~0.2) while word counts carry over to
        # new phrasings of the same hostile vocabulary (recall ~1.0); see tests/data/test_data_safety.py
        self.clf = TextClassifier(ngram_range=(1, 1), sublinear_tf=False).fit(texts, labels)

    def process_batch(self, docs: list[Document]) -> list[str | None]:
        probs = self.clf.proba([segmented(d) for d in docs], "unsafe")
        out: list[str | None] = []
        for doc, p in zip(docs, probs):
            doc.metadata["unsafe_prob"] = round(float(p), 4)
            out.append(f"safety_classifier: unsafe {p:.2f} >= {self.threshold}" if p >= self.threshold else None)
        return out
