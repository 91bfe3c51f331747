"""Rule-based filters: Gopher quality and repetition, C4 line rules, abnormal characters, punctuation.

InternLM2 report, section 3.1.1 ("rule-based stage"): heuristics on separators and line breaks, the
frequency of abnormal characters and the distribution of punctuation, on top of the usual web-text
rules. The report gives no thresholds; each class below says where its numbers come from.

Words come from `puyu.data.segment` (jieba words for Chinese runs, whitespace words elsewhere),
computed once per document and shared by every step. Thresholds are per language
(`puyu.data.thresholds`): a document's profile (zh / en / code / default fallback) picks the table;
the constructor options set the English numbers and `zh` overrides the Chinese ones.

Drop reasons read `step: what value <op> threshold`; the part before the number is what the stats
count, so each rule is one row of the report.
"""

from __future__ import annotations

import re

import numpy as np

from puyu.data import thresholds as th
from puyu.data.base import Step
from puyu.data.documents import Document
from puyu.data.segment import CJK_CLASS, PUNCT, segmented

STOP_WORDS = th.GOPHER_QUALITY["en"]["stop_words"]  # Gopher, Rae et al. 2021, App. A
_HAS_ALPHA = re.compile(r"[^\W\d_]")
_HAS_ALNUM = re.compile(r"[^\W_]")
_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")


def _profiles(table: dict, en: dict, zh: dict | None) -> dict:
    """The per-profile option dicts of a step: `en` from the constructor, `zh` the table's Chinese
    numbers updated with the step's `zh` option, `default` the table's fallback with the English
    numbers the constructor set."""
    unknown = set(zh or {}) - set(table["zh"])
    if unknown:
        raise ValueError(f"unknown zh option(s): {', '.join(sorted(map(str, unknown)))}; "
                         f"known: {', '.join(table['zh'])}")
    default = {**en, **{k: v for k, v in table["default"].items() if table["default"][k] != table["en"][k]}}
    return {"en": en, "zh": {**table["zh"], **(zh or {})}, "default": default}


