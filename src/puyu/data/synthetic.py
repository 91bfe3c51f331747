"""A synthetic dirty corpus with known labels, and the seed/training sets the learned steps need.

Every document carries metadata["synthetic"] = {"label", "domain", "lang", "source"?, "jaccard"?};
"lang" is "en", "zh" or "mixed" and the report gives precision and recall per language too. `LABELS`
says, for each label, which steps ought to drop it (or modify it, for repairable defects); the run
report turns the per-label counts each step records into precision and recall. Labels:

  clean              a document in one of four domains (knowledge, math, code, other): keep
  related            a clean document's sibling at Jaccard 0.2-0.5 (shares phrases, not a copy): keep
  exact_dup          a copy of an earlier clean document                 -> exact_dedup
  near_dup           an edited copy at Jaccard 0.75-0.95 of an earlier one -> minhash
  mojibake           UTF-8 read as Latin-1: repairable                   -> normalise modifies, keep
  boilerplate_lines  cookie/javascript/policy notices mixed into a clean document -> c4 modifies, keep
  foreign            French, German or Spanish                            -> language
  short              one to three sentences                               -> gopher_quality
  repetitive         one line repeated 8-14 times                         -> gopher_repetition
  lorem              a lorem ipsum placeholder paragraph                  -> c4
  symbol_noise       runs of box-drawing and replacement characters       -> characters
  garbled            15% of bytes corrupted                               -> characters
                     (normalise may touch both on the way: neither required nor wrong)
  seo_spam           keyword lines without punctuation                    -> punctuation
  bad_domain         a clean document hosted on a blocklisted domain      -> domain_blocklist
  bad_words          a clean document with blocklisted words              -> word_blocklist
  toxic              harassment without any blocklisted word              -> safety_classifier
  advert             advertising copy                                     -> quality
  word_salad         a clean document's words shuffled                    -> quality

Chinese part (`zh_share` of the corpus, text from puyu.data.synthetic_zh; shares in ZH_LABELS): clean,
exact_dup, near_dup (Han characters replaced until the character 5-gram Jaccard is 0.75-0.95),
script_dup (a Traditional-script copy -> minhash), boilerplate_lines (Chinese cookie/policy notices),
short, repetitive, seo_spam, bad_words (Chinese blocklisted words, half written in Traditional), word_salad
(shuffled jieba words), and
  gbk_mojibake       GBK bytes read as Latin-1: repairable                 -> normalise modifies, keep
  gbk_broken         GBK bytes with 0xFF overwrites, read as Latin-1       -> normalise drops
Mixed part (`mixed_share`, label clean, lang "mixed"): Chinese prose with English terms (CJK share
0.9-1.0 by units) and English documents with one Chinese sentence (CJK share 0.06-0.33 < 0.5): both must be kept.

Derived documents (copies, near-copies, siblings) are placed after their source in corpus order, so
"keep the first" dedup should keep the source. Each shard file also gets one line of invalid UTF-8
and one line of broken JSON, which the reader must reject (counted in _manifest.json).
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass

from puyu.data.documents import Document, JsonlWriter
from puyu.data.minhash import jaccard, shingles
from puyu.data.synthetic_text import BOILERPLATE, DOMAINS, KNOWLEDGE, OTHER, UNSAFE_WORDS, TextGen
from puyu.data.synthetic_zh import ZhTextGen


@dataclass(frozen=True)
class LabelSpec:
    share: float  # fraction of the corpus
    drop: tuple[str, ...] = ()  # steps that should drop it
    modify: tuple[str, ...] = ()  # steps that should repair it (and keep it)
    may_modify: tuple[str, ...] = ()  # steps whose edits are fine but not required


LABELS: dict[str, LabelSpec] = {
    "clean": LabelSpec(0.51),
    "related": LabelSpec(0.03),
    "exact_dup": LabelSpec(0.05, drop=("exact_dedup",)),
    "near_dup": LabelSpec(0.05, drop=("minhash",)),
    "mojibake": LabelSpec(0.03, modify=("normalise",)),
    "boilerplate_lines": LabelSpec(0.03, modify=("c4",)),
    "foreign": LabelSpec(0.03, drop=("language",)),
    "short": LabelSpec(0.02, drop=("gopher_quality",)),
    "repetitive": LabelSpec(0.03, drop=("gopher_repetition",)),
    "lorem": LabelSpec(0.02, drop=("c4",)),
    # normalisation may legitimately touch text with broken characters before `characters` drops it
    "symbol_noise": LabelSpec(0.02, drop=("characters",), may_modify=("normalise",)),
    "garbled": LabelSpec(0.02, drop=("characters",), may_modify=("normalise",)),
    "seo_spam": LabelSpec(0.02, drop=("punctuation",)),
    "bad_domain": LabelSpec(0.02, drop=("domain_blocklist",)),
    "bad_words": LabelSpec(0.02, drop=("word_blocklist",)),
    "toxic": LabelSpec(0.03, drop=("safety_classifier",)),
    "advert": LabelSpec(0.03, drop=("quality",)),
    "word_salad": LabelSpec(0.03, drop=("quality",)),
    # Chinese only (share 0 in the English part; see ZH_LABELS)
    "script_dup": LabelSpec(0.0, drop=("minhash",)),
    "gbk_mojibake": LabelSpec(0.0, modify=("normalise",)),
    "gbk_broken": LabelSpec(0.0, drop=("normalise",)),
}
# shares within the Chinese part of the corpus
ZH_LABELS: dict[str, float] = {
    "clean": 0.53, "exact_dup": 0.05, "near_dup": 0.06, "script_dup": 0.04, "boilerplate_lines": 0.04,
    "short": 0.04, "repetitive": 0.04, "seo_spam": 0.04, "gbk_mojibake": 0.04, "gbk_broken": 0.03,
    "bad_words": 0.05, "word_salad": 0.04,
}
# Clean documents are knowledge-heavy; math and code are the "weak domains" that top-ups raise.
DOMAIN_MIX = {"knowledge": 0.45, "other": 0.35, "math": 0.12, "code": 0.08}
BLOCKED_DOMAINS = ("casino-jackpot.example", "hot-cams.example", "cheap-pills.example", "free-warez.example")


class Generator:
    """Deterministic corpus builder: the same (seed, split) gives the same documents."""

    def __init__(self, seed: int = 0, split: str = "all"):
        self.rng = random.Random(seed)
        self.text = TextGen(self.rng, split)
        self.zh = ZhTextGen(self.rng)
        self.seed = seed
        self._n = 0

    def _doc(self, text: str, label: str, domain: str, url: str | None = None, lang: str = "en",
             **extra) -> Document:
        self._n += 1
        site = url or f"https://www.{self.text.name().lower()}.org/{self.text.name().lower()}"
        meta = {"url": site, "synthetic": {"label": label, "domain": domain, "lang": lang, **extra}}
        return Document(f"syn{self.seed}-{self._n:06d}", text, meta)

    def domain(self) -> str:
        return self.rng.choices(list(DOMAIN_MIX), weights=list(DOMAIN_MIX.values()))[0]

    def clean(self, domain: str | None = None) -> Document:
        d = domain or self.domain()
        return self._doc(self.text.document(d), "clean", d)

    def clean_zh(self, domain: str | None = None) -> Document:
        d = domain or self.domain()
        return self._doc(self.zh.document(d), "clean", d, lang="zh")

    def mixed(self) -> Document:
        """A clean mixed document: Chinese with English terms, or English with one Chinese sentence."""
        if self.rng.random() < 0.5:
            return self._doc(self.zh.mixed(), "clean", self.rng.choice(["knowledge", "other"]), lang="mixed")
        base = self.clean(self.rng.choice(["knowledge", "other"]))
        paras = base.text.split("\n\n")
        paras.insert(self.rng.randint(1, len(paras)), self.zh.short())
        return self._doc("\n\n".join(paras), "clean", base.metadata["synthetic"]["domain"], lang="mixed")

    def dirty_zh(self, label: str) -> Document:
        z = self.zh
        if label == "short":
            return self._doc(z.short(), label, "other", lang="zh")
        if label == "seo_spam":
            return self._doc(z.seo_spam(), label, "other", lang="zh")
        base = self.clean_zh(self.rng.choice(["knowledge", "other", "math"]))
        d, text = base.metadata["synthetic"]["domain"], base.text
        make = {"repetitive": z.repetitive, "boilerplate_lines": z.boilerplate, "bad_words": z.bad_words,
                "word_salad": z.word_salad, "gbk_mojibake": z.gbk_mojibake, "gbk_broken": z.gbk_broken}
        if label not in make:
            raise ValueError(f"no Chinese generator for label {label!r}")
        text = make[label](text)
        if label == "bad_words" and self.rng.random() < 0.5:
            text = z.traditional(text)  # the blocklist must match either script
        return self._doc(text, label, d, lang="zh")

    def near_copy_zh(self, doc: Document, lo: float, hi: float) -> Document:
        """Han characters of `doc` replaced until the character 5-gram Jaccard is ~U(lo, hi)."""
        target = self.rng.uniform(lo, hi)
        text = doc.text
        han = [i for i, c in enumerate(text) if "\u4e00" <= c <= "\u9fff"]
        order = han[:]
        self.rng.shuffle(order)
        edited_full = self.zh.edit_chars(text, order)
        chars, full = list(text), list(edited_full)

        def edited(m: int) -> str:
            out = chars[:]
            for i in order[:m]:
                out[i] = full[i]
            return "".join(out)

        lo_m, hi_m = 0, len(order)
        while lo_m < hi_m:  # similarity falls as more characters are replaced
            mid = (lo_m + hi_m) // 2
            if jaccard(text, edited(mid)) <= target:
                hi_m = mid
            else:
                lo_m = mid + 1
        cands = [(abs(jaccard(text, t) - target), t) for t in {edited(lo_m), edited(max(lo_m - 1, 0))}]
        out = min(cands)[1]
        return self._doc(out, "near_dup", doc.metadata["synthetic"]["domain"], lang="zh", source=doc.id,
                         jaccard=round(jaccard(text, out), 3))

    def near_copy(self, doc: Document, lo: float, hi: float, label: str) -> Document:
        """An edited copy of `doc` at shingle Jaccard ~U(lo, hi) to it: near-duplicates swap a few words
        (precise control), siblings ("related") swap whole sentences for another document's."""
        domain = doc.metadata["synthetic"]["domain"]
        target = self.rng.uniform(lo, hi)
        if label == "near_dup":
            text, sim = make_near_duplicate(doc.text, target, self.rng, self.text, invented=False)
        else:
            for _ in range(8):  # a pool of sentences sharing nothing with `doc` can run short: retry
                pool = " ".join(self.text.document(domain) for _ in range(4))
                text, sim = make_sibling(doc.text, target, self.rng, pool)
                if sim <= hi + 0.05:
                    break
            else:  # still too similar (a short or code-heavy document): edit words instead
                text, sim = make_near_duplicate(doc.text, target, self.rng, self.text, invented=False)
        return self._doc(text, label, domain, source=doc.id, jaccard=round(sim, 3))

    def dirty(self, label: str) -> Document:
        t, r = self.text, self.rng
        if label == "foreign":
            return self._doc(t.foreign(r.choice(["fr", "de", "es"])), label, "other")
        if label == "toxic":
            return self._doc(t.toxic(), label, "other")
        if label == "advert":
            return self._doc(t.advert(), label, "other")
        if label == "seo_spam":
            return self._doc(t.seo_spam(), label, "other")
        if label == "short":
            return self._doc(" ".join(t.prose(r.choice([KNOWLEDGE, OTHER]), r.randint(1, 3))), label, "other")
        base = self.clean()
        d, text = base.metadata["synthetic"]["domain"], base.text
        if label == "word_salad":
            return self._doc(t.word_salad(text), label, d)
        if label == "repetitive":
            return self._doc(t.repetitive(text), label, d)
        if label == "lorem":
            paras = text.split("\n\n")
            paras.insert(r.randint(0, len(paras)), "Lorem ipsum dolor sit amet, consectetur adipiscing elit.")
            return self._doc("\n\n".join(paras), label, d)
        if label == "symbol_noise":
            return self._doc(t.symbol_noise(text), label, d)
        if label == "garbled":
            return self._doc(t.garble(text), label, d)
        if label == "mojibake":
            return self._doc(t.mojibake(text), label, d)
        if label == "boilerplate_lines":
            lines = text.split("\n")
            for line in r.sample(BOILERPLATE, 2):
                lines.insert(r.randint(0, len(lines)), line)
            return self._doc("\n".join(lines), label, d)
        if label == "bad_domain":
            host = r.choice(["", "www.", "m."]) + r.choice(BLOCKED_DOMAINS)
            return self._doc(text, label, d, url=f"https://{host}/{t.name().lower()}")
        if label == "bad_words":
            words = r.sample(UNSAFE_WORDS, 2)
            extra = f"Watch free {words[0]} clips and more {words[1]} content on our partner site."
            paras = text.split("\n\n")
            paras.insert(r.randint(0, len(paras)), extra)
            return self._doc("\n\n".join(paras), label, d)
        raise ValueError(f"no generator for label {label!r}")

    def corpus(self, n_docs: int, labels: dict[str, LabelSpec] | None = None, zh_share: float = 0.0,
               mixed_share: float = 0.0) -> list[Document]:
        """`n_docs` documents in corpus order: English with label shares from `labels`, plus a
        Chinese part (`zh_share`, ZH_LABELS) and clean mixed documents (`mixed_share`)."""
        labels = labels or LABELS
        n_zh, n_mixed = round(zh_share * n_docs), round(mixed_share * n_docs)
        n_en = n_docs - n_zh - n_mixed
        counts = {lab: round(spec.share * n_en) for lab, spec in labels.items()}
        counts["clean"] += n_en - sum(counts.values())
        zh_counts = {lab: round(share * n_zh) for lab, share in ZH_LABELS.items()}
        zh_counts["clean"] += n_zh - sum(zh_counts.values())
        clean = [self.clean() for _ in range(counts["clean"])]
        clean_zh = [self.clean_zh() for _ in range(zh_counts["clean"])]
        base = clean + [self.dirty(lab) for lab in labels if lab not in ("clean", *DERIVED)
                        for _ in range(counts[lab])]
        base += clean_zh + [self.dirty_zh(lab) for lab in ZH_LABELS if lab not in ("clean", *DERIVED, "script_dup")
                            for _ in range(zh_counts[lab])]
        base += [self.mixed() for _ in range(n_mixed)]
        self.rng.shuffle(base)
        keyed: list[tuple[float, Document]] = [(float(i), doc) for i, doc in enumerate(base)]
        pos = {doc.id: i for i, doc in enumerate(base)}
        for lab in DERIVED:
            for _ in range(counts.get(lab, 0)):
                src = self.rng.choice(clean)
                if lab == "exact_dup":
                    copy = self._doc(src.text, lab, src.metadata["synthetic"]["domain"], source=src.id)
                else:
                    lo, hi = (0.75, 0.95) if lab == "near_dup" else (0.2, 0.5)
                    copy = self.near_copy(src, lo, hi, lab)
                # anywhere after its source: "keep the first" must keep the source
                keyed.append((self.rng.uniform(pos[src.id] + 0.5, len(base)), copy))
        for lab in ("exact_dup", "near_dup", "script_dup"):
            for _ in range(zh_counts.get(lab, 0) if clean_zh else 0):
                src = self.rng.choice(clean_zh)
                d = src.metadata["synthetic"]["domain"]
                if lab == "exact_dup":
                    copy = self._doc(src.text, lab, d, lang="zh", source=src.id)
                elif lab == "script_dup":
                    copy = self._doc(self.zh.traditional(src.text), lab, d, lang="zh", source=src.id)
                else:
                    copy = self.near_copy_zh(src, 0.75, 0.95)
                keyed.append((self.rng.uniform(pos[src.id] + 0.5, len(base)), copy))
        keyed.sort(key=lambda kv: kv[0])
        return [doc for _, doc in keyed]


