"""`puyu eval run` refuses bad runs before anything generates, in one line: a later task's settings that
differ from its folder's earlier predictions (naming the field), a report path that is a folder, an --out
below a file, a bare --data for tasks that read none, a --data TASK= whose task does not exist, --rescore
with nothing to rescore or with --fresh, and a malformed --api-base. The endpoint is a real HTTP server on
a loopback port; a second one answers every completion with a context-length 400 that does not state the
prompt's length, which must stop the run instead of scoring samples 0 as "longer than the context"."""

from __future__ import annotations

import json
import threading
from http.server import HTTPServer

import pytest
from serving_fixtures import JSONHandler

from puyu.cli import main


class _Endpoint(JSONHandler):
    refuse = False

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "m", "object": "model", "max_model_len": 4096}]})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).posts.append(req)
        if self.refuse:
            return self._send(400, {"code": "context_length_exceeded", "message": "input too long"})
        if self.path.endswith("/chat/completions"):
            return self._send(200, {"choices": [{"message": {"role": "assistant", "content": "#### 5"},
                                                 "finish_reason": "stop"}], "usage": {}})
        return self._send(200, {"choices": [{"text": "5", "finish_reason": "stop"}], "usage": {}})



def _serve(handler):
    handler.posts = []
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/v1"


@pytest.fixture
def endpoint():
    server, url = _serve(_Endpoint)
    yield url
    server.shutdown()


class _Refusing(_Endpoint):
    refuse = True


@pytest.fixture
def refusing():
    server, url = _serve(_Refusing)
    yield url
    server.shutdown()


def _gsm(tmp_path):
    p = tmp_path / "gsm.jsonl"
    p.write_text("".join(json.dumps({"question": f"What is {i} plus 3?", "answer": f"#### {i + 3}"}) + "\n"
                         for i in range(2)))
    return p


def _err(capsys):
    return capsys.readouterr().err


def test_a_later_tasks_settings_mismatch_stops_before_the_first_generates(endpoint, tmp_path, capsys):
    gsm, out = _gsm(tmp_path), tmp_path / "o"
    base = ["eval", "run", "--data", str(gsm), "--api-base", endpoint, "--limit", "2", "--no-progress",
            "--out", str(out)]
    assert main([*base[:2], "gsm8k", *base[2:], "--max-new-tokens", "8"]) == 0
    _Endpoint.posts.clear()
    assert main([*base[:2], "arithmetic", "gsm8k", *base[2:], "--max-new-tokens", "16"]) == 1
    err = _err(capsys)
    assert "generation.max_new_tokens (8 -> 16)" in err and "report of the finished" not in err
    assert _Endpoint.posts == [] and not (out / "arithmetic").exists()


def test_unstated_context_length_400_stops_the_run(refusing, tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["eval", "run", "gsm8k", "--data", str(_gsm(tmp_path)), "--api-base", refusing, "--no-progress",
               "--out", str(out)])
    err = _err(capsys)
    assert rc == 1 and "input too long" in err and "Traceback" not in err
    assert "does not state the context" in err and '{"code"' not in err
    assert not (out / "gsm8k" / "predictions.jsonl").exists()


def test_report_path_that_is_a_folder_is_refused_before_generating(endpoint, tmp_path, capsys):
    out = tmp_path / "o"
    (out / "report.md").mkdir(parents=True)
    assert main(["eval", "run", "arithmetic", "--api-base", endpoint, "--limit", "2", "--no-progress",
                 "--out", str(out)]) == 1
    assert "report.md is a folder" in _err(capsys) and _Endpoint.posts == []


def test_out_below_a_file_names_the_file(endpoint, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["eval", "run", "arithmetic", "--api-base", endpoint, "--limit", "2", "--no-progress",
                 "--out", str(tmp_path / "afile" / "sub")]) == 1
    assert f"{tmp_path / 'afile'} is a file" in _err(capsys)


def test_malformed_ipv6_api_base_is_one_line(tmp_path, capsys):
    assert main(["eval", "run", "arithmetic", "--api-base", "http://[::1", "--out", str(tmp_path / "o")]) == 1
    err = _err(capsys)
    assert "is not an http:// or https:// URL" in err and "Traceback" not in err


def test_bare_data_for_tasks_that_read_none_is_refused(endpoint, tmp_path, capsys):
    assert main(["eval", "run", "arithmetic", "--data", str(_gsm(tmp_path)), "--api-base", endpoint,
                 "--out", str(tmp_path / "o")]) == 1
    assert "arithmetic reads no dataset" in _err(capsys) and _Endpoint.posts == []


def test_data_for_an_unknown_task_says_so(endpoint, tmp_path, capsys):
    assert main(["eval", "run", "gsm8k", "--data", f"gsm8x={_gsm(tmp_path)}", "--api-base", endpoint,
                 "--out", str(tmp_path / "o")]) == 1
    assert "gsm8x is not a task" in _err(capsys)


def test_rescore_with_nothing_to_rescore_or_with_fresh(tmp_path, capsys):
    out = tmp_path / "empty"
    assert main(["eval", "run", "arithmetic", "--rescore", "--out", str(out)]) == 1
    assert "nothing to rescore" in _err(capsys) and not (out / "arithmetic").exists()
    assert main(["eval", "run", "arithmetic", "--rescore", "--fresh", "--out", str(out)]) == 1
    assert "--fresh" in _err(capsys)


def test_api_temperature_above_two_is_refused_up_front(endpoint, tmp_path, capsys):
    assert main(["eval", "run", "arithmetic", "--api-base", endpoint, "--temperature", "50",
                 "--out", str(tmp_path / "o")]) == 1
    assert "accepts 0 to 2" in _err(capsys) and _Endpoint.posts == []


def test_perplexity_data_that_does_not_exist_says_so(tmp_path, capsys):
    assert main(["eval", "run", "perplexity", "--data", f"perplexity={tmp_path / 'nonexist'}", "--rescore",
                 "--out", str(tmp_path / "o")]) == 1
    assert "nonexist does not exist" in _err(capsys)


def test_report_of_predictions_without_run_json_says_so(tmp_path, capsys):
    d = tmp_path / "o" / "arithmetic"
    d.mkdir(parents=True)
    (d / "predictions.jsonl").write_text(json.dumps({"id": "a", "repeat": 0, "output": "5", "score": 1.0}) + "\n")
    assert main(["eval", "report", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    assert "no run.json" in md and "None" not in md
