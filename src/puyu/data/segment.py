"""Language-aware word segmentation, shared by every step, computed once per document.

Chinese has no spaces between words, so `text.split()` sees a whole Chinese paragraph as one "word"
and every word-based rule (Gopher word counts, stop words, n-gram repetition, C4 line lengths, the
n-gram LM, the classifiers, MinHash shingles) breaks on it. This module splits a text into *runs*:

  CJK runs     maximal runs of Han characters (CJK Unified Ideographs, extensions A-F, compatibility
               ideographs), kana and Hangul;
  other runs   everything else, split into words at whitespace, as before.

and segments each run by its kind:

  words        Han runs are cut into words by jieba (Sun Junyi's dictionary + HMM segmenter, the one
               datatrove's Chinese tokenizer and FineWeb-2's cmn_Hani filters use); kana/Hangul runs
               fall back to one character per unit; other runs are whitespace words with surrounding
               punctuation (ASCII and full-width) stripped;
  units        the MinHash shingle units: one unit per CJK character (character 5-grams for CJK text,
               as the issue measured: 5-grams over jieba words give Jaccard 0.73 on a 158-character
               pair with three edits, character 5-grams 0.85), lower-cased alphanumeric words
               elsewhere. Traditional characters are folded to Simplified first (OpenCC "t2s"), so the
               two scripts of one text shingle alike.

`segmented(doc)` caches the result on the document (`doc.cache`, never written out) keyed by the text
it was computed from: steps that do not change the text reuse it, a step that edits the text gets a
fresh segmentation. jieba runs ~320K characters/s on one core; it is only called for Han runs, so pure
English text pays nothing for it.

Mixed documents are classed by their CJK share (`cjk_share`: CJK characters over *units*, a unit being
one CJK character or one word of letters/digits outside the CJK runs): at or above `CJK_MAJORITY`
(0.5) the document is "cjk" and gets the Chinese thresholds (`puyu.data.thresholds`), below it the
English/space-separated ones. Words, not letters: counting each letter of "kubectl" as a unit gave
a Chinese Kubernetes how-to full of commands a share of 0.17 and the English profile, whose stop-word
rule then dropped it; by units it is 0.55. The clean mixed documents measured: Chinese with English
terms 0.55-0.98, English quoting Chinese names or one Chinese sentence 0.06-0.33. 0.5 means Chinese
carries roughly 40% or more of the content (a Chinese word is ~1.5 characters).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from puyu.errors import PuyuError

# Han (URO, ext A, compatibility, ext B-F), kana (hiragana, katakana, phonetic ext), Hangul syllables
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
_KANA_HANGUL = "\u3040-\u30ff\u31f0-\u31ff\uac00-\ud7af"
CJK_CLASS = f"[{_HAN}{_KANA_HANGUL}]"
_CJK_RUN = re.compile(f"{CJK_CLASS}+")
CJK_RUN = _CJK_RUN  # maximal runs of CJK characters
_CJK_CHAR = re.compile(CJK_CLASS)
_HAN_RUN = re.compile(f"[{_HAN}]+")
_UNIT_WORD = re.compile(r"[^\W_]+")
_FINE_TOKEN = re.compile(r"\d+(?:[.,]\d+)*%?|[^\W\d_]+|\S")  # numbers, letter words, single other characters

# Full-width and CJK punctuation: CJK symbols and punctuation (U+3000-303F), full-width forms'
# punctuation (U+FF01-FF0F, FF1A-FF20, FF3B-FF40, FF5B-FF65), the middle dot and dashes/quotes
_CJK_PUNCT_RANGES = ((0x3000, 0x303F), (0xFF01, 0xFF0F), (0xFF1A, 0xFF20), (0xFF3B, 0xFF40), (0xFF5B, 0xFF65))
CJK_PUNCT = "".join(chr(c) for a, b in _CJK_PUNCT_RANGES for c in range(a, b + 1)) + "\u00b7\u2026\u2014"
PUNCT = (string.punctuation + "\u2010\u2011\u2012\u2013\u2014\u2015\u2018\u2019\u201c\u201d\u2026\u00ab\u00bb"
         "\u00bf\u00a1" + CJK_PUNCT)

CJK_MAJORITY = 0.5  # CJK share (characters over units) at and above which a document gets the CJK thresholds


class SegmenterError(PuyuError):
    """A segmenter dependency (jieba, opencc) is missing."""


@lru_cache(maxsize=1)
def _jieba():
    try:
        import jieba
    except ImportError as e:  # pragma: no cover - jieba is in the data extra
        raise SegmenterError("Chinese segmentation needs jieba: pip install 'puyu[data]'") from e
    jieba.setLogLevel(60)  # jieba logs its dictionary load at INFO
    jieba.initialize()
    return jieba


@lru_cache(maxsize=1)
def _t2s():
    try:
        import opencc
    except ImportError as e:  # pragma: no cover - opencc is in the data extra
        raise SegmenterError("Traditional/Simplified folding needs opencc: pip install 'puyu[data]'") from e
    return opencc.OpenCC("t2s")


@lru_cache(maxsize=1)
def _s2twp():
    import opencc

    return opencc.OpenCC("s2twp")


def taiwan_phrasing(text: str) -> str:
    """`text` in Traditional script with Taiwan phrasing (OpenCC s2twp: 网络 -> 網路, 视频 -> 影片)."""
    _t2s()  # the same dependency check
    return _s2twp().convert(text)


def fold_script(text: str) -> str:
    """Traditional Chinese folded to Simplified (OpenCC t2s, phrase-aware); text without Han
    characters is returned as is (no conversion cost)."""
    if text.isascii() or not _HAN_RUN.search(text):
        return text
    return _t2s().convert(text)


def cjk_count(text: str) -> int:
    """Number of CJK characters (Han, kana, Hangul) in `text`."""
    return 0 if text.isascii() else len(_CJK_CHAR.findall(text))


def cjk_share(text: str) -> float:
    """CJK characters over units: CJK characters plus the words (runs of letters and digits) of the
    text outside CJK runs, so "kubectl" is one unit, not seven (0 for text without CJK characters)."""
    if text.isascii():
        return 0.0
    cjk = cjk_count(text)
    if not cjk:
        return 0.0
    other = len(_UNIT_WORD.findall(_CJK_RUN.sub(" ", text)))
    return cjk / (cjk + other)


def runs(text: str) -> Iterator[tuple[bool, str]]:
    """(is_cjk, run) in text order; non-CJK runs keep their whitespace."""
    pos = 0
    if text.isascii():
        if text:
            yield False, text
        return
    for m in _CJK_RUN.finditer(text):
        if m.start() > pos:
            yield False, text[pos:m.start()]
        yield True, m.group()
        pos = m.end()
    if pos < len(text):
        yield False, text[pos:]


def _cjk_words(run: str) -> list[str]:
    if _HAN_RUN.fullmatch(run):
        return _jieba().lcut(run, HMM=True)
    out: list[str] = []
    for is_han, part in _split_han(run):
        out += _jieba().lcut(part, HMM=True) if is_han else list(part)
    return out


def _split_han(run: str) -> Iterator[tuple[bool, str]]:
    pos = 0
    for m in _HAN_RUN.finditer(run):
        if m.start() > pos:
            yield False, run[pos:m.start()]
        yield True, m.group()
        pos = m.end()
    if pos < len(run):
        yield False, run[pos:]


def words(text: str) -> list[str]:
    """Words of `text`: jieba words for Han runs, characters for kana/Hangul, whitespace words with
    edge punctuation stripped elsewhere; punctuation-only tokens are dropped."""
    out: list[str] = []
    for is_cjk, run in runs(text):
        if is_cjk:
            out += _cjk_words(run)
        else:
            for w in run.split():
                w = w.strip(PUNCT)
                if w:
                    out.append(w)
    return out


def tokens(text: str) -> list[str]:
    """Raw tokens in order, for counting "all tokens" the way whitespace splitting did: whitespace
    tokens outside CJK runs (punctuation-only tokens kept), jieba words inside them."""
    out: list[str] = []
    for is_cjk, run in runs(text):
        out += _cjk_words(run) if is_cjk else run.split()
    return out


def shingle_units(text: str) -> list[str]:
    """MinHash units: one per CJK character (after Traditional->Simplified folding), lower-cased
    alphanumeric words elsewhere."""
    text = fold_script(text).lower()
    if text.isascii():
        return _UNIT_WORD.findall(text)
    out: list[str] = []
    for is_cjk, run in runs(text):
        if is_cjk:
            out.extend(run)
        else:
            out += _UNIT_WORD.findall(run)
    return out


@dataclass
class Segmented:
    """One document's segmentation.

    tokens       raw tokens in order (`tokens()`): for ASCII text exactly `text.split()`;
    words        tokens with edge punctuation stripped, punctuation-only ones removed (`words()`);
    line_tokens  number of tokens on each line of `text.split("\\n")`;
    cjk_share    CJK characters over units (`cjk_share`); `script` is "cjk" when it is >= CJK_MAJORITY
                 (the Chinese thresholds apply), else "latin"."""

    text: str
    tokens: list[str]
    words: list[str]
    line_tokens: list[int]
    cjk_share: float

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def script(self) -> str:
        return "cjk" if self.cjk_share >= CJK_MAJORITY else "latin"


def segment(text: str) -> Segmented:
    """Segment `text` once (jieba runs only on its Han runs)."""
    if text.isascii():
        toks = text.split()
        lines = [len(ln.split()) for ln in text.split("\n")]
        return Segmented(text, toks, [w for w in (t.strip(PUNCT) for t in toks) if w], lines, 0.0)
    share = cjk_share(text)
    # in a CJK document the text between CJK runs is split the way jieba (and spaCy's zh pipeline,
    # datatrove's Chinese tokenizer) splits it: numbers, Latin words and each punctuation mark are
    # tokens of their own ("，1960" is two tokens, not one whitespace token). FineWeb-2's Chinese
    # thresholds (e.g. 73.5% of tokens with a letter) were measured on that tokenization.
    split = _FINE_TOKEN.findall if share >= CJK_MAJORITY else str.split
    toks: list[str] = []
    lines = [0]
    for is_cjk, run in runs(text):
        if is_cjk:
            cw = _cjk_words(run)
            toks += cw
            lines[-1] += len(cw)
        else:
            for i, part in enumerate(run.split("\n")):
                if i:
                    lines.append(0)
                pt = split(part)
                toks += pt
                lines[-1] += len(pt)
    ws = [w for w in (t.strip(PUNCT) for t in toks) if w]
    return Segmented(text, toks, ws, lines, share)


def segmented(doc) -> Segmented:
    """`segment(doc.text)`, cached on the document until its text changes."""
    seg = doc.cache.get("segmented")
    if seg is None or (seg.text is not doc.text and seg.text != doc.text):
        seg = segment(doc.text)
        doc.cache["segmented"] = seg
    return seg


# ---------------------------------------------------------------- code

_CODE_LINE = re.compile(
    r"^\s*(?:def |class |import |from \S+ import |#include|#define |#if|#endif|return\b|if .*:$|for .*:$|"
    r"while .*:$|elif |else:|try:|except\b|with .*:$|async |await |raise |public |private |static |const |"
    r"let |var |function\b|package |fn |#!|//|/\*|\*/|\}|@\w+)"
    r"|[;{}]\s*$|^\s*\w[\w.\[\]]*\s*[+\-*/]?=\s*\S|^\s*\w+\(.*\)\s*$|^\s{4,}\S")
_TRIPLE = re.compile(r'"""|\'\'\'')
CODE_SUFFIXES = (".py", ".c", ".h", ".cc", ".cpp", ".hpp", ".java", ".js", ".ts", ".go", ".rs", ".rb", ".php",
                 ".sh", ".cs", ".kt", ".swift", ".scala", ".lua", ".sql", ".r", ".jl", ".m", ".pl")
