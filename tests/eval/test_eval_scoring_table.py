"""A fixed table of hand-written (model output, reference, verdict) triples for GSM8K and MATH scoring.
Every verdict was decided by hand from the meaning of the answer, not by running the scorer."""

from __future__ import annotations

import pytest

from puyu.eval import get_task

G = "Some working.\n#### {}"
GSM8K = [
    # (prediction, reference after ####, expected score)
    ("The answer is 70000.", "70000", 1),
    ("The answer is $70,000.", "70000", 1),
    ("So she earns 70,000.00 dollars. The answer is 70,000.00", "70000", 1),
    ("#### 70000", "70000", 1),
    ("The answer is -3.", "-3", 1),
    ("The answer is 3.", "-3", 0),
    ("The answer is \u2212 3.", "-3", 1),  # a Unicode minus, then a space: still a sign
    ("The answer is \u22123.", "-3", 1),
    ("12 \u2212 3 = 9", "9", 1),  # subtraction, typeset: the last number is 9 ...
    ("The total is 12 \u2212 3", "-3", 0),  # ... and "12 − 3" ends with 3, not -3
    ("The temperature drops to -3 degrees.", "3", 0),
    ("12 - 3 = 9", "9", 1),
    ("12-3=9. The answer is 9", "9", 1),
    ("He pays $1,234,567 in total.", "1234567", 1),
    ("The answer is 1,234,567", "1234567", 1),
    ("The answer is 18 dollars.", "18", 1),
    ("The answer is 18%.", "18", 1),
    ("The answer is 0.5", "0.5", 1),
    ("The answer is .5", "0.5", 1),
    ("The answer is 0.50", "0.5", 1),
    ("The answer is 1/2", "0.5", 0),  # a fraction is two numbers: 1 then 2 (GSM8K references are decimal)
    ("The answer is 5. Then 5 + 2 = 7 extra.", "5", 1),  # strict wins over the last number
    ("5 + 2 = 7", "7", 1),
    ("5 + 2 = 7", "5", 0),
    ("I cannot solve this.", "5", 0),
    ("", "5", 0),
    ("Final answer: 42", "42", 1),
    ("The final answer is 42.", "42", 1),
    ("the answer is: 42", "42", 1),
    ("#### 42\nThe answer is 41", "42", 0),  # the later strict marker counts
    ("The answer is 41\n#### 42", "42", 1),
    ("It costs €30.", "30", 1),
    ("That is 2.5 hours.", "2.5", 1),
    ("That is 2.5 hours.", "2", 0),
    ("There are 1,000 apples.", "1000", 1),
    ("There are 1000 apples.", "1,000", 1),
    ("The answer is -$5", "-5", 1),
    ("The answer is 10", "100", 0),
    ("The answer is 100", "10", 0),
    ("They need 3 buses (36/12).", "3", 0),  # the last number is 12
    # OpenCompass's zero-shot chat prompt asks for \boxed{}: a box is a stated answer, like "The answer is"
    ("So she earns \\boxed{70,000} dollars; 2 of them monthly.", "70000", 1),
    ("\\boxed{\\$18}", "18", 1),
    ("The answer is \\boxed{-3}.", "-3", 1),
    ("\\boxed{12} is wrong, so the answer is 13.", "13", 1),  # the later statement counts
]
M = "We compute. \\boxed{{{}}}"
MATH = [
    # (prediction, the reference's boxed answer, expected score)
    ("\\boxed{\\frac12}", "\\frac{1}{2}", 1),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac12", 1),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1),
    ("\\boxed{\\tfrac{3}{4}}", "\\frac34", 1),
    ("\\boxed{\\frac{2}{4}}", "\\frac12", 1),
    ("\\boxed{\\frac13}", "0.33", 0),
    ("\\boxed{(1,2]}", "(1,2]", 1),
    ("\\boxed{[1,2]}", "(1,2]", 0),
    ("\\boxed{(-\\infty, 3)}", "(-\\infty,3)", 1),
    ("\\boxed{\\{1,2,3\\}}", "\\{3,2,1\\}", 1),
    ("\\boxed{1, 2, 3}", "3, 2, 1", 1),
    ("\\boxed{3 \\pm \\sqrt{2}}", "3+\\sqrt2, 3-\\sqrt2", 1),
    ("\\boxed{3+\\sqrt{2}}", "3\\pm\\sqrt{2}", 0),
    ("\\boxed{30^\\circ}", "30", 1),
    ("\\boxed{30}", "30^\\circ", 1),
    ("\\boxed{45^{\\circ}}", "45", 1),
    ("\\boxed{50\\%}", "50", 1),
    ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", 1),
    ("\\boxed{\\text{(C)}}", "\\text{(C)}", 1),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", 1),
    ("\\boxed{2\\sqrt2}", "2\\sqrt{2}", 1),
    ("\\boxed{\\sqrt{2}}", "2\\sqrt{2}", 0),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", 1),
    ("\\boxed{x^2+1}", "(x+1)^2", 0),
    ("\\boxed{10}", "10", 1),
    ("\\boxed{10.0}", "10", 1),
    ("\\boxed{11}", "10", 0),
    ("\\boxed{-5}", "5", 0),
    ("\\boxed{1{,}000}", "1000", 1),
    ("\\boxed{\\pi}", "\\pi", 1),
    ("\\boxed{2\\pi}", "\\pi", 0),
    ("\\boxed{\\frac{\\pi}{2}}", "\\frac{\\pi}2", 1),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", 1),
    ("\\boxed{(3, 4)}", "(3,4)", 1),
    ("\\boxed{(4, 3)}", "(3,4)", 0),
    ("The answer is \\boxed{5} and not \\boxed{6}.", "6", 1),  # the last box counts
    ("The answer is \\boxed{5} and not \\boxed{6}.", "5", 0),
    ("\\fbox{7}", "7", 1),
    ("so the result is \\boxed 7.", "7", 1),
    ("The answer is $\\frac{1}{2}$.", "\\frac12", 1),  # no box: the text after "The answer is"
    ("I think it is 5.", "5", 0),  # no box and no "The answer is": not extracted
    ("\\boxed{\\frac{1}{2}", "\\frac12", 0),  # unbalanced braces: no answer
    ("\\boxed{x = 5}", "5", 1),
    ("\\boxed{y=2x+3}", "y=2x+3", 1),
    ("\\boxed{\\$18.90}", "18.90", 1),
    ("\\boxed{5\\text{ cm}}", "5", 1),
    ("\\boxed{5\\text{ inches}^2}", "5", 1),
    ("\\boxed{\\infty}", "\\infty", 1),
    ("\\boxed{10.}", "10", 1),  # a sentence's period inside the box
    ("The answer is \\boxed{10.}.", "10", 1),
    ("\\boxed{10}", "10.", 1),
    ("\\boxed{1, 2, \\ldots}", "1, 2, \\ldots", 1),
    # math-verify does not simplify e^{i pi} (SymPy's exp(I*pi) is not evaluated from the parsed form):
    # the right verdict is 1, the scorer says 0; kept as a known limitation (strict xfail).
    pytest.param("\\boxed{e^{i\\pi}}", "-1", 1, marks=pytest.mark.xfail(strict=True, reason="math-verify")),
]