class GopherQuality(Step):
    """The Gopher quality filter (Rae et al. 2021, "Scaling Language Models", Appendix A.1.1): keep a
    document when it has 50 to 100,000 words, a mean word length of 3 to 10 characters, a
    symbol-to-word ratio below 0.1 for '#' and for ellipses, at most 90% of lines starting with a bullet,
    at most 30% of lines ending with an ellipsis, at least 80% of words containing a letter, and at
    least 2 of the stop words the, be, to, of, and, that, have, with.

    Chinese documents (CJK share >= 0.5) use FineWeb-2's cmn_Hani numbers (thresholds.GOPHER_QUALITY:
    mean jieba-word length 1-5, 73.5% words with a letter, FineWeb-2's Chinese stop words), the
    letter share taken over tokens with a letter or digit (not punctuation marks: see process); other
    identified languages drop the stop-word rule; code documents pass. `zh` overrides Chinese numbers."""

    name = "gopher_quality"
    category = "rules"

    def __init__(self, min_words: int = 50, max_words: int = 100_000, min_mean_word_length: float = 3,
                 max_mean_word_length: float = 10, max_symbol_word_ratio: float = 0.1,
                 max_bullet_lines: float = 0.9, max_ellipsis_lines: float = 0.3,
                 min_alpha_words: float = 0.8, min_stop_words: int = 2,
                 stop_words: list[str] | tuple[str, ...] = STOP_WORDS, zh: dict | None = None):
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines, self.max_ellipsis_lines = max_bullet_lines, max_ellipsis_lines
        en = {"min_words": min_words, "max_words": max_words, "min_mean_word_length": min_mean_word_length,
              "max_mean_word_length": max_mean_word_length, "min_alpha_words": min_alpha_words,
              "min_stop_words": min_stop_words, "stop_words": tuple(stop_words)}
        self.profiles = _profiles(th.GOPHER_QUALITY, en, zh)
        for p in self.profiles.values():
            p["stop_words"] = frozenset(p["stop_words"])

    def process(self, doc: Document) -> str | None:
        prof = th.profile(doc)
        if prof == "code":
            return None
        p = self.profiles[prof]
        text = doc.text
        seg = segmented(doc)
        real = seg.words  # words made only of punctuation ("-", "...", "，") do not count as words
        n = len(real)
        if n < p["min_words"]:
            return f"gopher_quality: too few words {n} < {p['min_words']}"
        if n > p["max_words"]:
            return f"gopher_quality: too many words {n} > {p['max_words']}"
        mean_len = sum(map(len, real)) / n
        if not p["min_mean_word_length"] <= mean_len <= p["max_mean_word_length"]:
            return (f"gopher_quality: mean word length {mean_len:.1f} outside "
                    f"[{p['min_mean_word_length']}, {p['max_mean_word_length']}]")
        n_all = max(seg.n_tokens, 1)
        if text.count("#") / n_all > self.max_symbol_word_ratio:
            return f"gopher_quality: hash-to-word ratio {text.count('#') / n_all:.2f} > {self.max_symbol_word_ratio}"
        ell = (text.count("...") + text.count("\u2026")) / n_all
        if ell > self.max_symbol_word_ratio:
            return f"gopher_quality: ellipsis-to-word ratio {ell:.2f} > {self.max_symbol_word_ratio}"
        lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
        bullets = sum(ln.startswith(("\u2022", "-", "*", "\u00b7")) for ln in lines) / len(lines)
        if bullets > self.max_bullet_lines:
            return f"gopher_quality: bullet lines {bullets:.2f} > {self.max_bullet_lines}"
        ell_lines = sum(ln.endswith(("...", "\u2026")) for ln in lines) / len(lines)
        if ell_lines > self.max_ellipsis_lines:
            return f"gopher_quality: ellipsis lines {ell_lines:.2f} > {self.max_ellipsis_lines}"
        # Chinese: over tokens with a letter or digit. spaCy/jieba make every punctuation mark and
        # operator a token, so with FineWeb-2's denominator (all tokens) a worked example such as
        # "46×11=506平方米" is five non-alphabetic words and clean Chinese math falls to 0.56-0.61 (the
        # synthetic corpus), far under 0.735; without punctuation-only tokens it is 0.76-0.80 and prose
        # 0.94-0.99, while number and symbol lists still fail
        denom = sum(1 for t in seg.tokens if _HAS_ALNUM.search(t)) if prof == "zh" else n_all
        alpha = sum(1 for w in real if _HAS_ALPHA.search(w)) / max(denom, 1)
        if alpha < p["min_alpha_words"]:
            return f"gopher_quality: alphabetic words {alpha:.2f} < {p['min_alpha_words']}"
        if p["min_stop_words"]:
            stops = len(p["stop_words"].intersection(map(str.lower, real)))
            if stops < p["min_stop_words"]:
                return f"gopher_quality: stop words {stops} < {p['min_stop_words']}"
        return None


def _duplicate_share(parts: list[str]) -> tuple[float, int]:
    """(fraction of parts that repeat an earlier part, characters in those repeats)."""
    seen: set[str] = set()
    dup = dup_chars = 0
    for p in parts:
        if p in seen:
            dup += 1
            dup_chars += len(p)
        else:
            seen.add(p)
    return dup / max(len(parts), 1), dup_chars