DERIVED = ("exact_dup", "near_dup", "related")


def _edit_to_jaccard(text: str, units: list[str], new_units: list[str], sep: str, target: float,
                     rng: random.Random, ngram: int) -> tuple[str, float]:
    """Swap units (words or sentences) for their replacements, in a fixed random order, as many as
    bring the shingle Jaccard to `text` closest to `target` (binary search: similarity falls as more
    units are swapped). Returns (edited text, its exact Jaccard to `text`)."""
    order = list(range(len(units)))
    rng.shuffle(order)

    def edited(m: int) -> str:
        chosen = set(order[:m])
        return sep.join(new_units[i] if i in chosen else units[i] for i in range(len(units)))

    lo, hi = 0, len(units)
    while lo < hi:
        mid = (lo + hi) // 2
        if jaccard(text, edited(mid), ngram) <= target:
            hi = mid
        else:
            lo = mid + 1
    # lo is the first count at or below target; the count before it may land closer
    cands = [(abs(jaccard(text, t, ngram) - target), t) for t in {edited(lo), edited(max(lo - 1, 0))}]
    out = min(cands)[1]
    return out, jaccard(text, out, ngram)


def make_near_duplicate(text: str, target: float, rng: random.Random, gen: TextGen, ngram: int = 5,
                        invented: bool = True) -> tuple[str, float]:
    """Word-level edit of `text` to Jaccard ~`target`: words are replaced by invented words (or
    ordinary ones with `invented=False`)."""
    units = text.split(" ")
    new_units = gen.replace_words(text, list(range(len(units))), invented).split(" ")
    return _edit_to_jaccard(text, units, new_units, " ", target, rng, ngram)


