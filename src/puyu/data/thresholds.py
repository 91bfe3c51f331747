"""Per-language thresholds for the rule steps, and how a document's language picks its table.

Profiles (which table a document gets, `profile(doc)`):

  zh        documents whose CJK share (segment.cjk_share) is >= segment.CJK_MAJORITY (0.5), whatever
            the language identifier said: Chinese, Chinese with English terms, and (as the CJK
            fallback) Japanese/Korean, for which no table of our own exists;
  en        English, and documents the language step has not seen (no metadata["language"]), so a
            pipeline without a language step behaves as the English one always did;
  code      code files and documents that are mostly code (segment.is_code: a source-code suffix on the
            id/path/URL, or code_share >= 0.5, cached on the document), whether or not a language
            step has run yet, and whatever the language step labelled "code": the prose rules do not
            apply to them and they pass the word rules untouched. The steps before `language`
            (characters, punctuation) ask the same question, so code is never judged as prose there;
  default   the documented fallback for every other identified language (fr, de, ...): the English
            numbers (they are the Gopher/C4 papers' own, stated for web text in general) but no stop-word
            rule, since stop words are language-specific and ours are English and Chinese only.

Sources. English: the Gopher paper (Rae et al. 2021, Appendix A) and FineWeb (Penedo et al. 2024) as
already used in rules.py. Chinese: FineWeb-2's per-language adaptation of the same filters
(huggingface/fineweb-2, configs/cmn_Hani.yml, thresholds tuned per language from the distribution of
each statistic; fineweb-2-pipeline.py runs GopherRepetition, FineWebQuality and GopherQuality with
them, min_stop_words 2, and does not apply the C4 filters to languages other than English), with
words from jieba as there. Where FineWeb-2 has no number (C4's Chinese sentence count, punctuation
density), the comment says what we chose and why.
"""

from __future__ import annotations

from puyu.data.segment import is_code, segmented

# Gopher quality (rules.GopherQuality)
GOPHER_QUALITY = {
    "en": {  # Rae et al. 2021, Appendix A.1.1
        "min_words": 50, "max_words": 100_000, "min_mean_word_length": 3.0, "max_mean_word_length": 10.0,
        "min_alpha_words": 0.8, "min_stop_words": 2,
        "stop_words": ("the", "be", "to", "of", "and", "that", "have", "with"),
    },
    "zh": {  # FineWeb-2 cmn_Hani.yml: avg word length [1, 5] (jieba words), max_non_alpha_words_ratio
        # 0.735 (datatrove applies it as the minimum share of words with a letter; we take the share over
        # tokens with a letter or digit, leaving out punctuation marks and operators, which would drop
        # Chinese math: rules.GopherQuality), its stop-word list, min_stop_words 2 (fineweb-2-pipeline.py); word
        # count bounds are datatrove's defaults (50, 100,000), which FineWeb-2 left unchanged
        "min_words": 50, "max_words": 100_000, "min_mean_word_length": 1.0, "max_mean_word_length": 5.0,
        "min_alpha_words": 0.735, "min_stop_words": 2,
        "stop_words": ("的", "年", "在", "月", "是", "和", "日", "了", "於", "·", "為", "有", "被", "人", "中",
                       "为", "他", "與", "後", "也", "而", "由"),
    },
}
GOPHER_QUALITY["default"] = {**GOPHER_QUALITY["en"], "min_stop_words": 0}  # fallback: no stop-word rule

# Gopher repetition (rules.GopherRepetition); n-grams are over segment.words
GOPHER_REPETITION = {
    "en": {  # Rae et al. 2021, Table A1
        "max_dup_line_frac": 0.30, "max_dup_para_frac": 0.30, "max_dup_line_char_frac": 0.20,
        "max_dup_para_char_frac": 0.20, "top": {2: 0.20, 3: 0.18, 4: 0.16},
        "dup": {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
    },
    "zh": {  # FineWeb-2 cmn_Hani.yml: dup_line_frac 0.287, top_n_grams, dup_n_grams. FineWeb-2 switched
        # the paragraph and line-character rules off (trafilatura output has no paragraphs); our input
        # keeps paragraphs, so Gopher's 0.30/0.20 stay for those
        "max_dup_line_frac": 0.287, "max_dup_para_frac": 0.30, "max_dup_line_char_frac": 0.20,
        "max_dup_para_char_frac": 0.20, "top": {2: 0.256, 3: 0.201, 4: 0.171},
        "dup": {5: 0.198, 6: 0.182, 7: 0.167, 8: 0.154, 9: 0.14, 10: 0.127},
    },
}
GOPHER_REPETITION["default"] = GOPHER_REPETITION["en"]

# FineWeb quality numbers used by rules.Characters (newlines per word) and rules.Punctuation (share of
# lines ending in punctuation)
NEW_LINE_RATIO = {"en": 0.3,  # FineWeb (Penedo et al. 2024) new_line_ratio
                  "zh": 0.178}  # FineWeb-2 cmn_Hani.yml new_line_ratio (newlines per jieba word)
NEW_LINE_RATIO["default"] = NEW_LINE_RATIO["en"]
LINE_PUNCT = {"en": 0.12,  # FineWeb line_punct_thr
              "zh": 0.106}  # FineWeb-2 cmn_Hani.yml line_punct_thr
LINE_PUNCT["default"] = LINE_PUNCT["en"]

# C4 (rules.C4Rules). FineWeb-2 does not apply C4 to other languages; for CJK documents we keep C4's
# language-independent page rules (lorem ipsum, curly bracket, javascript/policy/cookie lines, also in
# Chinese) and its line rules with Chinese terminal punctuation and jieba word counts. C4's "at least
# 5 sentences" is English web text; a Chinese paragraph of 150-200 characters has 3-6 full stops (our
# choice: 3, so a single short clean paragraph passes while one-line fragments do not)
C4_MIN_SENTENCES = {"en": 5, "zh": 3}
C4_MIN_SENTENCES["default"] = C4_MIN_SENTENCES["en"]
C4_POLICY_ZH = ("隐私政策", "隱私政策", "使用条款", "使用條款", "用户协议", "用戶協議", "cookie")


def profile(doc) -> str:
    """'zh', 'en', 'code' or 'default' for `doc` (see the module docstring). Uses the cached
    segmentation, so calling it costs nothing after the first step that needs words."""
    lang = doc.metadata.get("language")
    # before the language step (no label yet) code is recognised here, by the same cached test the
    # language step uses; after it, its label stands (keep_code: false labels code as a language)
    if lang == "code" or (lang is None and is_code(doc)):
        return "code"
    if segmented(doc).script == "cjk":
        return "zh"
    if lang is None or lang in ("en", "zh"):  # zh text below the CJK share is mostly English words
        return "en"
    return "default"
