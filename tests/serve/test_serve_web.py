"""The web chat in headless Debian Chromium (system browser, driven by Playwright; nothing downloaded):
a streamed answer, a tool call answered from the page, a CSV upload analysed by the server-side
interpreter with its figure inline. Screenshots go to test-artifacts/ (git-ignored)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import serving_fixtures as sf

from puyu.serve.app import create_app

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
MODEL = "puyu-web"

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is not installed")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from puyu.engine.scheduler import Engine
    from puyu.model.checkpoint import load_model

    tok, model_dir = sf.tool_model(tmp_path_factory)
    engine = sf.RecordingEngine(Engine(load_model(model_dir), tok, max_batch_size=4))
    sessions = tmp_path_factory.mktemp("web_sessions")
    srv = sf.ServerThread(create_app(engine, tok, MODEL, interpreter=True, session_dir=sessions))
    yield srv.url, sessions, engine
    srv.stop()
    engine.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the chat, with every request it makes recorded (all must stay on the server)."""
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    requested: list[str] = []
    pg.on("request", lambda r: requested.append(r.url))
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server[0] + "/")
    pg.wait_for_function("document.getElementById('model-name').textContent.includes('puyu-web')")
    pg.fill("#temperature", "0")  # greedy: the tiny model then says exactly what it was trained to say
    yield pg
    assert not errors, errors
    assert requested and all(u.startswith(server[0]) or u.startswith("data:") for u in requested), requested
    context.close()


def _send(pg, text: str) -> None:
    pg.fill("#prompt", text)
    pg.press("#prompt", "Enter")
    pg.wait_for_selector("#send:not([disabled])")  # the answer has finished streaming


def _last_assistant(pg):
    return pg.locator(".msg.assistant").last


def test_streamed_answer_and_tool_call(page):
    _send(page, sf.GREETING)
    answer = _last_assistant(page)
    assert answer.locator(".text").inner_text() == sf.GREETING_ANSWER
    assert "finish: stop" in answer.locator(".usage").inner_text()
    assert page.evaluate("window.puyu.deltas") > 3  # it arrived in pieces, not as one block

    page.click("#new-chat")
    page.fill("#tools", json.dumps(sf.TOOLS))
    _send(page, sf.QUESTION)
    call = _last_assistant(page).locator(".tool-call")
    assert "get_weather" in call.locator(".label").inner_text()
    assert json.loads(call.locator("pre").inner_text()) == sf.CALL_ARGS
    call.locator(".tool-reply input").fill(sf.TOOL_RESULT)
    call.locator(".tool-reply button").click()
    page.wait_for_function("document.querySelectorAll('.msg.assistant').length === 2")
    page.wait_for_selector("#send:not([disabled])")
    assert _last_assistant(page).locator(".text").inner_text() == sf.ANSWER
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_chat_tools.png"), full_page=True)


def test_csv_upload_and_interpreter_with_inline_figure(page, server):
    page.set_input_files("#file-input", files=[{"name": sf.CSV_NAME, "mimeType": "text/csv",
                                                "buffer": sf.CSV.encode()}])
    page.wait_for_selector("#file-list li")
    assert sf.CSV_NAME in page.inner_text("#file-list")
    session = page.evaluate("window.puyu.session")
    assert (server[1] / session / sf.CSV_NAME).read_text() == sf.CSV  # in the session directory
    assert page.evaluate("window.puyu.history[0]") == sf.FILE_MESSAGE

    page.check("#use-interpreter")
    _send(page, sf.DATA_QUESTION)
    answer = _last_assistant(page)
    step = answer.locator(".step")
    assert step.locator("pre.code").inner_text() == sf.CODE
    assert step.locator("pre.output").inner_text().startswith("60")
    img = step.locator("img")
    assert img.get_attribute("src").startswith("data:image/png;base64,")
    assert page.evaluate("(el) => el.complete && el.naturalWidth > 100", img.element_handle())  # decoded
    assert answer.locator(".text").last.inner_text() == sf.DATA_ANSWER  # below the step, as streamed
    assert answer.locator(".text").first.inner_text() == ""  # the model wrote no text before its code
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_chat.png"), full_page=True)


def test_stop_button_aborts_the_generation(page, server):
    engine = server[2]
    with engine.slow(0.1):  # 0.1 s a token: the answer takes well over a second
        page.fill("#prompt", sf.GREETING)
        page.press("#prompt", "Enter")
        page.wait_for_function("window.puyu.deltas > 0")
        page.click("#stop")
        page.wait_for_selector("#send:not([disabled])")
    assert "finish: stopped" in _last_assistant(page).locator(".usage").inner_text()
    result = engine.handles[-1].result(timeout=10)
    assert result.finish_reason == "abort" and len(result.token_ids) < 14  # the full answer is 14 tokens
    assert sf.wait_until(lambda: engine.stats()["running"] == 0 and engine.stats()["cache_blocks_used"] == 0)
