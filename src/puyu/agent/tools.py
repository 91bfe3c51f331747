"""Tools the model can call: a registry, tools made from typed Python functions, argument validation,
and the built-ins (calculator, read_file, python interpreter).

    @tool
    def weather(city: str, unit: Literal["C", "F"] = "C") -> dict:
        '''Current weather for a city.

        Args:
            city: the city name, e.g. "Paris".
            unit: temperature unit.
        '''

    registry = ToolRegistry([weather, calculator])
    registry.schemas()                      # OpenAI-style list for render_chat(tools=...)
    registry.call("weather", {"city": "Paris"})   # -> ToolResult, never raises

Schema from the function: the docstring's first paragraph is the description; the "Args:" section (or
":param x:" lines) describes parameters; type hints give JSON types (str, int, float, bool, list[X],
tuple[X, ...], dict[str, X], Literal[...], Enum, X | None); parameters without a default are required.
Validation runs before the call: unknown, missing and ill-typed arguments are reported by name in one
message; numeric strings are accepted for numbers ("3" -> 3) because small models often quote them.
"""

from __future__ import annotations

import ast
import enum
import inspect
import json
import math
import operator
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class ToolArgumentError(ValueError):
    """Arguments that do not match a tool's schema; the message names each problem."""


@dataclass
class ToolResult:
    """The outcome of one call. `content` is what the model reads in the environment turn."""

    content: str
    ok: bool = True
    error: str | None = None
    images: list[str] = field(default_factory=list)

    @classmethod
    def failure(cls, message: str) -> ToolResult:
        return cls(content=f"Error: {message}", ok=False, error=message)


