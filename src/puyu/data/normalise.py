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
    come from either code page). U+FFFD stands for a byte the reader could not map: kept as '?'."""
    out = bytearray()
    for c in text:
        o = ord(c)
        if o < 256:
            out.append(o)
        elif o == 0xFFFD:
            out.append(0x3F)
        else:
            try:
                out += c.encode("cp1252")
            except UnicodeEncodeError:
                return None
    return bytes(out)


def legacy_cjk_mojibake(text: str, min_share: float = 0.3) -> tuple[str | None, str | None]:
    """Detect Chinese text in GBK/GB18030 or Big5 that was decoded as Latin-1/cp1252 ("ÖÐÎÄ").

    Returns (repaired text, None) when the bytes decode cleanly as GB18030 or Big5 (charset-normalizer
    picks between them) into mostly-CJK text; (None, reason) when the text looks like such mojibake but
    cannot be recovered (bytes lost or corrupted); (None, None) when it does not look like mojibake at
    all. "Looks like": at least `min_share` of the non-space characters are Latin-1 high characters or
    cp1252 symbols (ordinary French or German text has well under 10%), and no CJK characters."""
    from puyu.data.segment import cjk_count, cjk_share

    compact = len(text) - text.count(" ") - text.count("\n")
    if compact <= 0 or cjk_count(text):
        return None, None
    high = len(_HIGH_LATIN1.findall(text))
    if high / compact < min_share:
        return None, None
    raw = _as_single_byte(text)
    if raw is not None:
        try:
            raw.decode("utf-8")
            return None, None  # UTF-8 read as a single-byte code page: ftfy's job
        except UnicodeDecodeError:
            pass
    if raw is not None and b"?" not in raw:
        from charset_normalizer import from_bytes

        best = from_bytes(raw, cp_isolation=list(LEGACY_CJK_ENCODINGS)).best()
        tried = ([best.encoding] if best is not None else []) + list(LEGACY_CJK_ENCODINGS)
        for enc in dict.fromkeys(tried):
            try:
                fixed = raw.decode(enc)
            except (UnicodeDecodeError, LookupError):
                continue
            if cjk_share(fixed) >= 0.5:
                return fixed, None
    return None, f"normalise: undecodable GBK/Big5 mojibake ({high / compact:.0%} Latin-1 high characters)"


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
    at least `segment.CJK_MAJORITY` (0.3) counts as zh when zh is allowed, with the score langid gives
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
