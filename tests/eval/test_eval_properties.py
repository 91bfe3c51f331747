"""Hypothesis property tests: numbers written any GSM8K way parse to their value; the needle is placed
intact, after a sentence end (or at 0), at the specified index, and nothing is lost."""

from __future__ import annotations

import math
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from puyu.eval.needle import place
from puyu.tasks.numbers import last_number, parse_number, strict_answer


def _grouped(n: int) -> str:
    return f"{n:,}"


@st.composite
def written_numbers(draw):
    """(text of a number as a person might write it, its value)."""
    n = draw(st.integers(0, 10**9))
    cents = draw(st.one_of(st.none(), st.integers(0, 99)))
    body = _grouped(n) if draw(st.booleans()) else str(n)
    value = Fraction(n)
    if cents is not None:
        body += f".{cents:02d}"
        value += Fraction(cents, 100)
    if draw(st.booleans()):
        body = "$" + body
    if draw(st.booleans()):
        body += "%"
    if draw(st.booleans()) and value != 0:
        body = "-" + body
        value = -value
    return body, value


words = st.text(alphabet="abcdefghij ", max_size=20)


@given(written_numbers(), words, st.sampled_from(["", ".", "!", " dollars.", "\n"]))
@settings(max_examples=300, deadline=None)
def test_number_in_text_parses_to_its_value(num, prefix, suffix):
    text, value = num
    sentence = f"{prefix} {text}{suffix}"
    assert last_number(sentence) == value
    assert parse_number(text) == value
    assert strict_answer(f"{prefix}\nThe answer is {text}{suffix}") == value
    assert strict_answer(f"work {prefix}\n#### {text}") == value
    assert strict_answer(f"{prefix} so \\boxed{{{text}}}{suffix}") == value


@given(st.integers(0, 10**6), st.integers(0, 10**6))
@settings(max_examples=200, deadline=None)
def test_subtraction_is_not_a_negative_number(a, b):
    assert last_number(f"{a}-{b}") == b
    assert last_number(f"x = -{b}") == -b


END = 0  # the sentence-end token in these tests
@given(st.lists(st.integers(0, 5), max_size=300), st.lists(st.integers(6, 9), min_size=1, max_size=20),
       st.one_of(st.integers(0, 100), st.floats(0, 100, allow_nan=False)))
@settings(max_examples=400, deadline=None)
def test_needle_placement(haystack, needle, depth):
    ids, start = place(haystack, needle, depth, {END})
    n = len(haystack)
    assert len(ids) == n + len(needle)
    assert ids[start:start + len(needle)] == needle  # intact
    assert ids[:start] + ids[start + len(needle):] == haystack  # nothing lost or reordered
    if depth == 100:
        assert start == n
    else:
        target = math.floor(Fraction(n) * Fraction(depth) / 100)
        assert start <= target
        assert start == 0 or haystack[start - 1] == END  # right after a sentence end
        assert END not in haystack[start:target]  # the nearest preceding one
