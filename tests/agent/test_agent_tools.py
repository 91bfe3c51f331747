"""Tools: schemas from typed functions, argument validation, the registry, and the built-ins."""

from __future__ import annotations

import enum
import json
import os
from typing import Literal

import pytest

from puyu.agent.tools import (
    CalculatorError,
    Tool,
    ToolArgumentError,
    ToolRegistry,
    calculator,
    default_tools,
    evaluate,
    make_read_file,
    tool,
)


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


@tool
def weather(city: str, days: int = 1, unit: Unit = Unit.C, detail: Literal["short", "long"] = "short",
            tags: list[str] | None = None, ratio: float = 0.5, verbose: bool = False) -> dict:
    """Forecast for a city.

    More text that is not part of the description's first paragraph
    continues here.

    Args:
        city: the city name,
            for example "Paris".
        days (int): how many days.
        unit: temperature unit.
    Returns:
        a dict.
    """
    return {"city": city, "days": days, "unit": unit, "detail": detail, "tags": tags, "ratio": ratio,
            "verbose": verbose}


def test_schema_from_typed_function():
    fn = weather.schema()["function"]
    assert fn["name"] == "weather"
    assert fn["description"].startswith("Forecast for a city. More text")
    p = fn["parameters"]
    assert p["type"] == "object" and p["required"] == ["city"]
    props = p["properties"]
    assert props["city"] == {"type": "string", "description": 'the city name, for example "Paris".'}
    assert props["days"] == {"type": "integer", "description": "how many days.", "default": 1}
    assert props["unit"] == {"enum": ["celsius", "fahrenheit"], "description": "temperature unit.",
                             "default": "celsius"}
    assert props["detail"] == {"type": "string", "enum": ["short", "long"], "default": "short"}
    assert props["tags"] == {"type": ["array", "null"], "items": {"type": "string"}}
    assert props["ratio"]["type"] == "number" and props["verbose"]["type"] == "boolean"
    json.dumps(weather.schema())  # JSON-serialisable as a whole


def test_param_style_docstring_and_overrides():
    def f(a: int, b: dict[str, float]):
        """Add things.

        :param a: first.
        :param b: a mapping.
        """

    t = tool(f, name="adder", description="custom")
    assert t.name == "adder" and t.description == "custom"
    assert t.parameters["properties"]["a"]["description"] == "first."
    assert t.parameters["properties"]["b"] == {"type": "object", "additionalProperties": {"type": "number"},
                                               "description": "a mapping."}


class Custom:
    pass


def test_untyped_kwargs_and_unsupported_types_fail_at_definition():
    def bad(x: Custom):
        pass

    with pytest.raises(TypeError, match="parameter 'x'"):
        tool(bad)

    def star(*args):
        pass

    with pytest.raises(TypeError, match=r"\*args"):
        tool(star)

    def unresolvable(x: NotDefinedAnywhere):  # noqa: F821
        pass

    with pytest.raises(TypeError, match="cannot resolve its type hints"):
        tool(unresolvable)


def test_validation_accepts_and_coerces():
    assert weather.validate({"city": "Oslo", "days": "3", "ratio": 1, "unit": "fahrenheit"}) == \
        {"city": "Oslo", "days": 3, "ratio": 1, "unit": "fahrenheit"}
    assert weather.validate({"city": "Oslo", "days": 2.0})["days"] == 2
    r = weather({"city": "Oslo", "tags": ["a"], "unit": "celsius"})
    assert r.ok and json.loads(r.content)["tags"] == ["a"]


@pytest.mark.parametrize("args, needles", [
    ({}, ["missing required argument 'city'"]),
    ({"city": 5}, ["'city' must be string, got int 5"]),
    ({"city": "x", "days": "three"}, ["'days' must be integer"]),
    ({"city": "x", "days": True}, ["'days' must be integer, got bool"]),
    ({"city": "x", "unit": "kelvin"}, ["'unit' must be one of", "kelvin"]),
    ({"city": "x", "tags": ["a", 2]}, ["'tags'[1] must be string"]),
    ({"city": "x", "colour": "red"}, ["unknown argument 'colour'", "allowed: city, days"]),
    ({"days": 1.5, "verbose": "yes"}, ["missing required argument 'city'", "'days' must be integer",
                                       "'verbose' must be boolean"]),
])
def test_validation_errors_name_every_problem(args, needles):
    with pytest.raises(ToolArgumentError) as e:
        weather.validate(args)
    for n in needles:
        assert n in str(e.value)
    r = weather(args)  # calling never raises: the same message comes back as a failed result
    assert not r.ok and r.content.startswith("Error: invalid arguments for 'weather'")