MIN_CODE_SHARE = 0.5


def code_share(text: str) -> float:
    """Share of the characters (of non-empty lines) on lines that look like source code: statements,
    definitions, braces, assignments, indented blocks, comments, the lines of a triple-quoted
    string (a docstring or a string table: prose never holds \"\"\") and the lines inside brackets a
    code line opened (a dict or list literal spread over lines). By characters, not lines: a
    tutorial whose prose paragraphs are long lines and whose code is many short ones is mostly prose."""
    total = code = 0
    in_string = False
    depth = 0  # brackets a code line left open: the lines up to the closing one are code (data tables)
    for ln in text.split("\n"):
        n = len(ln.strip())
        total += n
        quotes = len(_TRIPLE.findall(ln)) if '""' in ln or "''" in ln else 0
        if n and (in_string or depth or quotes or _CODE_LINE.search(ln)):
            code += n
            if not in_string:
                depth = max(0, depth + sum(map(ln.count, "([{")) - sum(map(ln.count, ")]}")))
        if quotes % 2:
            in_string = not in_string
    return code / total if total else 0.0


def is_code(doc, min_share: float = MIN_CODE_SHARE) -> bool:
    """A code file (its id, metadata path or URL ends in a source-code suffix) or a document whose
    lines are mostly code (`code_share` >= `min_share`). Every step asks this through
    `thresholds.profile`, the ones before the language step included, so `code_share` is cached on
    the document (`doc.cache`) until its text changes."""
    for key in ("path", "url", "source"):
        v = doc.metadata.get(key)
        if isinstance(v, str) and v.lower().endswith(CODE_SUFFIXES):
            return True
    if doc.id.lower().endswith(CODE_SUFFIXES):
        return True
    cached = doc.cache.get("code_share")
    if cached is None or (cached[0] is not doc.text and cached[0] != doc.text):
        cached = (doc.text, code_share(doc.text))
        doc.cache["code_share"] = cached
    return cached[1] >= min_share


_SK_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern


def as_segmented(x: str | Segmented) -> Segmented:
    return x if isinstance(x, Segmented) else segment(x)


def classifier_tokens(x: str | Segmented) -> list[str]:
    """Tokens for the bag-of-n-grams classifiers (scikit-learn `tokenizer`): jieba words as they are
    in CJK runs (one-character words included: they carry much of Chinese), scikit-learn's default
    pattern (lower-cased words of 2+ characters) elsewhere, so English features are what they were
    before segmentation existed. Takes a text or a cached `Segmented`."""
    out: list[str] = []
    for t in as_segmented(x).tokens:
        if not t.isascii() and _CJK_CHAR.match(t):
            out.append(t)
        else:
            out += _SK_TOKEN.findall(t.lower())
    return out
