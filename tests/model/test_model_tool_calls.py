"""The shared action parser (`puyu.model.tool_calls`): whole turns, every split point of streamed turns,
and malformed actions; `puyu.agent.protocol` re-exports the same objects."""

from __future__ import annotations

import random

import pytest

from puyu.model.chat_format import interpreter_action, plugin_action, render_chat
from puyu.model.tool_calls import (
    ACTION_END,
    ACTION_START,
    ALIASES,
    IM_END,
    IM_START,
    INTERPRETER,
    PLUGIN,
    ActionError,
    InterpreterCall,
    PluginCall,
    StreamParser,
    parse_turn,
)

PLUGIN_TURN = (f'I will look it up.\n{ACTION_START}{PLUGIN}\n{{"name": "get_weather", "parameters": '
               f'{{"city": "Shanghai", "days": 3}}}}{ACTION_END}{IM_END}')
CODE = "import math\nprint(math.factorial(10))"
CODE_TURN = f"Let me compute <that> [in code].\n\n{ACTION_START}{INTERPRETER}\n```python\n{CODE}\n```{ACTION_END}"
# A transcript with both kinds of action, as several assistant turns of one conversation would stream.
BOTH = [PLUGIN_TURN, CODE_TURN, "The answer is 3628800 <|not a marker|> done."]


def stream(text: str, cuts: list[int]) -> tuple[list[str], object]:
    p = StreamParser()
    pieces, prev = [], 0
    for c in [*cuts, len(text)]:
        pieces.append(p.feed(text[prev:c]))
        prev = c
    return pieces, p.finish()


def test_plugin_turn_whole():
    t = parse_turn(PLUGIN_TURN)
    assert t.text == "I will look it up.\n"
    assert t.action == PluginCall("get_weather", {"city": "Shanghai", "days": 3}, t.action.raw)
    assert t.closed and t.trailing == IM_END


def test_interpreter_turn_whole():
    t = parse_turn(CODE_TURN)
    assert t.text == "Let me compute <that> [in code].\n\n"
    assert isinstance(t.action, InterpreterCall) and t.action.code == CODE


def test_plain_text_and_im_end():
    t = parse_turn("Hello there.<|im_end|>\n<|im_start|>user\nmore")
    assert t.text == "Hello there." and t.action is None and t.trailing.startswith("\n<|im_start|>user")


@pytest.mark.parametrize("sample", BOTH)
def test_every_split_point_single_and_double(sample):
    """Whole and streamed parses agree for every one-cut and a sample of two-cut splits, and nothing is
    leaked: the text pieces concatenate to exactly the text before the action, without markers."""
    whole = parse_turn(sample)
    for markers in (ACTION_START, PLUGIN, INTERPRETER, ACTION_END, IM_END):
        assert markers not in whole.text
    splits = [[i] for i in range(len(sample) + 1)]
    rng = random.Random(0)
    splits += [sorted(rng.sample(range(len(sample) + 1), 2)) for _ in range(300)]
    for cuts in splits:
        pieces, turn = stream(sample, cuts)
        assert "".join(pieces) == whole.text, cuts
        assert turn == whole, cuts


@pytest.mark.parametrize("sample", BOTH)
def test_character_by_character(sample):
    pieces, turn = stream(sample, list(range(1, len(sample))))
    assert turn == parse_turn(sample)
    assert "".join(pieces) == turn.text


def test_text_is_held_only_while_it_could_be_a_marker():
    sample = "x <|not a marker|> [UNUSED_TOKEN_9] <|im_e"
    p = StreamParser()
    shown = ""
    for i, ch in enumerate(sample, 1):
        shown += p.feed(ch)
        held = sample[len(shown):i]
        assert sample[:i].startswith(shown)
        # what waits is the longest suffix that can still grow into a marker, and nothing more
        assert held == "" or any(m.startswith(held) and m != held for m in (*ALIASES, IM_END, ACTION_START))
        assert not any(m.startswith(sample[len(shown) - 1:i]) for m in (*ALIASES, IM_END)) or shown == ""
    assert shown == "x <|not a marker|> [UNUSED_TOKEN_9] " and p.finish().text == sample


def test_held_back_prefix_is_text_at_end():
    p = StreamParser()
    assert p.feed("a <|act") == "a "
    assert p.finish().text == "a <|act" and p.finish().action is None


def test_raw_spare_token_spellings():
    raw = {v: k for k, v in ALIASES.items()}
    sample = (f"ok{raw[ACTION_START]}{raw[INTERPRETER]}\n```python\nprint(1)\n```{raw[ACTION_END]}"
              f"{raw[IM_END]}")
    for cut in range(len(sample) + 1):
        pieces, turn = stream(sample, [cut])
        assert "".join(pieces) == "ok" and turn.action.code == "print(1)"
    assert parse_turn(f"hi{raw[IM_END]}{raw[IM_START]}user").text == "hi"


