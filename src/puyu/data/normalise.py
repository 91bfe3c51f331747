"""Normalisation and language identification: the first steps, putting every document into one form.

InternLM2 report, section 3.1.1: all sources are first converted to one format before rule-based
filtering. Here that means: re-decode Chinese text whose GBK/Big5 bytes were read as a Western code
page, repair other broken encodings (mojibake) with ftfy, Unicode NFC, one kind of line ending, no
control characters, no runs of spaces, at most one blank line between paragraphs.

Chinese punctuation is kept as written: full-width commas, full stops, brackets and quotes (，。（）「」)
are the normal punctuation of Chinese text, and the tokenizer (InternLM2's has them as tokens) and the
rule steps (segment.PUNCT, rules' line endings) know them. ftfy's `fix_character_width` and
`uncurl_quotes`, which would turn them (and the curly quotes “” Chinese uses) into ASCII, are therefore
off; full-width Latin letters and digits (ＡＢＣ１２３), which are the
same words in another width, are mapped to ASCII on purpose.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import numpy as np

from puyu.data.base import Step
from puyu.data.documents import Document

# code recognition lives in segment.py (every step needs it, the ones before `language` too);
# re-exported here, where it used to be
from puyu.data.segment import CODE_SUFFIXES, code_share, is_code  # noqa: F401

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# runs of blanks after a non-blank character; leading indentation (code) is left alone
_SPACES = re.compile(r"(?<=\S)[ \t\u00a0\u2000-\u200a\u3000]{2,}|(?<=\S)[\t\u00a0\u2000-\u200a\u3000]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANKS = re.compile(r"\n{3,}")
# full-width digits and Latin letters -> ASCII; full-width punctuation is left alone
_WIDTH = {c: c - 0xFEE0 for r in ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A)) for c in range(r[0], r[1] + 1)}
_HIGH_LATIN1 = re.compile(r"[\u0080-\u00ff\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
                          r"\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122\ufffd]")
LEGACY_CJK_ENCODINGS = ("gb18030", "big5")


def _as_single_byte(text: str) -> bytes | None:
    """The bytes a Latin-1/cp1252 reading of `text` came from (None if some character cannot have
    come from either code page, or stands for a byte the reader lost: U+FFFD)."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        pass
    out = bytearray()
    for c in text:
        o = ord(c)
        if o < 256:
            out.append(o)
        else:
            try:
                out += c.encode("cp1252")  # U+FFFD has no cp1252 byte: lost, so None
            except UnicodeEncodeError:
                return None
    return bytes(out)


# cp1252's characters above U+00FF back to their bytes (for a lossy view of the raw bytes)
_CP1252_BACK = {ord(bytes([b]).decode("cp1252")): b for b in range(0x80, 0xA0) if b not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}
_HAN_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# what Chinese text holds besides Han characters and ASCII: CJK and full-width punctuation, curly
# quotes, dashes, ellipsis, middle dot, degree/multiplication signs, superscripts, roman numerals
_ZH_OTHER = re.compile(r"[\u3000-\u303f\uff00-\uffef\u2010-\u2027\u00b0-\u00b7\u00d7\u00f7\u2160-\u217f"
                       r"\u2460-\u24ff\u221a\u2212]")


@lru_cache(maxsize=65536)
def _common_hanzi(c: str) -> bool:
    """One of the ~3,755 + 5,401 most common Han characters: GB2312 level 1 (lead byte 0xB0-0xD7) or
    Big5 level 1 (0xA440-0xC67E). Clean Chinese prose is 99-100% such characters (the test texts:
    Simplified, Traditional, classical, technical); text decoded from the wrong bytes is mostly rarer
    characters (a random GBK code is level 1 about one time in six)."""
    try:
        if 0xB0 <= c.encode("gb2312")[0] <= 0xD7:
            return True
    except UnicodeEncodeError:
        pass
    try:
        b = c.encode("big5")
    except UnicodeEncodeError:
        return False
    return 0xA440 <= (b[0] << 8 | b[1]) <= 0xC67E


