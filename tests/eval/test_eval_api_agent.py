"""`puyu eval run arithmetic --interpreter --api-base URL` end to end against a real `puyu serve`: the agent
loop and the sandboxed interpreter run in the client, the server only generates each turn (through
`/v1/completions` with the rendered chat), and the predictions equal the local engine's.

The model is nano-tiny fine-tuned in a few seconds until greedy decoding writes, for each of the task's
own prompts, the interpreter action `print(a op b)`, and after the kernel's output, "The answer is N."
(so every step is a known token sequence and a broken link shows: no call, a call the agent cannot
parse, the kernel's output not reaching the second turn, or a server that reads the markers of the
rendered prompt as text). A second run samples at a high temperature with a seed, the API turns sent as
token ids: local and API must draw the same tokens (the repeat's seed reaches both, and the kernels'
cell numbers, shown in tracebacks, restart at In[1] for each sample), and the two repeats must differ."""

from __future__ import annotations

import json

import pytest
import serving_fixtures as sf

from puyu.cli import main

pytest.importorskip("jupyter_client")


def _rows(path):
    return sorted((json.loads(x) for x in path.read_text().splitlines() if x.strip()),
                  key=lambda r: (r["id"], r["repeat"]))


def _examples(tok, samples):
    """(prompt ids, target ids) for both agent turns of every sample, built as the agent builds them."""
    from puyu.model.chat_format import ACTION_END, ACTION_START, IM_END, INTERPRETER, encode_chat

    out = []
    for s in samples:
        q = s.record["question"]
        op = "+" if "+" in q else "-"
        a, b = q.split(op)
        code, result = f"print({a} {op} {b})", str(int(a) + int(b) if op == "+" else int(a) - int(b))
        action = f"{ACTION_START}{INTERPRETER}\n```python\n{code}\n```{ACTION_END}"
        after = s.messages + [{"role": "assistant", "content": "", "code": code},
                              {"role": "environment", "name": INTERPRETER, "content": result}]
        out.append((encode_chat(tok, s.messages, None, True), tok.encode(action, allow_special=True)))
        out.append((encode_chat(tok, after, None, True), tok.encode(f"The answer is {result}.{IM_END}",
                                                                      allow_special=True)))
    return out


@pytest.mark.slow  # ~35 s on the shared 2-core machine: six eval runs, each starting two kernels
def test_interpreter_through_puyu_serve_matches_the_local_engine(tmp_path_factory, tmp_path, capsys):
    from puyu.engine.scheduler import Engine
    from puyu.eval import Context, get_task
    from puyu.model.checkpoint import load_model
    from puyu.serve.app import create_app

    root = tmp_path_factory.mktemp("api_agent")
    tok = sf.make_tokenizer(root / "tok")
    options = ["--option", "n=3", "--option", "sizes=100"]
    samples = get_task("arithmetic").samples(Context(seed=0, options={"n": "3", "sizes": "100"}, interpreter=True))
    sf.finetune_tool_model(tok, root / "model", examples=_examples(tok, samples))

    engine = Engine(load_model(root / "model"), tok, max_batch_size=8)
    srv = sf.ServerThread(create_app(engine, tok, "puyu-test"))
    # greedy: the endpoint gets rendered text; sampled: token ids (--tokenizer), since the random text a
    # model writes at temperature 2 holds special tokens inside actions, which text cannot carry
    runs = {"greedy": (["--temperature", "0"], []),
            "sampled": (["--temperature", "2", "--repeats", "2", "--seed", "5"], ["--tokenizer", str(root / "model")])}
    try:
        for name, (extra, api_extra) in runs.items():
            common = ["eval", "run", "arithmetic", *options, "--interpreter", "--workers", "2", "--no-progress", *extra]
            assert main([*common, "--model", str(root / "model"), "--out", str(tmp_path / name / "local")]) == 0
            assert main([*common, *api_extra, "--api-base", srv.url, "--out", str(tmp_path / name / "api")]) == 0
        # an endpoint that refuses a request (here: temperature above OpenAI's 2) stops the run with its
        # message; the sample is not scored 0 and skipped by the next run
        bad = ["eval", "run", "arithmetic", *options, "--interpreter", "--no-progress", "--temperature", "3",
               "--api-base", srv.url, "--out", str(tmp_path / "bad")]
        assert main(bad) != 0
        assert "temperature" in capsys.readouterr().err
        assert not list((tmp_path / "bad").rglob("predictions.jsonl"))
    finally:
        srv.stop()
        engine.close()

    def rows(name, where):
        return _rows(tmp_path / name / where / "arithmetic+interpreter" / "predictions.jsonl")

    local, api = rows("greedy", "local"), rows("greedy", "api")
    assert len(local) == len(api) == 3
    for x, y in zip(local, api):
        answer = x["record"]["answer"]
        # the model called the interpreter, the kernel ran its code, and the answer came from the output
        assert x["agent"]["interpreter_calls"] == x["agent"]["ok_calls"] == 1, x
        assert x["transcript"][1] == {"role": "environment", "name": "<|interpreter|>", "content": answer}
        assert x["output"] == f"The answer is {answer}." and x["score"] == 1.0
        # token counts as generated on both sides (the endpoint's usage; before, null without --tokenizer)
        assert x["completion_tokens"] > 0 and x["prompt_tokens"] > 0
        for field in ("prompt", "output", "transcript", "agent", "extracted", "score", "finish_reason",
                      "prompt_tokens", "completion_tokens"):
            assert x[field] == y[field], (x["id"], field, x[field], y[field])
    report = json.loads((tmp_path / "greedy" / "api" / "report.json").read_text())["tasks"][0]
    assert report["agent"]["called_interpreter"] == 1.0 and report["agent"]["calls_without_error"] == 1.0

    local, api = rows("sampled", "local"), rows("sampled", "api")
    assert len(local) == len(api) == 6
    for x, y in zip(local, api):  # the same seeded draws on both backends, counted alike (generated tokens)
        assert (x["output"], x["transcript"]) == (y["output"], y["transcript"]), x["id"]
        assert (x["prompt_tokens"], x["completion_tokens"]) == (y["prompt_tokens"], y["completion_tokens"]), x["id"]
    by_id = {}
    for x in local:
        by_id.setdefault(x["id"], []).append(json.dumps(x["transcript"]))
    assert any(len(set(t)) == 2 for t in by_id.values())  # the repeats drew differently
