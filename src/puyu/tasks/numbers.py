"""Numbers in model output, compared by value (GSM8K, arithmetic).

`parse_number("$70,000.")`, `parse_number("70000")` and `parse_number("70,000.00")` are all
Fraction(70000); "-3" is -3, never 3. Rules (the ones GSM8K answers need, written from the data):
- thousands separators: commas between groups of exactly three digits ("1,234,567"); "1,23" is two numbers;
- currency signs $ € £ ¥ before the digits (after or before a minus: "-$5" and "$-5" are -5);
- a percent sign after the number is dropped ("25%" is 25: GSM8K references are written without it);
- a trailing period or comma is punctuation, not a decimal point ("70000." is 70000);
- a minus sign counts only where it cannot be subtraction: not right after a letter, digit or closing
  bracket ("12-3" ends with the number 3; "x = -3" with -3). The Unicode minus (U+2212) is a minus, also
  when a space follows it ("\u2212 3" is -3, as typeset text writes it; but "12 \u2212 3" ends with 3).
Values are exact `fractions.Fraction`s, so "0.1" + "0.2" style rounding never decides a verdict.
"""

from __future__ import annotations

import re
from decimal import Decimal, localcontext
from fractions import Fraction

NUMBER = re.compile(r"""
    (?P<sign>(?<![\w)\]}])[-\u2212+]         # a sign, unless it follows a word or a closing bracket
      |(?<![\w)\]}])(?<![\d)\]}]\s)\u2212\s)?  # a Unicode minus, a space, digits ("\u2212 3"), not after "12 "
    (?:\s?(?P<cur>[$\u20ac\u00a3\u00a5])\s?(?P<sign2>[-\u2212])?)?
    (?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)
    (?![\d])
    """, re.X)

# GSM8K's reference and the strict forms of a model's answer.
HASHES = re.compile(r"####\s*(?P<rest>[^\n]*)")
ANSWER_IS = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*:?\s*(?P<rest>[^\n]*)", re.I)
BOXED = re.compile(r"\\boxed\s*\{(?P<rest>[^\n]*)")  # what OpenCompass's zero-shot chat prompt asks for


def _value(m: re.Match) -> Fraction:
    v = Fraction(m.group("num").replace(",", ""))
    negative = (m.group("sign") or "").strip() in ("-", "\u2212") or bool(m.group("sign2"))
    return -v if negative else v


def numbers(text: str) -> list[tuple[Fraction, str]]:
    """Every number in `text`, left to right, as (value, matched text)."""
    return [(_value(m), m.group(0).strip()) for m in NUMBER.finditer(text)]


def parse_number(text: str) -> Fraction | None:
    """The value of the first number in `text` (None if it has none)."""
    m = NUMBER.search(text)
    return _value(m) if m else None


def last_number(text: str) -> Fraction | None:
    """The value of the last number in `text` (the flexible extraction)."""
    found = numbers(text)
    return found[-1][0] if found else None


def strict_answer(text: str) -> Fraction | None:
    """The number after the last `#### `, "The answer is" or `\\boxed{` in `text` (None if none is there
    or no number follows it on that line)."""
    best = None
    for pattern in (HASHES, ANSWER_IS, BOXED):
        for m in pattern.finditer(text):
            v = parse_number(m.group("rest"))
            if v is not None and (best is None or m.start() > best[0]):
                best = (m.start(), v)
    return best[1] if best else None


def format_number(v: Fraction | None) -> str | None:
    """A canonical string of a value ("70000", "-3", "2.5", "1/3") for predictions.jsonl and maj@k."""
    if v is None:
        return None
    if v.denominator == 1:
        return str(v.numerator)
    d = v.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:  # a terminating decimal
        with localcontext() as ctx:
            ctx.prec = 200
            text = format(Decimal(v.numerator) / Decimal(v.denominator), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(v)