class GopherRepetition(Step):
    """The Gopher repetition filter (Rae et al. 2021, Table A1). Drop when

    - duplicate lines are > 30% of lines or hold > 20% of characters; same for paragraphs;
    - the most frequent 2-, 3-, 4-gram covers > 20%, 18%, 16% of the characters;
    - duplicated 5..10-grams cover > 15, 14, 13, 12, 11, 10% of the characters.

    "Characters" here are the characters of the words (whitespace excluded) for the n-gram rules, and of
    the text for the line/paragraph rules. A duplicated n-gram is one occurring more than once; every
    occurrence counts and overlapping occurrences are counted once, as the paper specifies. n-grams are
    compared by 64-bit rolling hashes of the words, computed with numpy. Words are the segmentation's
    tokens (whitespace tokens; jieba words in Chinese runs). Chinese documents use FineWeb-2's cmn_Hani
    numbers (thresholds.GOPHER_REPETITION); code documents pass; `zh` overrides Chinese numbers."""

    name = "gopher_repetition"
    category = "rules"

    def __init__(self, max_dup_line_frac: float = 0.30, max_dup_para_frac: float = 0.30,
                 max_dup_line_char_frac: float = 0.20, max_dup_para_char_frac: float = 0.20,
                 top_ngram_char_frac: dict | None = None, dup_ngram_char_frac: dict | None = None,
                 zh: dict | None = None):
        top = top_ngram_char_frac or th.GOPHER_REPETITION["en"]["top"]
        dup = dup_ngram_char_frac or th.GOPHER_REPETITION["en"]["dup"]
        en = {"max_dup_line_frac": max_dup_line_frac, "max_dup_para_frac": max_dup_para_frac,
              "max_dup_line_char_frac": max_dup_line_char_frac, "max_dup_para_char_frac": max_dup_para_char_frac,
              "top": top, "dup": dup}
        self.profiles = _profiles(th.GOPHER_REPETITION, en, zh)
        for p in self.profiles.values():
            p["top"] = {int(k): float(v) for k, v in p["top"].items()}
            p["dup"] = {int(k): float(v) for k, v in p["dup"].items()}

    def process(self, doc: Document) -> str | None:
        prof = th.profile(doc)
        if prof == "code":
            return None
        p = self.profiles[prof]
        text = doc.text
        n_chars = max(len(text), 1)
        paras = _PARAGRAPHS.split(text.strip())
        frac, chars = _duplicate_share(paras)
        if frac > p["max_dup_para_frac"]:
            return f"gopher_repetition: duplicate paragraphs {frac:.2f} > {p['max_dup_para_frac']}"
        if chars / n_chars > p["max_dup_para_char_frac"]:
            return f"gopher_repetition: duplicate paragraph chars {chars / n_chars:.2f} > {p['max_dup_para_char_frac']}"
        lines = _LINES.split(text.strip())
        frac, chars = _duplicate_share(lines)
        if frac > p["max_dup_line_frac"]:
            return f"gopher_repetition: duplicate lines {frac:.2f} > {p['max_dup_line_frac']}"
        if chars / n_chars > p["max_dup_line_char_frac"]:
            return f"gopher_repetition: duplicate line chars {chars / n_chars:.2f} > {p['max_dup_line_char_frac']}"
        return self._ngram_rules(segmented(doc).tokens, p["top"], p["dup"])

    def _ngram_rules(self, words: list[str], top_frac: dict, dup_frac: dict) -> str | None:
        w = len(words)
        if w < 2:
            return None
        ids = np.array(list(map(hash, words)), dtype=np.int64).view(np.uint64)
        lens = np.array(list(map(len, words)), dtype=np.int64)
        total = float(lens.sum())
        cum = np.concatenate(([0], np.cumsum(lens)))
        h = ids.copy()
        prime = np.uint64(1_099_511_628_211)  # FNV-64 prime; any large odd multiplier will do
        for n in range(2, max([*top_frac, *dup_frac]) + 1):
            if n > w:
                break
            h = h[:-1] * prime + ids[n - 1:]  # hash of words[i:i+n]; uint64 arithmetic wraps
            order = np.argsort(h, kind="stable")
            hs = h[order]
            same = hs[1:] == hs[:-1]  # neighbours in sorted order with the same n-gram
            if not same.any():
                return None  # no n-gram repeats, so no longer one can: every remaining rule passes
            if n in top_frac:
                # run lengths of equal hashes in sorted order; the longest run is the top n-gram. Among
                # tied n-grams take the longest in characters: hash order (random per process) must not
                # decide, or reruns could disagree
                starts = np.flatnonzero(np.concatenate(([True], ~same)))
                runs = np.diff(np.concatenate((starts, [len(hs)])))
                top = runs.max()
                first = order[starts[runs == top]]
                frac = top * float((cum[first + n] - cum[first]).max()) / total
                if frac > top_frac[n]:
                    return f"gopher_repetition: top {n}-gram chars {frac:.2f} > {top_frac[n]}"
            if n in dup_frac:
                dup_sorted = np.zeros(len(hs), dtype=bool)
                dup_sorted[1:] |= same
                dup_sorted[:-1] |= same
                starts = order[dup_sorted]  # every occurrence of every repeated n-gram
                cover = np.zeros(w + 1, dtype=np.int64)
                np.add.at(cover, starts, 1)
                np.add.at(cover, starts + n, -1)
                frac = float(lens[np.cumsum(cover)[:w] > 0].sum()) / total
                if frac > dup_frac[n]:
                    return f"gopher_repetition: duplicate {n}-gram chars {frac:.2f} > {dup_frac[n]}"
        return None