# ---- JSON Schema from type hints ------------------------------------------------------------------
_PRIMITIVES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def type_schema(tp) -> dict:
    """JSON Schema for a Python type hint; TypeError for types that have no JSON form."""
    if tp is inspect.Parameter.empty or tp is typing.Any:
        return {}
    if tp in _PRIMITIVES:
        return {"type": _PRIMITIVES[tp]}
    if tp is type(None):
        return {"type": "null"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        kinds = {_PRIMITIVES.get(type(a)) for a in args}
        return {"type": kinds.pop(), "enum": list(args)} if len(kinds) == 1 and None not in kinds else \
            {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        non_null = [a for a in args if a is not type(None)]
        if len(non_null) == 1:
            inner = type_schema(non_null[0])
            if len(non_null) < len(args) and "type" in inner:
                inner = {**inner, "type": [inner["type"], "null"]}
            return inner
        return {"anyOf": [type_schema(a) for a in args]}
    if tp in (list, tuple, set) or origin in (list, tuple, set):
        item = args[0] if args and (origin is not tuple or len(args) == 2 and args[1] is Ellipsis) else None
        return {"type": "array", "items": type_schema(item)} if item is not None else {"type": "array"}
    if tp is dict or origin is dict:
        return {"type": "object", "additionalProperties": type_schema(args[1])} if args else {"type": "object"}
    raise TypeError(f"type {tp!r} has no JSON Schema form; use str, int, float, bool, list, dict, Literal or Enum")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {param: description}) from a Google-style "Args:" section or ":param x:" lines."""
    lines = inspect.cleandoc(doc or "").splitlines()
    desc: list[str] = []
    params: dict[str, str] = {}
    current: str | None = None
    in_args = False
    for line in lines:
        s = line.strip()
        m = re.match(r":param\s+(?:\w+\s+)?(\w+):\s*(.*)", s)
        if m:
            current, in_args = m.group(1), False
            params[current] = m.group(2)
            continue
        if re.fullmatch(r"(Args|Arguments|Parameters):", s):
            in_args, current = True, None
            continue
        if re.fullmatch(r"(Returns|Raises|Yields|Examples?):", s):
            in_args, current = False, None
            continue
        if in_args:
            m = re.match(r"(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)", s)
            if m and not line.startswith(" " * 8):
                current = m.group(1)
                params[current] = m.group(2)
            elif current and s:
                params[current] += " " + s
        elif current and s:
            params[current] += " " + s
        elif current is None and not params:
            desc.append(s)
    text = " ".join(" ".join(desc).split())
    return text, {k: " ".join(v.split()) for k, v in params.items()}


@dataclass
class Tool:
    """A callable tool: `func(**arguments)`; `parameters` is its JSON Schema (type "object")."""

    name: str
    description: str
    parameters: dict
    func: Callable

    def schema(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    def validate(self, arguments: dict) -> dict:
        """Checked and coerced arguments, or ToolArgumentError listing every problem."""
        problems: list[str] = []
        value = _check(arguments, self.parameters, "arguments", problems)
        if problems:
            raise ToolArgumentError(f"invalid arguments for {self.name!r}: " + "; ".join(problems)
                                    + f". Expected parameters: {json.dumps(self.parameters['properties'])}")
        return value

    def __call__(self, arguments: dict | None = None) -> ToolResult:
        """Validate, call and wrap the result; never raises (errors become a failed ToolResult)."""
        try:
            args = self.validate(arguments or {})
        except ToolArgumentError as e:
            return ToolResult.failure(str(e))
        try:
            out = self.func(**args)
        except Exception as e:  # the tool's own failure is information for the model, not a crash
            return ToolResult.failure(f"{self.name} failed: {type(e).__name__}: {e}")
        if isinstance(out, ToolResult):
            return out
        if isinstance(out, str):
            return ToolResult(out)
        try:
            return ToolResult(json.dumps(out, ensure_ascii=False, default=str))
        except (TypeError, ValueError):
            return ToolResult(str(out))


def tool(func: Callable | None = None, *, name: str | None = None, description: str | None = None):
    """Make a `Tool` from a typed function (usable as `@tool` or `@tool(name=...)`)."""
    def make(f: Callable) -> Tool:
        doc_desc, doc_params = _parse_docstring(f.__doc__ or "")
        try:
            hints = typing.get_type_hints(f)
        except NameError as e:  # string annotations (PEP 563) naming something not importable here
            raise TypeError(f"tool {f.__name__}: cannot resolve its type hints: {e}") from None
        props: dict[str, dict] = {}
        required: list[str] = []
        for p in inspect.signature(f).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"tool {f.__name__}: *args/**kwargs cannot be described as JSON Schema")
            try:
                schema = type_schema(hints.get(p.name, inspect.Parameter.empty))
            except TypeError as e:
                raise TypeError(f"tool {f.__name__}, parameter {p.name!r}: {e}") from None
            if p.name in doc_params:
                schema["description"] = doc_params[p.name]
            if p.default is p.empty:
                required.append(p.name)
            elif p.default is not None:
                schema["default"] = p.default.value if isinstance(p.default, enum.Enum) else p.default
            props[p.name] = schema
        params = {"type": "object", "properties": props, "required": required}
        return Tool(name or f.__name__, description or doc_desc or f.__name__, params, f)

    return make(func) if func is not None else make


# ---- validation -----------------------------------------------------------------------------------
_JSON_TYPES = {"string": str, "boolean": bool, "object": dict, "array": list, "null": type(None)}


def _check(value, schema: dict, where: str, problems: list[str]):
    """Validate `value` against the subset of JSON Schema that `type_schema` produces; coerce numbers."""
    if "anyOf" in schema:
        for sub in schema["anyOf"]:
            trial: list[str] = []
            out = _check(value, sub, where, trial)
            if not trial:
                return out
        problems.append(f"{where} matches none of the allowed types")
        return value
    types_ = schema.get("type")
    if types_ is not None:
        value, ok = _coerce(value, types_ if isinstance(types_, list) else [types_])
        if not ok:
            problems.append(f"{where} must be {' or '.join(types_) if isinstance(types_, list) else types_}, "
                            f"got {type(value).__name__} {json.dumps(value, default=str)[:60]}")
            return value
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where} must be one of {json.dumps(schema['enum'])}, got {json.dumps(value, default=str)}")
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        if props is not None:
            for k in value:
                if k not in props:
                    problems.append(f"unknown argument {k!r} (allowed: {', '.join(props) or 'none'})")
            for k in schema.get("required", []):
                if k not in value:
                    problems.append(f"missing required argument {k!r}")
            value = {k: _check(v, props[k], repr(k), problems) if k in props else v for k, v in value.items()}
        elif "additionalProperties" in schema:
            value = {k: _check(v, schema["additionalProperties"], f"{where}[{k!r}]", problems)
                     for k, v in value.items()}
    if isinstance(value, list) and "items" in schema:
        value = [_check(v, schema["items"], f"{where}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _coerce(value, allowed: list[str]):
    """(value, ok): exact JSON types first, then the lenient numeric conversions."""
    for t in allowed:
        if t == "integer" and isinstance(value, int) and not isinstance(value, bool):
            return value, True
        if t == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value, True
        if t in _JSON_TYPES and isinstance(value, _JSON_TYPES[t]):
            return value, True
    for t in allowed:
        if t == "integer" and isinstance(value, float) and value.is_integer():
            return int(value), True
        if t in ("integer", "number") and isinstance(value, str):
            try:
                return (int(value) if t == "integer" else float(value)), True
            except ValueError:
                pass
    return value, False


# ---- registry -------------------------------------------------------------------------------------
class ToolRegistry:
    """Named tools. `call` never raises: unknown names and bad arguments become failed results."""

    def __init__(self, tools: typing.Iterable[Tool | Callable] = ()):
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.register(t)

    def register(self, t: Tool | Callable) -> Tool:
        t = t if isinstance(t, Tool) else tool(t)
        if t.name in self._tools:
            raise ValueError(f"a tool named {t.name!r} is already registered")
        self._tools[t.name] = t
        return t

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def __getitem__(self, name: str) -> Tool:
        return self._tools[name]

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return list(self._tools)

    def schemas(self) -> list[dict]:
        return [t.schema() for t in self._tools.values()]

    def call(self, name: str, arguments: dict | None) -> ToolResult:
        t = self._tools.get(name)
        if t is None:
            return ToolResult.failure(f"unknown tool {name!r}; available tools: {', '.join(self._tools) or 'none'}")
        return t(arguments)


# ---- built-in: calculator (an arithmetic evaluator over the parsed tree; nothing is executed) -----
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNOPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CONSTS = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf}
_FUNCS: dict[str, Callable] = {
    "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log10": math.log10, "log2": math.log2,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos,
    "atan": math.atan, "sinh": math.sinh, "cosh": math.cosh, "tanh": math.tanh, "degrees": math.degrees,
    "radians": math.radians, "abs": abs, "round": round, "floor": math.floor, "ceil": math.ceil,
    "factorial": math.factorial, "gcd": math.gcd, "lcm": math.lcm, "min": min, "max": max,
    "comb": math.comb, "perm": math.perm,
}
_MAX_BITS = 1 << 16  # integers up to ~20k digits: enough for arithmetic, too small to hang the host


class CalculatorError(ValueError):
    pass


def _calc(node: ast.AST):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTS:
        return _CONSTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNOPS:
        return _UNOPS[type(node.op)](_calc(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _calc(node.left), _calc(node.right)
        if isinstance(node.op, ast.Pow) and isinstance(a, int) and isinstance(b, int) and b > 0 \
                and abs(a) > 1 and abs(a).bit_length() * b > _MAX_BITS:
            raise CalculatorError("the result is too large")
        out = _BINOPS[type(node.op)](a, b)
        if isinstance(out, int) and out.bit_length() > _MAX_BITS:
            raise CalculatorError("the result is too large")
        return out
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS \
            and not node.keywords:
        args = [_calc(a) for a in node.args]
        if node.func.id in ("factorial", "comb", "perm") and any(isinstance(a, int) and a > 5000 for a in args):
            raise CalculatorError(f"{node.func.id} of a number above 5000 is too large")
        return _FUNCS[node.func.id](*args)
    what = type(node).__name__ if not isinstance(node, ast.Name) else f"name {node.id!r}"
    raise CalculatorError(f"unsupported element in expression: {what} (allowed: numbers, + - * / // % **, "
                          f"parentheses, {', '.join(_CONSTS)}, and functions {', '.join(_FUNCS)})")


def evaluate(expression: str) -> int | float:
    """Evaluate an arithmetic expression safely. `^` means power. Raises CalculatorError."""
    expr = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    if not expr:
        raise CalculatorError("empty expression")
    if len(expr) > 1000:
        raise CalculatorError("expression longer than 1000 characters")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"not a valid expression: {e.msg}") from None
    try:
        return _calc(tree.body)
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except (OverflowError, ValueError, TypeError, RecursionError) as e:
        if isinstance(e, CalculatorError):
            raise
        raise CalculatorError(f"{type(e).__name__}: {e}") from None


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly (integers stay exact) and return the result.

    Args:
        expression: e.g. "(12.5 * 4 - 3) / 7", "2**100", "sqrt(2) * pi", "factorial(20)".
    """
    try:
        value = evaluate(expression)
    except CalculatorError as e:
        return ToolResult.failure(str(e))
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value) if isinstance(value, int) else repr(value)