_SENTENCE_GAP = re.compile(r"(?<=[.!?]) ")


def make_sibling(text: str, target: float, rng: random.Random, replacement_text: str,
                 ngram: int = 5) -> tuple[str, float]:
    """Sentence-level edit: sentences of `text` are swapped for sentences of `replacement_text` (another
    document of the same domain) until the Jaccard to `text` is <= `target`. Reads naturally: a
    related page that shares some sentences, not a copy."""
    units = _SENTENCE_GAP.split(text)
    own = set(shingles(text, ngram))
    # only sentences sharing no n-gram with `text` or each other: the sibling then repeats nothing
    # internally (which the Gopher repetition filter would rightly flag); units beyond the pool stay
    pool = []
    for u in dict.fromkeys(_SENTENCE_GAP.split(replacement_text)):
        sh = set(shingles(u, ngram))
        if not own & sh:
            pool.append(u)
            own |= sh
    rng.shuffle(pool)
    new_units = [pool[i] if i < len(pool) else units[i] for i in range(len(units))]
    return _edit_to_jaccard(text, units, new_units, " ", target, rng, ngram)


# ---------------------------------------------------------------- files


def write_corpus(out_dir: str, n_docs: int = 2000, shards: int = 8, seed: int = 0,
                 broken_lines: bool = True, zh_share: float = 0.0, mixed_share: float = 0.0) -> dict:
    """Write the corpus as `shards` files out_dir/shard_XXXXX.jsonl.zst plus _manifest.json (label
    counts, planted reader errors). Contiguous chunks, so corpus order = (shard, line). Returns the
    manifest."""
    docs = Generator(seed).corpus(n_docs, zh_share=zh_share, mixed_share=mixed_share)
    os.makedirs(out_dir, exist_ok=True)
    labels: dict[str, int] = {}
    for d in docs:
        lab = d.metadata["synthetic"]["label"]
        labels[lab] = labels.get(lab, 0) + 1
    reader_errors = 0
    for k in range(shards):
        w = JsonlWriter(os.path.join(out_dir, f"shard_{k:05d}.jsonl.zst"))
        chunk = docs[k * len(docs) // shards:(k + 1) * len(docs) // shards]
        for i, d in enumerate(chunk):
            w.write(d.to_record())
            if broken_lines and i == len(chunk) // 2:
                # UTF-8 cut inside a character: no encoding decodes it (Latin-1 or GBK lines are decoded)
                w.write_raw(b'{"id": "bad-utf8", "text": "caf\xc3\xa9 \xe4\xb8"}')
                w.write_raw(b'{"id": "truncated", "text": "the line ends here')
                reader_errors += 2
        w.close()
    langs: dict[str, int] = {}
    for d in docs:
        lang = d.metadata["synthetic"]["lang"]
        langs[lang] = langs.get(lang, 0) + 1
    manifest = {"documents": len(docs), "shards": shards, "seed": seed, "labels": labels, "languages": langs,
                "reader_errors": reader_errors}
    with open(os.path.join(out_dir, "_manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


# ---------------------------------------------------------------- training and seed sets


def training_set(kind: str, n: int = 600, seed: int = 1000, zh: int | None = None) -> tuple[list[str], list[str]]:
    """Labelled texts for the learned steps, from generators separate from the corpus (other seeds,
    half the toxic/advert templates):

      quality  "high" (clean, the four domains in equal shares) vs "low" (adverts, word salad, SEO spam)
      safety   "unsafe" (toxic comments, adult spam) vs "safe" (clean documents, some adverts)
      domain   knowledge / math / code / other (clean documents)
      seed     clean documents, the four domains in equal shares (label "high")

    Seed sets are balanced across domains, as curated seed corpora are: a seed drawn from the corpus
    mixture would under-represent the weak domains and score them as low quality.

    `zh` (default n // 3) Chinese examples follow the English ones, written by puyu.data.synthetic_zh
    (no Chinese corpus can be downloaded here): clean Chinese documents of the four domains ("high",
    "safe", the domain labels), Chinese SEO spam and shuffled jieba words ("low"), and for `safety` a
    quarter of Chinese harassment ("unsafe", synthetic_zh.ZH_TOXIC; written here, so weak evidence of
    recall on real Chinese toxicity). Adult and gambling Chinese rests on the Chinese word blocklist.
    """
    g = Generator(seed, split="train")
    t = g.text
    texts: list[str] = []
    labels: list[str] = []
    for i in range(n):
        if kind == "seed":
            texts.append(g.clean(DOMAINS[i % len(DOMAINS)]).text)
            labels.append("high")
        elif kind == "domain":
            d = DOMAINS[i % len(DOMAINS)]
            texts.append(t.document(d))
            labels.append(d)
        elif kind == "quality":
            if i % 2 == 0:
                texts.append(g.clean(DOMAINS[(i // 2) % len(DOMAINS)]).text)
                labels.append("high")
            else:
                j = (i // 2) % 3
                texts.append(t.advert() if j == 0 else t.seo_spam() if j == 1 else t.word_salad(g.clean().text))
                labels.append("low")
        elif kind == "safety":
            if i % 2 == 0:
                texts.append(t.toxic() if i % 4 == 0 else t.adult_spam())
                labels.append("unsafe")
            else:
                texts.append(t.advert() if i % 8 == 3 else g.clean(DOMAINS[(i // 2) % len(DOMAINS)]).text)
                labels.append("safe")
        else:
            raise ValueError(f"unknown training set {kind!r}; expected quality, safety, domain or seed")
    z = g.zh
    for i in range(n // 3 if zh is None else zh):
        j = i if kind in ("seed", "domain", "safety") else i // 2  # quality alternates high and low
        d = DOMAINS[j % len(DOMAINS)]
        if kind == "safety" and i % 4 == 0:  # Chinese harassment (ZH_TOXIC): a quarter of the Chinese part
            texts.append(z.toxic())
            labels.append("unsafe")
        elif kind in ("seed", "domain", "safety") or i % 2 == 0:
            # every fifth high-quality example is mixed Chinese-English prose (not for the domain set,
            # whose labels it would blur)
            texts.append(z.mixed() if kind != "domain" and j % 5 == 4 else z.document(d))
            labels.append({"seed": "high", "domain": d, "safety": "safe", "quality": "high"}[kind])
        else:
            texts.append(z.seo_spam() if (i // 2) % 2 == 0 else z.word_salad(z.document(d)))
            labels.append("low")
    return texts, labels