def plausible_chinese(text: str, min_common: float = 0.85, max_other: float = 0.1) -> bool:
    """Does `text` read as Chinese (possibly with English)? At least two Han characters, at least
    `min_common` of them common (`_common_hanzi`), and at most `max_other` of its non-ASCII characters
    neither Han nor the punctuation Chinese uses (Cyrillic, Greek, kana, box drawing: what GBK's
    symbol rows turn Latin-1 pairs into)."""
    han = _HAN_CHAR.findall(text)
    if len(han) < 2 or sum(map(_common_hanzi, han)) < min_common * len(han):
        return False
    non_ascii = sum(1 for c in text if c > "\x7f")
    other = non_ascii - len(han) - len(_ZH_OTHER.findall(text))
    return other <= max_other * non_ascii


def looks_like_legacy_mojibake(text: str, min_share: float = 0.05, min_paired: float = 0.6) -> bool:
    """Chinese GBK/Big5 bytes read as Latin-1/cp1252 have the byte pattern of a double-byte code: the
    Latin-1 high characters come in pairs and runs ("ÖÐÎÄ", a lead byte 0x81-0xFE then a trail byte),
    where Western text has them one at a time between ASCII letters ("café", "Ñoño", "Déjà"). True when
    the high characters are at least `min_share` of the non-space characters and at least
    `min_paired` of them sit next to another (GBK/Big5 Chinese: 0.85-1.0, also mixed with English;
    French, Spanish 0.0, German 0.2-0.4, Portuguese up to 0.6, which the repair test then rejects)."""
    compact = len(text) - text.count(" ") - text.count("\n")
    if compact <= 0:
        return False
    pos = [m.start() for m in _HIGH_LATIN1.finditer(text)]
    if len(pos) < 2 or len(pos) < min_share * compact:
        return False
    at = set(pos)
    paired = sum(1 for i in pos if i - 1 in at or i + 1 in at)
    return paired >= min_paired * len(pos)


def legacy_cjk_mojibake(text: str) -> tuple[str | None, str | None]:
    """Detect Chinese text in GBK/GB18030 or Big5 that was decoded as Latin-1/cp1252 ("ÖÐÎÄ").

    Returns (repaired text, None) when the text looks like such mojibake (`looks_like_legacy_mojibake`:
    Latin-1 high characters in the pairs a double-byte code makes) and its bytes decode as GB18030 or
    Big5 (charset-normalizer's pick first) into plausible Chinese (`plausible_chinese`: common
    characters, no stray symbols; English words around it are fine, so mixed text is repaired too);
    (None, reason) when it looks like such mojibake and the bytes do not decode, but what does decode
    (invalid sequences skipped) is plausible Chinese (bytes lost or damaged); (None, None) otherwise, including UTF-8 read as a
    single-byte code page (ftfy's job) and Western text, whose accents come one at a time."""
    from puyu.data.segment import cjk_count

    if cjk_count(text) or not looks_like_legacy_mojibake(text):
        return None, None
    raw = _as_single_byte(text)
    if raw is not None:
        try:
            raw.decode("utf-8")
            return None, None  # UTF-8 read as a single-byte code page: ftfy's job
        except UnicodeDecodeError:
            pass
        from charset_normalizer import from_bytes

        best = from_bytes(raw, cp_isolation=list(LEGACY_CJK_ENCODINGS)).best()
        tried = ([best.encoding] if best is not None else []) + list(LEGACY_CJK_ENCODINGS)
        for enc in dict.fromkeys(tried):
            try:
                fixed = raw.decode(enc)
            except (UnicodeDecodeError, LookupError):
                continue
            if plausible_chinese(fixed):
                return fixed, None
    # damaged or lost bytes: dropped only when what does decode is mostly Chinese (Portuguese "ção",
    # German "üß" also pair their accents, but decode to rare characters, and are left alone). Looser
    # than for a repair: after a bad byte the decoder can lose the pair alignment for a few characters
    # (2% of bytes overwritten: 85-94% common characters, up to a fifth symbols)
    lossy = bytes(ord(c) if ord(c) < 256 else 0x3F for c in text.translate(_CP1252_BACK))
    for enc in LEGACY_CJK_ENCODINGS:
        partial = lossy.decode(enc, errors="replace").replace("\ufffd", "")
        if plausible_chinese(partial, min_common=0.7, max_other=0.4):
            high = len(_HIGH_LATIN1.findall(text)) / max(len(text) - text.count(" ") - text.count("\n"), 1)
            lost = " (bytes lost)" if "\ufffd" in text else ""
            return None, (f"normalise: undecodable GBK/Big5 mojibake{lost} ({high:.0%} Latin-1 high "
                          f"characters in pairs)")
    return None, None


