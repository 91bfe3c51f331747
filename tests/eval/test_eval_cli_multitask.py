"""A multi-task `puyu eval run`: every task's data is checked before anything generates, the report is
written for the tasks that finished when a later one fails, and `--data TASK=PATH` gives each task its
own dataset (a bare `--data PATH` still serves every task that needs data). The endpoint is a real HTTP
server on a loopback port that answers completions and fails chat requests whose prompt says FAILME."""

from __future__ import annotations

import json
import threading
from http.server import HTTPServer

import pytest
from serving_fixtures import JSONHandler

from puyu.cli import main
from puyu.eval import get_task
from puyu.eval.task import EvalError


class _Endpoint(JSONHandler):
    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.endswith("/chat/completions"):
            if "FAILME" in json.dumps(req["messages"]):
                return self._send(400, {"error": {"message": "bad request", "type": "invalid_request_error"}})
            return self._send(200, {"choices": [{"message": {"role": "assistant", "content": "#### 5"},
                                                 "finish_reason": "stop"}], "usage": {}})
        return self._send(200, {"choices": [{"text": "5", "finish_reason": "stop"}], "usage": {}})



@pytest.fixture
def endpoint():
    server = HTTPServer(("127.0.0.1", 0), _Endpoint)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_data_of_a_later_task_stops_before_anything_generates(endpoint, tmp_path, capsys):
    bad = _jsonl(tmp_path / "bad.jsonl", [{"problem": "x", "solution": "\\boxed{1}"}])  # no question/answer
    rc = main(["eval", "run", "arithmetic", "gsm8k", "--data", str(bad), "--api-base", endpoint,
               "--option", "n=2", "--option", "sizes=100", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{bad}:1" in err and "'question'" in err, err
    assert not (tmp_path / "o" / "arithmetic").exists()  # nothing generated


def test_per_task_data_and_a_report_for_the_tasks_that_finished(endpoint, tmp_path, capsys):
    g = _jsonl(tmp_path / "g.jsonl", [{"question": "2+3?", "answer": "#### 5"}, {"question": "1+4?", "answer": "#### 5"}])
    m = _jsonl(tmp_path / "m.jsonl", [{"problem": "FAILME", "solution": "\\boxed{5}"}])
    out = tmp_path / "o"
    rc = main(["eval", "run", "arithmetic", "gsm8k", "math", "--data", f"gsm8k={g}", "--data", f"math={m}",
               "--api-base", endpoint, "--option", "n=2", "--option", "sizes=100", "--out", str(out),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "HTTP 400" in err, err
    assert json.loads((out / "gsm8k" / "run.json").read_text())["data"] == str(g)
    report = json.loads((out / "report.json").read_text())
    assert {t["folder"]: t["n_samples"] for t in report["tasks"]} == {"arithmetic": 2, "gsm8k": 2}
    assert next(t for t in report["tasks"] if t["folder"] == "gsm8k")["pass@1"]["mean"] == 1.0
    md = (out / "report.md").read_text()
    assert "| arithmetic |" in md and "| gsm8k |" in md


def test_a_bare_data_path_serves_the_tasks_that_need_data():
    from puyu.eval.cli import _data_paths

    gsm, math, tools, arith = (get_task(n) for n in ("gsm8k", "math", "tools", "arithmetic"))
    assert _data_paths(["a.jsonl"], [gsm, tools, arith]) == {"gsm8k": "a.jsonl", "tools": None, "arithmetic": None}
    assert _data_paths(["t.jsonl"], [tools, arith]) == {"tools": "t.jsonl", "arithmetic": None}
    assert _data_paths(["a.jsonl", "math=b=c.jsonl"], [gsm, math]) == {"gsm8k": "a.jsonl", "math": "b=c.jsonl"}
    assert _data_paths(["dir/x=y.jsonl"], [gsm]) == {"gsm8k": "dir/x=y.jsonl"}  # a path holding "="
    for items, msg in [(["math=m.jsonl"], "math is not one of the tasks of this run"),
                       (["a.jsonl", "b.jsonl"], "2 paths without a task"),
                       (["arithmetic=x.jsonl"], "arithmetic reads no dataset"),
                       (["gsm8k=a", "gsm8k=b"], "given twice")]:
        with pytest.raises(EvalError, match=msg):
            _data_paths(items, [gsm, arith])