C4_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_C4_POLICY_RE = re.compile("|".join(map(re.escape, C4_POLICY + th.C4_POLICY_ZH)))
_C4_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
# Chinese sentences end in a full-width 。！？ (optionally followed by a closing quote or bracket), with
# or without a following space
_SENTENCE_END_ZH = re.compile(r"[\u3002\uff01\uff1f]+[\u201d\u2019\u300d\u300f\uff09]*")
# Chinese written with ASCII punctuation ("今天天气很好.我们去公园."): an ASCII sentence end right after
# a CJK character counts even without a following space (with one, _SENTENCE_END counts it already)
_SENTENCE_END_CJK_ASCII = re.compile(f"(?<={CJK_CLASS})[.!?]+[\"')\\]\u201d\u300d]*(?=\\S)")
_C4_TERMINAL = (".", "!", "?", '"', "\u3002", "\uff01", "\uff1f", "\u201d", "\u300d", "\u300f")


class C4Rules(Step):
    """C4's line and page rules (Raffel et al. 2020, "Exploring the Limits of Transfer Learning",
    section 2.2): keep only lines ending in terminal punctuation (. ! ? ") and with at least 3 words;
    remove lines mentioning javascript; drop pages with "lorem ipsum" or a curly bracket; drop pages with
    fewer than 5 sentences. The TFDS C4 code adds: remove lines with cookie/terms-of-use notices, lines
    with a word over 1000 characters, and Wikipedia citation marks.

    Each rule can be switched off: corpora that mix in code should set `drop_curly_brace` and
    `terminal_punct_lines` off (C4 wanted no code; InternLM2 curates code separately). Blank lines are
    kept so paragraphs survive. Sentences are counted as terminal-punctuation marks followed by a space
    or the end of a line.

    Chinese: C4 is English-only (FineWeb-2 applies it to no other language). Chinese documents get
    the same page and line rules with Chinese terminal punctuation (。！？」), words per line from the
    segmentation (jieba), policy notices in Chinese (thresholds.C4_POLICY_ZH), sentences ending in
    。！？ or in an ASCII . ! ? right after a CJK character (Chinese typed with ASCII punctuation, no
    space after it), and `min_sentences_zh` (3, our choice: see thresholds.C4_MIN_SENTENCES). Code
    documents pass."""

    name = "c4"
    category = "rules"

    def __init__(self, terminal_punct_lines: bool = True, min_words_per_line: int = 3,
                 min_sentences: int = 5, drop_lorem_ipsum: bool = True, drop_curly_brace: bool = True,
                 drop_javascript_lines: bool = True, drop_policy_lines: bool = True,
                 max_word_length: int = 1000, remove_citations: bool = True,
                 min_sentences_zh: int = th.C4_MIN_SENTENCES["zh"]):
        self.terminal_punct_lines = terminal_punct_lines
        self.min_words_per_line = min_words_per_line
        self.min_sentences = min_sentences
        self.min_sentences_zh = min_sentences_zh
        self.drop_lorem_ipsum, self.drop_curly_brace = drop_lorem_ipsum, drop_curly_brace
        self.drop_javascript_lines, self.drop_policy_lines = drop_javascript_lines, drop_policy_lines
        self.max_word_length = max_word_length
        self.remove_citations = remove_citations

    def process(self, doc: Document) -> str | None:
        prof = th.profile(doc)
        if prof == "code":
            return None
        low = doc.text.lower()
        if self.drop_lorem_ipsum and "lorem ipsum" in low:
            return "c4: lorem ipsum"
        if self.drop_curly_brace and "{" in doc.text:
            return "c4: curly bracket"
        zh = prof == "zh"
        seg = segmented(doc) if not doc.text.isascii() else None
        kept: list[str] = []
        changed = False
        sentences = 0
        for i, line in enumerate(doc.text.split("\n")):
            s = line.strip()
            if not s:
                kept.append("")
                continue
            if self.remove_citations and "[" in s:
                s2 = _C4_CITATION.sub("", s)
                changed |= s2 != s
                s = s2
            words = s.split()
            # a line with CJK text counts its segmented words (jieba), not its whitespace tokens
            n_words = len(words) if seg is None or s.isascii() else seg.line_tokens[i]
            ls = s.lower()
            ends = _C4_TERMINAL if zh else (".", "!", "?", '"')
            if ((self.terminal_punct_lines and (not s.endswith(ends) or s.endswith("...")))
                    or n_words < self.min_words_per_line
                    or max(map(len, words), default=0) > self.max_word_length
                    or (self.drop_javascript_lines and "javascript" in ls)
                    or (self.drop_policy_lines and _C4_POLICY_RE.search(ls))):
                changed = True
                continue
            sentences += len(_SENTENCE_END.findall(s))
            if zh or not s.isascii():
                sentences += len(_SENTENCE_END_ZH.findall(s)) + len(_SENTENCE_END_CJK_ASCII.findall(s))
            kept.append(s)
        need = self.min_sentences_zh if zh else self.min_sentences
        if sentences < need:
            return f"c4: too few sentences {sentences} < {need}"
        if changed:
            doc.text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
        return None