class Normalise(Step):
    """Repair and canonicalise text; drop documents left empty.

    - `fix_encoding`: first `legacy_cjk_mojibake`: GBK/Big5 bytes read as Latin-1/cp1252 are
      re-decoded, or the document is dropped with the reason when they cannot be (ftfy cannot repair
      these: it only undoes UTF-8 misread as a single-byte code page, and it makes GBK mojibake worse);
      then ftfy.fix_text (Speer 2019, the standard mojibake repair, also used by CCNet-style
      pipelines) with `fix_character_width` off (see the module docstring). Both only run on
      non-ASCII text: mojibake always contains non-ASCII characters, and skipping pure ASCII keeps this
      step cheap. Full-width letters and digits become ASCII; Chinese punctuation is kept.
    - `form`: Unicode normalisation form (NFC, as ftfy and most pretraining pipelines use).
    - whitespace: CRLF -> LF, control characters removed, runs of blanks inside a line become one space
      (leading indentation is kept: it carries meaning in code; `collapse_spaces: false` keeps
      aligned columns too), trailing blanks removed, three or more newlines become a paragraph break.
    The document's text object is only replaced when something changed, so the stats count
    "modified" exactly.
    """

    name = "normalise"
    category = "normalise"

    def __init__(self, fix_encoding: bool = True, form: str = "NFC", min_chars: int = 1,
                 collapse_spaces: bool = True):
        if form not in ("NFC", "NFKC", "NFD", "NFKD"):
            raise ValueError(f"form must be a Unicode normalisation form, not {form!r}")
        self.fix_encoding = fix_encoding
        self.form = form
        self.min_chars = min_chars
        self.collapse_spaces = collapse_spaces

    def normalise(self, text: str) -> str:
        if not text.isascii():
            if self.fix_encoding:
                import ftfy

                fixed, _ = legacy_cjk_mojibake(text)
                text = ftfy.fix_text(fixed or text, normalization=self.form, fix_character_width=False,
                                      uncurl_quotes=False)
            else:
                text = unicodedata.normalize(self.form, text)
            text = text.translate(_WIDTH)
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _CONTROL.sub("", text)
        if self.collapse_spaces:
            text = _SPACES.sub(" ", text)
        text = _TRAILING.sub("\n", text)
        text = _BLANKS.sub("\n\n", text)
        return text.strip("\n").rstrip()

    def process(self, doc: Document) -> str | None:
        if self.fix_encoding and not doc.text.isascii():
            _, reason = legacy_cjk_mojibake(doc.text)
            if reason is not None:
                return reason
        new = self.normalise(doc.text)
        if new != doc.text:
            doc.text = new
        if len(doc.text) < self.min_chars:
            return "normalise: empty after normalisation"
        return None