# ---- built-in: read a file from the session directory -----------------------------------------------
def make_read_file(workdir: str | os.PathLike, max_chars: int = 20000) -> Tool:
    """A `read_file(path)` tool confined to `workdir`: no absolute paths, no `..`, no symlink out."""
    root = Path(workdir).resolve()

    def read_file(path: str, offset: int = 0) -> str:
        """Read a text file from the session's working directory (where uploaded files are).

        Args:
            path: file name relative to the working directory, e.g. "data.csv".
            offset: character offset to start from, for reading long files in parts.
        """
        target = (root / path).resolve()
        # resolve() follows every link, so a link the kernel planted that points outside fails here.
        if not target.is_relative_to(root) or os.path.isabs(path):
            return ToolResult.failure(f"{path!r} is outside the working directory; use a relative name")
        if not target.is_file():
            names = sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
            return ToolResult.failure(f"no file {path!r}; files here: {', '.join(names) or 'none'}")
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            # The kernel can write this directory and could swap a parent for a link between the check
            # and the open: ask the kernel which file was really opened before reading it.
            opened = Path(os.readlink(f"/proc/self/fd/{fd}")) if os.path.exists("/proc/self/fd") else target
            if not opened.is_relative_to(root):
                return ToolResult.failure(f"{path!r} is outside the working directory")
            raw = f.read(4 * (offset + max_chars) + 4)
        if b"\0" in raw[:4096]:
            return ToolResult.failure(f"{path!r} is a binary file; use the python interpreter to read it")
        text = raw.decode("utf-8", errors="replace")
        part = text[offset: offset + max_chars]
        more = len(text) > offset + max_chars
        return part + (f"\n[... truncated; call again with offset={offset + max_chars} for more]" if more else "")

    return tool(read_file)


# ---- built-in: the code interpreter as a plugin tool ----------------------------------------------
def make_python_tool(interpreter) -> Tool:
    """A `python(code)` tool running in `interpreter` (a `puyu.agent.interpreter.Interpreter`)."""

    def python(code: str) -> ToolResult:
        """Run Python code in a stateful Jupyter kernel in the working directory; returns the output,
        errors as tracebacks, and figures as image files.

        Args:
            code: the Python source to run.
        """
        r = interpreter.run(code)
        return ToolResult(r.for_model(), ok=r.error is None, error=r.error, images=list(r.images))

    return tool(python)


def default_tools(workdir: str | os.PathLike | None = None, interpreter=None) -> ToolRegistry:
    """The built-ins: calculator, plus read_file when a workdir is given, plus python with an interpreter."""
    reg = ToolRegistry([calculator])
    if workdir is not None:
        reg.register(make_read_file(workdir))
    if interpreter is not None:
        reg.register(make_python_tool(interpreter))
    return reg