# Characters that are never abnormal: word characters of any script, whitespace, printable ASCII,
# general punctuation (dashes, quotes, ellipsis), Latin-1 punctuation and currency signs.
_ABNORMAL = re.compile(r"[^\w\s!-~\u2010-\u2027\u00a1-\u00bf\u00d7\u00f7\u20a0-\u20bf\u3000-\u303f\uff01-\uff5e]")


class Characters(Step):
    """Abnormal characters and line-break anomalies (InternLM2 report 3.1.1 names both as rule
    families, without thresholds).

    - abnormal characters: anything that is not a letter or digit of any script, whitespace, printable
      ASCII, common punctuation or a currency sign: U+FFFD replacement characters from undecodable bytes,
      box drawing, private-use code points, stray symbols. Drop above `max_abnormal_ratio` of all
      characters. 0.1 is our choice: it tolerates the occasional emoji or symbol and is measured on the
      synthetic corpus in the run report.
    - line breaks: drop when newlines per word exceed `max_newline_ratio` (0.3, the FineWeb quality
      filter's "new_line_ratio", Penedo et al. 2024), i.e. text chopped into fragments. Words are the
      segmentation's tokens; Chinese documents use `max_newline_ratio_zh` (0.178, FineWeb-2 cmn_Hani);
      code documents skip this rule (code is line-oriented)."""

    name = "characters"
    category = "rules"

    def __init__(self, max_abnormal_ratio: float = 0.1, max_newline_ratio: float = th.NEW_LINE_RATIO["en"],
                 max_newline_ratio_zh: float = th.NEW_LINE_RATIO["zh"]):
        self.max_abnormal_ratio = max_abnormal_ratio
        self.max_newline_ratio = max_newline_ratio
        self.max_newline_ratio_zh = max_newline_ratio_zh

    def process(self, doc: Document) -> str | None:
        text = doc.text
        if not text.isascii():
            ratio = len(_ABNORMAL.findall(text)) / max(len(text), 1)
            if ratio > self.max_abnormal_ratio:
                return f"characters: abnormal characters {ratio:.2f} > {self.max_abnormal_ratio}"
        prof = th.profile(doc)
        if prof == "code":
            return None
        limit = self.max_newline_ratio_zh if prof == "zh" else self.max_newline_ratio
        words = max(segmented(doc).n_tokens, 1)
        nl = text.count("\n") / words
        if nl > limit:
            return f"characters: newlines per word {nl:.2f} > {limit}"
        return None


