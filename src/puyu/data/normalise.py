"""Normalisation and language identification: the first steps, putting every document into one form.

InternLM2 report, section 3.1.1: all sources are first converted to one format before rule-based
filtering. Here that means: repair broken encodings (mojibake) with ftfy, Unicode NFC, one kind of line
ending, no control characters, no runs of spaces, at most one blank line between paragraphs.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

from puyu.data.base import Step
from puyu.data.documents import Document

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# runs of blanks after a non-blank character; leading indentation (code) is left alone
_SPACES = re.compile(r"(?<=\S)[ \t\u00a0\u2000-\u200a\u3000]{2,}|(?<=\S)[\t\u00a0\u2000-\u200a\u3000]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANKS = re.compile(r"\n{3,}")


class Normalise(Step):
    """Repair and canonicalise text; drop documents left empty.

    - `fix_encoding`: ftfy.fix_text (Speer 2019, the standard mojibake repair, also used by CCNet-style
      pipelines). It only runs on non-ASCII text: mojibake always contains non-ASCII characters, and
      skipping pure ASCII keeps this step cheap.
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

                text = ftfy.fix_text(text, normalization=self.form)
            else:
                text = unicodedata.normalize(self.form, text)
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _CONTROL.sub("", text)
        if self.collapse_spaces:
            text = _SPACES.sub(" ", text)
        text = _TRAILING.sub("\n", text)
        text = _BLANKS.sub("\n\n", text)
        return text.strip("\n").rstrip()

    def process(self, doc: Document) -> str | None:
        new = self.normalise(doc.text)
        if new != doc.text:
            doc.text = new
        if len(doc.text) < self.min_chars:
            return "normalise: empty after normalisation"
        return None


class Language(Step):
    """Keep documents identified as one of `languages` with probability >= `min_score`.

    langid.py (Lui & Baldwin 2012) ships its model inside the package, so no download is needed.
    `min_score` 0.65 follows FineWeb (Penedo et al. 2024), which keeps English at fastText score
    >= 0.65; CCNet (Wenzek et al. 2020) used 0.5. Only the first `max_chars` characters are classified,
    which is plenty for a stable answer and bounds the cost on long documents. Writes
    metadata["language"] and metadata["language_score"].
    """

    name = "language"
    category = "language"
    observe = ("language_score",)
    batch_size = 256

    def __init__(self, languages: list[str] | tuple[str, ...] = ("en",), min_score: float = 0.65,
                 max_chars: int = 2000):
        self.languages = tuple(languages)
        self.min_score = min_score
        self.max_chars = max_chars
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
        # langid's own classify() does a uint32 x float32 product that numpy cannot hand to BLAS
        # (~7 ms a document); stacking the feature vectors as float32 makes it one fast matrix product.
        ident = self.identifier
        fv = np.stack([ident.instance2fv(d.text[: self.max_chars]) for d in docs]).astype(np.float32)
        logp = fv @ ident.nb_ptc + ident.nb_pc  # (B, n_languages) log-probabilities
        logp = logp - logp.max(axis=1, keepdims=True)
        probs = np.exp(logp)
        probs /= probs.sum(axis=1, keepdims=True)
        out: list[str | None] = []
        for doc, row in zip(docs, probs):
            k = int(row.argmax())
            lang, score = str(ident.nb_classes[k]), float(row[k])
            doc.metadata["language"] = lang
            doc.metadata["language_score"] = round(score, 4)
            if lang not in self.languages:
                out.append(f"language: {lang} not in {list(self.languages)}")
            elif score < self.min_score:
                out.append(f"language: low confidence {score:.2f} < {self.min_score}")
            else:
                out.append(None)
        return out
