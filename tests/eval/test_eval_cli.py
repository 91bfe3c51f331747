"""`puyu eval` end to end: the local engine (resume after a crash, rescore), the API backend against a
real `puyu serve` (uvicorn on a loopback port) with the tool model of the server tests, auth failures,
and retries on 5xx from a real HTTP server that fails twice first."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import serving_fixtures as sf

from puyu.cli import main
from puyu.eval import Sample
from puyu.eval.backends import APIBackend
from puyu.eval.task import EvalError


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    from puyu.model.checkpoint import save_pretrained
    from puyu.model.config import get_preset
    from puyu.model.transformer import InternLM2ForCausalLM

    root = tmp_path_factory.mktemp("rand")
    tok = sf.make_tokenizer(root / "tok")
    cfg = get_preset("nano-tiny", vocab_size=tok.vocab_size, max_position_embeddings=256)
    save_pretrained(InternLM2ForCausalLM(cfg).reset_parameters(seed=0), root / "model", tokenizer=tok)
    return root / "model"


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_local_run_resumes_after_a_crash_and_rescores(random_model, tmp_path):
    out = tmp_path / "run"
    args = ["eval", "run", "arithmetic", "--model", str(random_model), "--option", "n=4", "--out", str(out),
            "--no-progress"]
    assert main(args) == 0
    pred = out / "arithmetic" / "predictions.jsonl"
    rows = _rows(pred)
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    assert {"prompt", "output", "extracted", "score", "completion_tokens", "seconds"} <= set(rows[0])
    run = json.loads((out / "arithmetic" / "run.json").read_text())
    assert run["generation"]["temperature"] == 0.0 and run["backend"]["model"] == str(random_model)
    # a crash: five lines survived, the sixth was torn mid-write
    lines = pred.read_text().splitlines()
    pred.write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])
    assert main(args) == 0
    rows2 = _rows(pred)  # the torn line was cut, the seven missing samples generated again
    assert len(rows2) == 12
    assert sorted(r["id"] for r in rows2) == sorted(r["id"] for r in rows)
    # greedy and seeded: the regenerated outputs equal the first run's
    by_id = {r["id"]: r["output"] for r in rows}
    assert all(by_id[r["id"]] == r["output"] for r in rows2)
    report = json.loads((out / "report.json").read_text())
    assert report["tasks"][0]["n_samples"] == 12
    assert main(["eval", "run", "arithmetic", "--rescore", "--option", "n=4", "--out", str(out),
                 "--no-progress"]) == 0


def test_greedy_repeats_are_refused(random_model, tmp_path, capsys):
    rc = main(["eval", "run", "arithmetic", "--model", str(random_model), "--repeats", "3", "--temperature", "0",
               "--out", str(tmp_path), "--no-progress"])
    assert rc == 1 and "identical answers" in capsys.readouterr().err


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from puyu.engine.scheduler import Engine
    from puyu.model.checkpoint import load_model
    from puyu.serve.app import create_app

    tok, model_dir = sf.tool_model(tmp_path_factory)
    engine = Engine(load_model(model_dir), tok, max_batch_size=8)
    srv = sf.ServerThread(create_app(engine, tok, "puyu-test"))
    keyed = sf.ServerThread(create_app(engine, tok, "puyu-test", api_key="right-key"))
    yield tok, model_dir, srv, keyed
    srv.stop()
    keyed.stop()
    engine.close()


def _tool_data(path):
    rows = [{"messages": [{"role": "user", "content": sf.QUESTION}], "tools": sf.TOOLS,
             "expected": [{"name": "get_weather", "arguments": sf.CALL_ARGS}]},
            {"messages": [{"role": "user", "content": sf.QUESTION}], "tools": sf.TOOLS,
             "expected": [{"name": "get_weather", "arguments": {"city": "London"}}]},  # the model says Paris
            {"messages": [{"role": "user", "content": sf.GREETING}], "tools": sf.TOOLS, "expected": []}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_tools_through_local_engine_and_puyu_serve_agree(served, tmp_path):
    tok, model_dir, srv, _ = served
    data = _tool_data(tmp_path / "tools.jsonl")
    for name, src in [("local", ["--model", str(model_dir)]), ("api", ["--api-base", srv.url])]:
        out = tmp_path / name
        assert main(["eval", "run", "tools", "--data", str(data), "--out", str(out), "--no-progress", *src]) == 0
        rows = sorted(_rows(out / "tools" / "predictions.jsonl"), key=lambda r: r["id"])
        # the tool model calls get_weather(city=Paris): right for row 0, wrong argument for row 1
        assert [r["score"] for r in rows] == [1.0, 0.0, 1.0], (name, [r["output"] for r in rows])
        assert rows[1]["details"] == {"called": True, "valid_json": True, "name": True, "args": False}


def test_api_auth_failure_is_one_clear_line(served, tmp_path, capsys):
    _, _, _, keyed = served
    rc = main(["eval", "run", "tools", "--api-base", keyed.url, "--api-key", "wrong", "--limit", "2",
               "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "authentication failed (HTTP 401)" in err and "--api-key" in err


class _Flaky(BaseHTTPRequestHandler):
    fails = {"n": 0}

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["content-length"]))
        if self.fails["n"] < 2:
            self.fails["n"] += 1
            self.send_response(503 if self.fails["n"] == 1 else 429)
            self.send_header("retry-after", "0")
            self.end_headers()
            return
        body = json.dumps({"choices": [{"text": "46", "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_api_retries_5xx_and_429_then_gives_up_naming_the_sample():
    server = HTTPServer(("127.0.0.1", 0), _Flaky)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        api = APIBackend(url, model_name="m", retries=3, backoff=0.01)
        got = []
        s = Sample(id="a", record={"answer": "46"}, prompt="12+34=")
        api.generate([(s, 0)], {"max_new_tokens": 4, "temperature": 0.0, "top_p": 1.0}, lambda i, r: got.append(r))
        assert got[0]["output"] == "46" and _Flaky.fails["n"] == 2
        _Flaky.fails["n"] = -10  # ten failures in a row: more than the retries
        api2 = APIBackend(url, model_name="m", retries=2, backoff=0.01)
        with pytest.raises(EvalError, match=r"sample a: .*failed after 3 attempts \(HTTP (503|429)"):
            api2.generate([(s, 0)], {"max_new_tokens": 4, "temperature": 0.0, "top_p": 1.0}, lambda i, r: None)
    finally:
        server.shutdown()


def test_gsm8k_math_and_perplexity_through_the_local_engine(random_model, tmp_path):
    import math

    import torch

    from puyu.eval.perplexity import window_spans
    from puyu.model.checkpoint import load_model
    from puyu.model.tokenizer import load_tokenizer

    g = tmp_path / "gsm8k.jsonl"
    g.write_text("".join(json.dumps({"question": f"What is {i}+1?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"}) + "\n"
                         for i in range(3)))
    m = tmp_path / "math.jsonl"
    m.write_text(json.dumps({"problem": "1/2?", "solution": "$\\boxed{\\frac12}$", "level": "Level 1",
                             "type": "Algebra"}) + "\n")
    text = tmp_path / "texts"
    text.mkdir()
    body = "the weather in paris is sunny today and the model can help you. " * 12
    (text / "a.txt").write_text(body)
    out = tmp_path / "run"
    for task, data, opts in [("gsm8k", g, []), ("math", m, []),
                             ("perplexity", text, ["--option", "window=64", "--option", "stride=32"])]:
        assert main(["eval", "run", task, "--model", str(random_model), "--data", str(data), "--out", str(out),
                     "--no-progress", "--max-new-tokens", "8", *opts]) == 0
    rep = json.loads((out / "report.json").read_text())
    by = {t["folder"]: t for t in rep["tasks"]}
    assert set(by["gsm8k"]["details"]) == {"strict", "flexible", "has_strict"}
    assert by["math"]["by"]["level"]["Level 1"]["n"] == 1
    # perplexity against an independent sliding-window computation with the model's plain forward
    model, tok = load_model(random_model).eval(), load_tokenizer(random_model)
    ids = [tok.bos_id] + tok.encode(body)
    nll = 0.0
    with torch.no_grad():
        for begin, end, first in window_spans(len(ids), 64, 32):
            logits = model(torch.tensor([ids[begin:end]]))[0].float()  # [T, V]
            lp = torch.log_softmax(logits, -1)
            nll -= sum(float(lp[p - 1 - begin, ids[p]]) for p in range(first, end))
    ppl = by["perplexity"]["perplexity"]
    assert ppl["tokens"] == len(ids) - 1
    assert ppl["perplexity"] == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-4)
    assert ppl["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(body.encode()), rel=1e-4)
    # perplexity is not an accuracy: no pass@1/Wilson figure, no "failures", not a bar in accuracy.png
    assert by["perplexity"]["pass@1"] is None and by["perplexity"]["failures"] == []
    md = (out / "report.md").read_text()
    row = next(x for x in md.splitlines() if x.startswith("| perplexity"))
    assert "bits/byte" in row and "Failures" not in md.split("## perplexity")[1]


def test_perplexity_refuses_non_utf8_files_and_api_backends(random_model, tmp_path, capsys):
    text = tmp_path / "texts"
    text.mkdir()
    (text / "a.txt").write_bytes("caf\u00e9 ok. ".encode("latin-1") * 5)
    rc = main(["eval", "run", "perplexity", "--model", str(random_model), "--data", str(text), "--out",
               str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "a.txt" in err and "not UTF-8" in err
    rc = main(["eval", "run", "perplexity", "--api-base", "http://127.0.0.1:9", "--data", str(text), "--out",
               str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "perplexity runs on the local backend only" in err


@pytest.mark.parametrize("n,w,s", [(2, 2, 1), (10, 4, 2), (100, 64, 32), (65, 64, 64), (7, 64, 32)])
def test_sliding_windows_score_every_position_once(n, w, s):
    from puyu.eval.perplexity import window_spans

    scored = [p for b, e, f in window_spans(n, w, s) for p in range(f, e)]
    assert scored == list(range(1, n))
    assert all(e - b <= w and f > b for b, e, f in window_spans(n, w, s))


def test_tasks_listing_and_missing_backend(capsys, tmp_path):
    assert main(["eval", "tasks"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("arithmetic", "gsm8k", "math", "needle", "tools", "perplexity"))
    assert main(["eval", "run", "arithmetic", "--out", str(tmp_path)]) == 1
    assert "give --model PATH_OR_PRESET or --api-base URL" in capsys.readouterr().err
    assert main(["eval", "run", "gsm8k", "--model", "nano-tiny", "--out", str(tmp_path)]) == 1
    assert "--model nano-tiny: no tokenizer next to the weights" in capsys.readouterr().err


def test_repeats_report_pass_at_k_and_maj_at_k(random_model, tmp_path):
    out = tmp_path / "rep"
    assert main(["eval", "run", "arithmetic", "--model", str(random_model), "--option", "n=2", "--option",
                 "sizes=100", "--repeats", "3", "--out", str(out), "--no-progress"]) == 0
    rows = _rows(out / "arithmetic" / "predictions.jsonl")
    assert sorted((r["id"], r["repeat"]) for r in rows) == sorted((i, k) for i in {r["id"] for r in rows}
                                                                    for k in range(3))
    t = json.loads((out / "report.json").read_text())["tasks"][0]
    assert t["repeats"] == 3 and {"pass@3", "maj@3"} <= set(t)
    assert json.loads((out / "arithmetic" / "run.json").read_text())["generation"]["temperature"] == 0.7
    assert t["pass@3"]["mean"] >= t["pass@1"]["mean"]


def test_a_rerun_with_other_settings_refuses_to_mix_predictions(random_model, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["eval", "run", "arithmetic", "--model", str(random_model), "--option", "n=2", "--option",
            "sizes=100", "--out", str(out), "--no-progress"]
    assert main(base) == 0
    before = (out / "arithmetic" / "predictions.jsonl").read_text()
    capsys.readouterr()
    for extra, what in [(["--temperature", "0.5"], "generation"), (["--option", "style=chat"], "options"),
                        (["--seed", "3"], "seed"), (["--rope-scaling", "dynamic:2"], "backend.config")]:
        assert main(base + extra) == 1, extra
        err = capsys.readouterr().err
        assert what in err and "--fresh" in err and "new --out" in err, (extra, err)
        assert (out / "arithmetic" / "predictions.jsonl").read_text() == before  # nothing appended or relabelled
    import shutil

    other = shutil.copytree(random_model, tmp_path / "other-model")
    assert main([*base[:3], "--model", str(other), *base[5:]]) == 1
    assert "backend.model" in capsys.readouterr().err
    import os

    w = next(random_model.glob("*.safetensors"))  # the same path, retrained (newer weights)
    st = w.stat()
    os.utime(w, (st.st_atime, st.st_mtime + 100))
    try:
        assert main(base) == 1 and "backend.weights" in capsys.readouterr().err
    finally:
        os.utime(w, (st.st_atime, st.st_mtime))
    assert main(base) == 0  # the same run resumes (nothing to do)
    assert main(base + ["--temperature", "0.5", "--fresh"]) == 0
    run = json.loads((out / "arithmetic" / "run.json").read_text())
    assert run["generation"]["temperature"] == 0.5 and len(_rows(out / "arithmetic" / "predictions.jsonl")) == 2


def test_unknown_option_names_the_valid_ones(capsys, tmp_path):
    rc = main(["eval", "run", "gsm8k", "--model", "nano-tiny", "--option", "promt=fewshot", "--out", str(tmp_path),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "--option promt: no such option (gsm8k: prompt, fewshot_data, shots)" in err


class _Deny(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(401)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def test_empty_data_bad_limit_and_a_failed_run_leaves_no_folder(tmp_path, capsys):
    for name, body in [("empty.jsonl", ""), ("list.json", "[]")]:
        (tmp_path / name).write_text(body)
        rc = main(["eval", "run", "gsm8k", "--api-base", "http://127.0.0.1:9", "--model-name", "m", "--data",
                   str(tmp_path / name), "--out", str(tmp_path / "o"), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 1 and f"{name} has no samples" in err, err
    for lim in ("0", "-2"):
        rc = main(["eval", "run", "arithmetic", "--api-base", "http://127.0.0.1:9", "--model-name", "m",
                   "--limit", lim, "--out", str(tmp_path / "o"), "--no-progress"])
        assert rc == 1 and f"--limit must be at least 1, got {lim}" in capsys.readouterr().err
    server = HTTPServer(("127.0.0.1", 0), _Deny)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        rc = main(["eval", "run", "arithmetic", "--api-base", f"http://127.0.0.1:{server.server_port}",
                   "--model-name", "m", "--limit", "2", "--out", str(tmp_path / "o"), "--no-progress"])
    finally:
        server.shutdown()
    assert rc == 1 and "authentication failed" in capsys.readouterr().err
    assert not (tmp_path / "o" / "arithmetic").exists()