# ASCII and Chinese line-ending punctuation: 。！？：；）」』, closing quotes ” ’, the ellipsis … (and
# ……), closing title and lenticular brackets 》〉】〗, the full-width tilde ～ of informal Chinese; and
# a line ending in an emoji (chat and social-media text ends lines with one instead of a full stop)
_LINE_END = (".", "!", "?", '"', "'", ":", ";", ")", "\u201d", "\u2019", "\u2026", "\u3002", "\uff01", "\uff1f",
             "\uff1a", "\uff1b", "\uff09", "\u300d", "\u300f", "\u300b", "\u3009", "\u3011", "\u3017", "\uff5e")
_EMOJI_END = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF\u2B50\u2B55][\uFE0F\U0001F3FB-\U0001F3FF]*$")


class Punctuation(Step):
    """Punctuation distribution (InternLM2 report 3.1.1 lists it as a rule family, without numbers).

    - line endings: drop when at most `min_line_punct` of the non-empty lines end in punctuation
      (0.12, the FineWeb quality filter's "line_punct_thr", Penedo et al. 2024; Chinese documents
      `min_line_punct_zh` 0.106, FineWeb-2 cmn_Hani): keyword lists, menus and SEO spam;
    - density: drop when punctuation marks (ASCII and full-width) exceed `max_punct_ratio` of the
      non-space characters (0.25, our choice; ordinary English prose is 2-4%, Chinese prose 10-14%):
      "!!!???" spam and symbol art.
    Code documents (thresholds.profile: recognised here already, before the language step) skip the
    line-ending rule and get `max_punct_ratio_code` (0.5, our choice: measured on 2,514 .py files of
    this project's site-packages, the median is 0.17, 8.8% are above 0.25 and 0.16% above 0.5, the
    latter tables of symbols)."""

    name = "punctuation"
    category = "rules"

    def __init__(self, min_line_punct: float = th.LINE_PUNCT["en"], max_punct_ratio: float = 0.25,
                 min_line_punct_zh: float = th.LINE_PUNCT["zh"], max_punct_ratio_code: float = 0.5):
        self.min_line_punct = min_line_punct
        self.min_line_punct_zh = min_line_punct_zh
        self.max_punct_ratio = max_punct_ratio
        self.max_punct_ratio_code = max_punct_ratio_code
        self._table = str.maketrans("", "", PUNCT)

    def process(self, doc: Document) -> str | None:
        text = doc.text
        lines = [ln.rstrip() for ln in text.split("\n") if ln.strip()]
        if not lines:
            return "punctuation: no lines"
        prof = th.profile(doc)
        limit = self.min_line_punct_zh if prof == "zh" else self.min_line_punct
        ends = sum(ln.endswith(_LINE_END) or (not ln.isascii() and _EMOJI_END.search(ln) is not None)
                   for ln in lines) / len(lines)
        if prof != "code" and ends <= limit:
            return f"punctuation: lines ending in punctuation {ends:.2f} <= {limit}"
        compact = "".join(text.split())
        n_punct = len(compact) - len(compact.translate(self._table))
        ratio = n_punct / max(len(compact), 1)
        limit = self.max_punct_ratio_code if prof == "code" else self.max_punct_ratio
        if ratio > limit:
            return f"punctuation: punctuation share {ratio:.2f} > {limit}"
        return None