def test_registry_unknown_tool_and_tool_exceptions():
    def explode(n: int) -> str:
        """Always fails."""
        raise RuntimeError(f"boom {n}")

    reg = ToolRegistry([weather, explode])
    assert reg.names() == ["weather", "explode"] and len(reg.schemas()) == 2
    r = reg.call("nope", {})
    assert not r.ok and "unknown tool 'nope'" in r.error and "weather, explode" in r.error
    r = reg.call("explode", {"n": 2})
    assert not r.ok and "RuntimeError: boom 2" in r.error
    with pytest.raises(ValueError, match="already registered"):
        reg.register(weather)
    assert isinstance(reg["weather"], Tool)


@pytest.mark.parametrize("expr, value", [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("2 ** 100", 2**100), ("2^10", 1024), ("7 // 2", 3),
    ("7 % 3", 1), ("-3 + +4", 1), ("10 / 4", 2.5), ("sqrt(16)", 4.0), ("factorial(20)", 2432902008176640000),
    ("round(pi, 3)", 3.142), ("max(1, 5, 3)", 5), ("log(8, 2)", 3.0), ("3 × 4 ÷ 2", 6.0),
])
def test_calculator_values(expr, value):
    assert evaluate(expr) == pytest.approx(value)


@pytest.mark.parametrize("expr, needle", [
    ("__import__('os').system('id')", "unsupported"), ("open('/etc/passwd')", "unsupported"),
    ("x + 1", "name 'x'"), ("(1).__class__", "unsupported"), ("[1, 2]", "unsupported"),
    ("1 / 0", "division by zero"), ("9 ** 9 ** 9", "too large"), ("factorial(100000)", "too large"),
    ("1 +", "not a valid expression"), ("sqrt(-1)", "ValueError"), ("10.0 ** 400", "OverflowError"),
    ("'a' * 3", "unsupported"), ("lambda: 1", "unsupported"), ("", "empty"),
])
def test_calculator_rejects_without_running_anything(expr, needle):
    with pytest.raises(CalculatorError, match=needle):
        evaluate(expr)


def test_calculator_tool_output():
    assert calculator({"expression": "2**64"}).content == "18446744073709551616"
    assert calculator({"expression": "sqrt(2)"}).content.startswith("1.41421356")
    assert calculator({"expression": "4/2"}).content == "2"
    r = calculator({"expression": "1/0"})
    assert not r.ok and r.error == "division by zero"


def test_read_file_is_confined_to_the_session_dir(tmp_path):
    session = tmp_path / "session"
    session.mkdir()
    (session / "notes.txt").write_text("hello\nworld\n")
    (session / "sub").mkdir()
    (session / "sub" / "a.txt").write_text("x" * 50)
    (session / "blob.bin").write_bytes(b"\0\1\2" * 10)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    os.symlink(secret, session / "link.txt")  # as if planted by code in the kernel
    read = make_read_file(session, max_chars=20)
    assert read({"path": "notes.txt"}).content == "hello\nworld\n"
    r = read({"path": "sub/a.txt"})
    assert r.content.startswith("x" * 20) and "offset=20" in r.content
    assert read({"path": "sub/a.txt", "offset": 40}).content == "x" * 10
    for bad in ("../secret.txt", str(secret), "link.txt", "/etc/passwd"):
        r = read({"path": bad})
        assert not r.ok and "outside the working directory" in r.error, bad
        assert "SECRET" not in r.content
    r = read({"path": "missing.csv"})
    assert not r.ok and "files here: blob.bin, link.txt, notes.txt" in r.error
    assert "binary" in read({"path": "blob.bin"}).error


def test_default_tools(tmp_path):
    assert default_tools().names() == ["calculator"]
    assert default_tools(tmp_path).names() == ["calculator", "read_file"]
