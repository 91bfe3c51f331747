"""`puyu eval run` refuses bad command-line values at once with one `error:` line (no traceback, no
silent substitute, no retries): an output folder that is a file, --max-new-tokens below 1, a negative
temperature, a label that is not one folder name, an --api-base that is not an http(s) URL, arithmetic options
that are not positive integers."""

from __future__ import annotations

import time

import pytest

from puyu.cli import main

DEAD = ["--api-base", "http://127.0.0.1:9", "--model-name", "m", "--no-progress"]  # never reached


def _err(capsys, argv) -> str:
    assert main(["eval", "run", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_an_output_path_that_is_a_file_is_one_error_line(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert str(f) in _err(capsys, ["arithmetic", "--out", str(f), *DEAD])
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "arithmetic").write_text("x")
    err = _err(capsys, ["arithmetic", "--out", str(tmp_path / "o"), *DEAD])
    assert str(tmp_path / "o" / "arithmetic") in err and "is a file" in err


@pytest.mark.parametrize("argv, msg", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
    (["--max-new-tokens", "-3"], "--max-new-tokens must be at least 1, got -3"),
    (["--temperature", "-1", "--repeats", "2"], "--temperature must be at least 0"),
    (["--temperature", "-0.5"], "--temperature must be at least 0"),
    (["--label", "a/b"], "--label 'a/b': use letters"),
    (["--label", ".."], "--label '..': use letters"),
    (["--option", "n=abc"], "--option n='abc': expected a positive integer"),
    (["--option", "n=-1"], "--option n=-1: expected a positive integer"),
    (["--option", "sizes=0"], "--option sizes=0: expected a positive integer"),
    (["--option", "sizes="], "--option sizes='': expected a positive integer"),
    (["--option", "test_small=x"], "--option test_small='x': expected a positive integer"),
])
def test_bad_values_are_refused_not_replaced(tmp_path, capsys, argv, msg):
    err = _err(capsys, ["arithmetic", "--out", str(tmp_path / "o"), *DEAD, *argv])
    assert msg in err, err
    assert not (tmp_path / "o" / "arithmetic").exists() and not (tmp_path / "o" / "arithmetic@a").exists()


def test_an_api_base_that_is_not_a_url_fails_at_once(tmp_path, capsys):
    for url in ("notaurl", "ftp://127.0.0.1:9/v1"):
        t0 = time.perf_counter()
        err = _err(capsys, ["arithmetic", "--api-base", url, "--out", str(tmp_path), "--no-progress"])
        assert time.perf_counter() - t0 < 3 and "is not an http:// or https:// URL" in err, err
