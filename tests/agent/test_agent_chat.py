"""`puyu chat`: the session logic in process (exact replies against the engine on the rendered
conversation), and the real command driven through a pseudo-terminal with pexpect."""

from __future__ import annotations

import io
import os
import re
import sys
from pathlib import Path

import pytest

from puyu.agent.chat import ChatSession
from puyu.engine.sampling import SamplingParams
from puyu.engine.scheduler import Engine
from puyu.model.chat_format import render_chat
from puyu.model.checkpoint import load_model
from puyu.model.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def setup(tiny_checkpoint):
    model, tok = load_model(tiny_checkpoint), load_tokenizer(tiny_checkpoint)
    params = SamplingParams(max_new_tokens=8, stop_token_ids=tok.stop_ids)
    with Engine(model, tok, max_batch_size=1, cache_tokens=256) as engine:
        yield engine, tok, params


def expected_reply(engine, messages, params) -> str:
    prompt = render_chat(messages)
    return engine.generate([prompt], engine.fit(prompt, params))[0].text


def test_two_turns_carry_the_history_and_commands_work(setup):
    engine, tok, params = setup
    out = io.StringIO()
    s = ChatSession(engine, tok, params, system="be kind", out=out)
    assert s.handle("hello")
    first = expected_reply(engine, [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hello"}],
                           params)
    assert s.messages[-1] == {"role": "assistant", "content": first}
    assert s.handle("and again")
    second = expected_reply(engine, s.messages[:-1], params)
    assert s.messages[-1]["content"] == second and len(s.messages) == 5
    assert out.getvalue() == f"{first}\n{second}\n"
    assert s.handle("/system talk like a pirate")
    assert s.messages == [{"role": "system", "content": "talk like a pirate"}]
    s.handle("hi")
    assert s.handle("/reset") and s.messages == [{"role": "system", "content": "talk like a pirate"}]
    assert s.handle("/system") and s.messages == [] and s.system is None
    assert s.handle("/bogus") and "unknown command /bogus" in out.getvalue()
    assert s.handle("   ") and not s.handle("/exit")


def test_conversation_longer_than_the_cache_is_reported_not_fatal(setup):
    engine, tok, params = setup
    out = io.StringIO()
    s = ChatSession(engine, tok, params, out=out)
    assert s.handle("word " * 300)  # far more than the 256-token cache
    assert "error: " in out.getvalue() and "/reset" in out.getvalue()
    assert s.messages == []
    assert engine.stats()["cache_blocks_used"] == 0


def _printable_run(text: str) -> str:
    """The longest run of printable characters (what a terminal shows unchanged)."""
    runs = re.split(r"[^\S ]|\ufffd", "".join(c if c.isprintable() else "\n" for c in text))
    return max(runs, key=len).strip()


def test_puyu_chat_in_a_pseudo_terminal(tiny_checkpoint, setup):
    pexpect = pytest.importorskip("pexpect")
    engine, _, _ = setup
    params = SamplingParams(max_new_tokens=8, stop_token_ids=engine.tokenizer.stop_ids)
    first = expected_reply(engine, [{"role": "user", "content": "hello"}], params)
    assert len(_printable_run(first)) >= 2  # something definite to look for on the terminal
    exe = Path(sys.executable).with_name("puyu")
    env = {**os.environ, "GOMP_SPINCOUNT": "1000", "OMP_NUM_THREADS": "1", "TERM": "dumb"}
    child = pexpect.spawn(str(exe), ["chat", str(tiny_checkpoint), "--max-new-tokens", "8",
                                     "--cache-tokens", "256"], env=env, encoding="utf-8", timeout=90)
    try:
        child.expect_exact(">>> ")
        child.sendline("hello")
        child.expect_exact(_printable_run(first))
        child.expect_exact(">>> ")
        child.sendline("/system be brief")
        child.expect_exact("system prompt set")
        child.expect_exact(">>> ")
        child.sendline("what is 2+2?")
        child.expect_exact(">>> ")
        assert child.before.count("\n") >= 2  # the echoed question and a reply line
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_tools_flag_runs_the_agent_through_the_engine(tiny_tokenizer):
    import argparse

    from tiny_models import ScriptedModel

    from puyu.agent.chat import make_agent
    from puyu.agent.tools import default_tools

    tok = tiny_tokenizer
    messages = [{"role": "user", "content": "what is 2+3?"}]
    call = '<|action_start|><|plugin|>\n{"name": "calculator", "parameters": {"expression": "2+3"}}<|action_end|>'
    prompt = tok.encode(render_chat(messages, tools=default_tools(None).schemas()), allow_special=True)
    # The scripted model writes the call (and would go on past <|action_end|>), then nothing more.
    script = prompt + tok.encode("Let me compute." + call + "junk", allow_special=True)
    params = SamplingParams(max_new_tokens=200, stop_token_ids=tok.stop_ids)
    args = argparse.Namespace(tools=True, interpreter=False, workdir=None, max_steps=2)
    out = io.StringIO()
    with Engine(ScriptedModel(tok.vocab_size, script), tok, cache_tokens=2048) as engine:
        agent = make_agent(args, engine, params)
        s = ChatSession(engine, tok, params, agent=agent, out=out)
        assert s.handle("what is 2+3?")
    text = out.getvalue()
    assert text.startswith("Let me compute.")
    assert "[plugin] calculator({'expression': '2+3'})" in text and "[result] 5" in text and "junk" not in text
    assert [m["role"] for m in s.messages] == ["user", "assistant", "environment", "assistant"]
    assert s.messages[1]["tool_calls"][0]["function"] == {"name": "calculator", "arguments": {"expression": "2+3"}}


def test_an_interpreter_call_without_code_is_shown_as_such(tiny_tokenizer):
    """`--interpreter`: an action with no code showed as "[interpreter] None"."""
    import argparse

    from tiny_models import ScriptedModel

    from puyu.agent.chat import make_agent
    from puyu.model.chat_format import encode_chat

    tok = tiny_tokenizer
    messages = [{"role": "user", "content": "run it"}]
    prompt = encode_chat(tok, messages, None, True)
    # The scripted model writes an interpreter action with nothing in it, then ends its next turn at once.
    script = prompt + tok.encode("<|action_start|><|interpreter|>\n<|action_end|>", allow_special=True)
    params = SamplingParams(max_new_tokens=50, stop_token_ids=tok.stop_ids)
    args = argparse.Namespace(tools=False, interpreter=True, workdir=None, max_steps=2)
    out = io.StringIO()
    with Engine(ScriptedModel(tok.vocab_size, script), tok, cache_tokens=2048) as engine:
        agent = make_agent(args, engine, params)
        try:
            assert ChatSession(engine, tok, params, agent=agent, out=out).handle("run it")
        finally:
            agent.close()
    text = out.getvalue()
    assert "\n[interpreter] (no code)\n" in text and "None" not in text, text
    assert "[result (error)] Error: the interpreter call contains no code" in text

def test_chat_without_a_model_is_a_clear_error(capsys):
    from puyu.cli import main

    assert main(["chat"]) == 1
    assert "which model?" in capsys.readouterr().err