@pytest.mark.parametrize("prediction,ref,expected", GSM8K)
def test_gsm8k_verdicts(prediction, ref, expected):
    record = {"question": "q", "answer": G.format(ref)}
    assert get_task("gsm8k").score(prediction, record) == expected


@pytest.mark.parametrize("prediction,ref,expected", MATH)
def test_math_verdicts(prediction, ref, expected):
    record = {"problem": "p", "solution": M.format(ref)}
    assert get_task("math").score(prediction, record) == expected


def test_table_is_large_enough():
    assert len(GSM8K) + len(MATH) >= 60 and min(len(GSM8K), len(MATH)) >= 30


@pytest.mark.parametrize("task,record", [("gsm8k", {"question": "q", "answer": G.format("5")}),
                                         ("math", {"problem": "p", "solution": M.format("5")}),
                                         ("arithmetic", {"question": "2+3", "answer": 5})])
def test_a_missing_prediction_scores_zero(task, record):
    assert get_task(task).score(None, record) == 0.0


@pytest.mark.parametrize("task,record,field", [("gsm8k", {"question": "q"}, "'answer'"),
                                               ("math", {"problem": "p"}, "'solution'"),
                                               ("arithmetic", {"question": "2+3"}, "answer")])
def test_a_record_without_its_reference_names_the_field(task, record, field):
    from puyu.eval.task import EvalError

    with pytest.raises(EvalError, match=field):
        get_task(task).score("The answer is 5", record)