def test_arguments_spelling_and_string_arguments():
    t = parse_turn(f'{ACTION_START}{PLUGIN}\n{{"name": "f", "arguments": "{{\\"x\\": 1}}"}}{ACTION_END}')
    assert t.action.name == "f" and t.action.arguments == {"x": 1}
    t = parse_turn(f'{ACTION_START}{PLUGIN}\n```json\n{{"name": "f", "arguments": {{"y": [1]}}}}\n```{ACTION_END}')
    assert t.action.arguments == {"y": [1]}
    t = parse_turn(f'{ACTION_START}{PLUGIN}\n{{"name": "noargs"}}{ACTION_END}')
    assert t.action == PluginCall("noargs", {}, t.action.raw)


@pytest.mark.parametrize("body, needle", [
    ('{"name": "f", "parameters": {"x": 1}', "not valid JSON"),
    ('["f"]', "must be a JSON object"),
    ('{"parameters": {}}', 'no "name"'),
    ('{"name": "f", "parameters": [1, 2]}', "must be a JSON object"),
    ('{"name": "f", "arguments": "{oops"}', "not valid JSON"),
])
def test_malformed_plugin_calls_are_errors_not_exceptions(body, needle):
    t = parse_turn(f"{ACTION_START}{PLUGIN}\n{body}{ACTION_END}")
    assert isinstance(t.action, ActionError) and t.action.kind == "plugin"
    assert needle in t.action.message and '"parameters"' in t.action.message  # says what a valid call is


def test_other_malformed_actions():
    t = parse_turn(f"{ACTION_START}{INTERPRETER}\n```python\n\n```{ACTION_END}")
    assert isinstance(t.action, ActionError) and "no code" in t.action.message
    t = parse_turn(f"{ACTION_START}search: cats{ACTION_END}")
    assert isinstance(t.action, ActionError) and t.action.kind == "unknown"


def test_lenient_forms():
    # Cut off before <|action_end|> (a stop-sequence that excludes it, or max tokens): still parsed.
    t = parse_turn(f"{ACTION_START}{INTERPRETER}\n```python\nprint(2)\n")
    assert t.action.code == "print(2)" and not t.closed
    # Code without a fence, and an action whose <|action_start|> the model left out.
    assert parse_turn(f"{ACTION_START}{INTERPRETER}\nprint(3){ACTION_END}").action.code == "print(3)"
    t = parse_turn(f'x{PLUGIN}\n{{"name": "g", "parameters": {{}}}}{ACTION_END}')
    assert t.text == "x" and t.action.name == "g"
    # One action per turn: a second one is ignored (kept as trailing), and a stray end marker is dropped.
    t = parse_turn(CODE_TURN + CODE_TURN)
    assert t.action.code == CODE and ACTION_START in t.trailing
    assert parse_turn(f"a{ACTION_END}b").text == "ab"


def test_round_trip_with_chat_format():
    """What render_chat writes for an assistant action parses back to the same call."""
    args = {"city": "Zürich", "n": [1, 2]}
    t = parse_turn("Checking." + plugin_action("weather", args))
    assert t.action.name == "weather" and t.action.arguments == args
    assert parse_turn(interpreter_action(CODE)).action.code == CODE
    prompt = render_chat([{"role": "user", "content": "q"},
                          {"role": "assistant", "content": "Checking.", "code": CODE}],
                         add_generation_prompt=False)
    turn = prompt.split(f"{IM_START}assistant\n", 1)[1]
    assert parse_turn(turn).action.code == CODE


@pytest.mark.parametrize("between", ["\n", ""])
def test_replayed_action_with_or_without_the_newline_parses_alike(between):
    """render_chat replays `<|action_end|>\\n<|im_end|>` (InternLM2's SFT format: xtuner, Lagent); the
    function-call example of InternLM's chat-format document omits the newline. Both parse to the call."""
    args = {"city": "Oslo"}
    turn = "Let me check." + plugin_action("get_weather", args) + between + "<|im_end|>\n"
    t = parse_turn(turn)
    assert (t.text, t.action.name, t.action.arguments, t.closed) == ("Let me check.", "get_weather", args, True)
    replay = render_chat([{"role": "user", "content": "q"}, {"role": "assistant", "content": "Let me check.",
                          "tool_calls": [{"function": {"name": "get_weather", "arguments": args}}]}],
                         add_generation_prompt=False)
    assert replay.endswith(plugin_action("get_weather", args) + "\n<|im_end|>\n")
    t2 = parse_turn(replay.split(f"{IM_START}assistant\n", 1)[1])
    assert (t2.action.name, t2.action.arguments) == ("get_weather", args)


def test_agent_protocol_reexports_the_shared_parser():
    import puyu.agent.protocol as P
    import puyu.model.tool_calls as M

    assert P.parse_turn is M.parse_turn and P.StreamParser is M.StreamParser and P.PluginCall is M.PluginCall
