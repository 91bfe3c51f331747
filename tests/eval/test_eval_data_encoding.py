"""Dataset files: a UTF-8 byte-order mark is accepted (Windows editors write one), and a file that is not
UTF-8 is refused naming its line, not a byte position."""

from __future__ import annotations

import pytest

from puyu.eval import Context, get_task
from puyu.eval.task import EvalError


def test_a_bom_is_accepted_and_bad_bytes_name_the_line(tmp_path):
    f = tmp_path / "test.jsonl"
    rows = '{"question": "q1", "answer": "x\\n#### 5"}\n{"question": "caf\u00e9", "answer": "#### 6"}\n'
    f.write_bytes(b"\xef\xbb\xbf" + rows.encode("utf-8"))
    got = get_task("gsm8k").samples(Context(data=str(f)))
    assert [s.record["question"] for s in got] == ["q1", "caf\u00e9"]
    j = tmp_path / "m.json"
    j.write_bytes(b"\xef\xbb\xbf" + b'[{"problem": "p", "solution": "\\\\boxed{1}"}]')
    assert len(get_task("math").samples(Context(data=str(j)))) == 1
    f.write_bytes(rows.encode("latin-1"))  # the e-acute of line 2 as one byte 0xe9
    with pytest.raises(EvalError, match=r"test.jsonl:2: not UTF-8 \(byte 0xe9\)"):
        get_task("gsm8k").samples(Context(data=str(f)))