class Language(Step):
    """Keep documents identified as one of `languages` with probability >= `min_score`; recognise code.

    langid.py (Lui & Baldwin 2012) ships its model inside the package, so no download is needed.
    `min_score` 0.65 follows FineWeb (Penedo et al. 2024), which keeps English at fastText score
    >= 0.65; CCNet (Wenzek et al. 2020) used 0.5. Only the first `max_chars` characters are classified,
    which is plenty for a stable answer and bounds the cost on long documents. Writes
    metadata["language"], metadata["language_score"] and metadata["cjk_share"].

    The default is bilingual, `languages: [zh, en]`, as InternLM2's corpus is. Mixed Chinese-English
    documents: langid's answer between zh and en on them is unstable, so a document whose CJK share is
    at least `segment.CJK_MAJORITY` (0.5) counts as zh when zh is allowed, with the score langid gives
    zh + en together (the Chinese thresholds of the later steps apply to it either way); a document with
    less CJK text than that is identified on its text with the CJK runs removed.

    Code: files with a source-code suffix and documents whose lines are mostly code (`code_share` >=
    `min_code_share`, 0.5) are labelled "code" (language_score 1) and kept when `keep_code` (default),
    instead of being judged as a natural language; the word rules then leave them alone
    (thresholds.profile)."""

    name = "language"
    category = "language"
    observe = ("language_score",)
    batch_size = 256

    def __init__(self, languages: list[str] | tuple[str, ...] = ("zh", "en"), min_score: float = 0.65,
                 max_chars: int = 2000, keep_code: bool = True, min_code_share: float = 0.5):
        self.languages = tuple(languages)
        self.min_score = min_score
        self.max_chars = max_chars
        self.keep_code = keep_code
        self.min_code_share = min_code_share
        self._ident = None

    def __getstate__(self):  # the identifier is rebuilt lazily in each worker
        return {**self.__dict__, "_ident": None}

    @property
    def identifier(self):
        if self._ident is None:
            from langid.langid import LanguageIdentifier, model

            self._ident = LanguageIdentifier.from_modelstring(model, norm_probs=True)
        return self._ident

    def process_batch(self, docs: list[Document]) -> list[str | None]:
        from puyu.data.segment import CJK_MAJORITY, cjk_share
        from puyu.data.segment import CJK_RUN as _CJK_RUNS

        # langid's own classify() does a uint32 x float32 product that numpy cannot hand to BLAS
        # (~7 ms a document); stacking the feature vectors as float32 makes it one fast matrix product.
        ident = self.identifier
        shares = [cjk_share(d.text) for d in docs]
        # a document with a little CJK text (below CJK_MAJORITY) is identified by its other text: langid's
        # byte n-grams are thrown by the CJK bytes (an English page quoting one Chinese sentence came out
        # as Latin with score 1.0)
        texts = [_CJK_RUNS.sub(" ", d.text) if 0 < sh < CJK_MAJORITY else d.text for d, sh in zip(docs, shares)]
        fv = np.stack([ident.instance2fv(t[: self.max_chars]) for t in texts]).astype(np.float32)
        logp = fv @ ident.nb_ptc + ident.nb_pc  # (B, n_languages) log-probabilities
        logp = logp - logp.max(axis=1, keepdims=True)
        probs = np.exp(logp)
        probs /= probs.sum(axis=1, keepdims=True)
        classes = [str(c) for c in ident.nb_classes]
        zh_en = [classes.index("zh"), classes.index("en")]
        out: list[str | None] = []
        for doc, row, share in zip(docs, probs, shares):
            doc.metadata["cjk_share"] = round(share, 4)
            if self.keep_code and is_code(doc, self.min_code_share):  # cached: the rules asked already
                doc.metadata["language"] = "code"
                doc.metadata["language_score"] = 1.0
                out.append(None)
                continue
            k = int(row.argmax())
            lang, score = classes[k], float(row[k])
            if share >= CJK_MAJORITY and "zh" in self.languages and lang in ("zh", "en"):
                lang, score = "zh", float(row[zh_en].sum())
            doc.metadata["language"] = lang
            doc.metadata["language_score"] = round(score, 4)
            if lang not in self.languages:
                out.append(f"language: {lang} not in {list(self.languages)}")
            elif score < self.min_score:
                out.append(f"language: low confidence {score:.2f} < {self.min_score}")
            else:
                out.append(None)
        return out
