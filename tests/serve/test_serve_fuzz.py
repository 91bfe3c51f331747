"""schemathesis over the server's own OpenAPI schema: valid and invalid requests generated for every
operation, sent to a real loopback server (random nano-tiny model, real engine); none may get a 5xx.

Slow-marked: a few hundred requests. `max_tokens` is capped low on this server so valid generations
stay short."""

from __future__ import annotations

import copy

import pytest
import requests
import schemathesis
import serving_fixtures as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from puyu.serve.app import Limits, create_app

EXAMPLES = 150
UNCONSTRAINED = ("GET /health", "GET /v1/models", "GET /v1/models/{model_id}")
# Valid JSON that is not Unicode text: schemathesis never generates lone surrogates (it cannot send them
# raw), but JSON escapes them ("\ud800"), so a client can. Planted into generated bodies (below).
NOT_TEXT = ["\ud800", "a\udfffb", "\udbff\ud800", "x\udc80"]


def _plant(body, text: str, k: int):
    """`body` with its k-th string (values and keys, depth first, modulo their count) replaced by `text`."""
    slots = []

    def walk(v, parent, key):
        if isinstance(v, str):
            slots.append((parent, key))
        elif isinstance(v, dict):
            for kk in list(v):
                slots.append((v, ("key", kk)))
                walk(v[kk], v, kk)
        elif isinstance(v, list):
            for i, e in enumerate(v):
                walk(e, v, i)

    walk(body, None, None)
    if not slots:
        return body
    parent, key = slots[k % len(slots)]
    if parent is None:
        return text
    if isinstance(key, tuple):
        parent[text] = parent.pop(key[1])
    else:
        parent[key] = text
    return body


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tiny_tokenizer, tmp_path_factory):
    from puyu.engine.scheduler import Engine
    from puyu.model.checkpoint import load_model

    engine = Engine(load_model(tiny_checkpoint), tiny_tokenizer, max_batch_size=8)
    app = create_app(engine, tiny_tokenizer, "fuzz", limits=Limits(max_tokens=16, default_max_tokens=8,
                                                                    max_body_bytes=64_000),
                     session_dir=tmp_path_factory.mktemp("fuzz_sessions"))
    srv = sf.ServerThread(app)
    yield srv.url
    srv.stop()
    engine.close()


def _operations(url: str) -> list:
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


# schemathesis' own pytest integration (`from_fixture` + `parametrize`) fails on this pytest, so each
# operation's strategy is driven with hypothesis directly: same generated cases, same calls.
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_request_gets_a_5xx(server, mode):
    operations = _operations(server)
    assert {op.label for op in operations} >= {"POST /v1/chat/completions", "POST /v1/completions",
                                               "GET /v1/models", "POST /v1/sessions/{session_id}/files"}
    seen: dict[str, set[int]] = {}
    for op in operations:
        strategy = op.as_strategy(generation_mode=schemathesis.GenerationMode(mode))

        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=strategy, plant=st.one_of(st.none(), st.tuples(st.sampled_from(NOT_TEXT), st.integers(0, 50))))
        def call(case, plant):
            kw = case.as_transport_kwargs(base_url=server)
            if plant is not None and "json" in kw:  # sent as JSON, the surrogate escaped ("\\ud800")
                kw["json"] = _plant(copy.deepcopy(kw["json"]), *plant)
                response = requests.request(**kw, timeout=60)
            else:
                response = case.call(base_url=server, timeout=60)
            seen.setdefault(case.operation.label, set()).add(response.status_code)
            assert response.status_code < 500, (case.method, case.path, case.body, response.status_code,
                                                response.text)
            if response.status_code >= 400:  # every error in OpenAI's shape, with a message
                err = response.json()["error"]
                assert set(err) == {"message", "type", "param", "code"} and err["message"], err

        try:
            call()
        except Unsatisfiable:  # nothing to make invalid: no parameters, or one that takes any string
            assert mode == "negative" and op.label in UNCONSTRAINED, op.label
    print(f"\n{mode}: status codes per operation: {seen}")
    if mode == "negative":  # the invalid inputs were really refused
        assert 400 in seen["POST /v1/chat/completions"] and 400 in seen["POST /v1/completions"]
