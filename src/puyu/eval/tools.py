"""Function calling, checked like an AST (after the Berkeley Function-Calling Leaderboard's AST check):
the right function name; every required argument present; no argument the schema does not declare;
each value of the declared JSON-schema type (an integer is accepted for "number"); values equal after
normalisation (strings stripped and case-folded, numbers by value, lists and objects element-wise).
When no call is expected, the sample scores 1 only if the model makes none. Also reported: the share of
attempted calls that were valid JSON, name accuracy, and "no call when none is needed".

Data: by default a generated held-out set (`puyu.tasks.synthetic.tool_chat` dialogues drawn from their
own seed, plus questions that need no tool, with the demo's two tools; `--option phrasings=held_out`
asks with phrasings no training dialogue uses); or `--data FILE.jsonl` with one
object per line: {"messages": [...], "tools": [OpenAI tool schemas], "expected": [{"name": ...,
"arguments": {...}}]} (an empty `expected` list means no call should be made). The model's output is
read with puyu's action parser (`puyu.agent.protocol.parse_turn`); API backends' `tool_calls` are turned
into the same action text first.
"""

from __future__ import annotations

import json
import random
from fractions import Fraction

from puyu.agent.protocol import ActionError, InterpreterCall, PluginCall, parse_turn
from puyu.eval.task import Context, EvalError, Generation, Sample, Task, apply_limit, read_records

NO_TOOL_QUESTIONS = ["Hello!", "Who are you?", "Thank you!", "What can you do?", "Good morning."]
_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
          "array": (list,), "object": (dict,), "null": (type(None),)}


def _norm(v):
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return Fraction(v).limit_denominator(10**9)
    if isinstance(v, str):
        return " ".join(v.split()).casefold()
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def _type_ok(value, schema: dict) -> bool:
    t = schema.get("type")
    if t is None:
        return True
    kinds = t if isinstance(t, list) else [t]
    for k in kinds:
        py = _TYPES.get(k)
        if py is None:
            return True  # a type this checker does not know: not held against the model
        if isinstance(value, bool) and k in ("integer", "number"):
            continue  # JSON true is not a number
        if isinstance(value, py):
            if "enum" in schema and value not in schema["enum"]:
                return False
            return True
    return False


def check_call(call: PluginCall, expected: dict, tools: list[dict], exact: bool = False) -> dict:
    """{name, required, unknown, types, values: bool} of one call against one expected call. `exact`:
    values must equal the expected ones as they are (no stripping or case-folding; the nano recipe's
    "exactly the right city")."""
    schema = {}
    for t in tools or []:
        f = t.get("function", t)
        if f.get("name") == expected["name"]:
            schema = f.get("parameters") or {}
    props = schema.get("properties", {})
    required = schema.get("required", [])
    args = call.arguments
    exp = expected.get("arguments") or {}
    res = {"name": call.name == expected["name"],
           "required": all(k in args for k in required),
           "unknown": all(k in props for k in args) if props else True,
           "types": all(_type_ok(v, props.get(k, {})) for k, v in args.items()),
           "values": all(k in args and (args[k] == v if exact else _norm(args[k]) == _norm(v))
                         for k, v in exp.items())}
    return res


def _expected(record: dict) -> list[dict]:
    exp = record.get("expected")
    if not isinstance(exp, list):
        raise EvalError("tools: the sample has no 'expected' list of calls")
    return exp


def judge(prediction: str, record: dict, exact: bool = False) -> dict:
    """The per-sample verdict and its parts (`exact`: see `check_call`). The one implementation of the
    call check: the suite's `tools` task and the nano recipe's measurements (`puyu.eval.tool_use`) both
    score with it."""
    exp = _expected(record)
    turn = parse_turn(prediction or "")
    action = turn.action
    called = action is not None
    out = {"called": called, "valid_json": None, "name": None, "args": None,
           "call": None if not isinstance(action, PluginCall) else {"name": action.name, "arguments": action.arguments}}
    if isinstance(action, InterpreterCall):
        out["call"] = {"name": "<interpreter>", "arguments": {}}
    if called:
        out["valid_json"] = not (isinstance(action, ActionError) and action.kind == "plugin")
    if not exp:
        out["ok"] = not called
        return out
    if len(exp) > 1:
        raise EvalError("tools: InternLM2 makes one call per turn; give one expected call per sample")
    if not isinstance(action, PluginCall):
        out["ok"] = False
        out["name"] = False
        out["args"] = False
        return out
    parts = check_call(action, exp[0], record.get("tools") or [], exact=exact)
    out["name"] = parts["name"]
    out["args"] = all(parts.values())
    out["parts"] = parts
    out["ok"] = out["args"]
    return out


def generated_set(seed: int, n: int, phrasings: str = "train", no_call_every: int = 6) -> list[dict]:
    """`n` records drawn from `seed`: tool dialogues cut before the call and, every `no_call_every`-th
    (0: none), a question needing no tool. `phrasings`: "train" (the SFT data's questions,
    `puyu.tasks.synthetic.tool_chat`) or "held_out" (phrasings no training dialogue uses; the
    functions and cities are drawn evenly, in a seeded order)."""
    from puyu.tasks.synthetic import CITIES, SYSTEM, TOOLS, tool_call_question, tool_chat

    if phrasings not in ("train", "held_out"):
        raise EvalError(f"tools: phrasings must be train or held_out, got {phrasings!r}")
    rng = random.Random(f"puyu-tools-eval-{seed}" + ("" if phrasings == "train" else "-held-out"))
    asks = [(fn, CITIES[i % len(CITIES)]) for i, fn in zip(range(n), ["get_weather", "get_time"] * n)]
    if phrasings == "held_out":
        rng.shuffle(asks)
    out = []
    while len(out) < n:
        if no_call_every and len(out) % no_call_every == no_call_every - 1:
            q = rng.choice(NO_TOOL_QUESTIONS)
            out.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                        "tools": TOOLS, "expected": []})
            continue
        if phrasings == "held_out":
            fn, city = asks[len(out)]
            q = tool_call_question(rng, fn, city, held_out=True)
            out.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                        "tools": TOOLS, "expected": [{"name": fn, "arguments": {"city": city}}]})
            continue
        d = tool_chat(rng)
        call = d["messages"][2]["tool_calls"][0]["function"]
        out.append({"messages": d["messages"][:2], "tools": d["tools"],
                    "expected": [{"name": call["name"], "arguments": call["arguments"]}]})
    return out


class Tools(Task):
    name = "tools"
    description = "function calling checked like an AST (name, required/unknown arguments, types, values)"
    options = ("n", "phrasings")
    data = "optional"
    generation = Generation(max_new_tokens=96, temperature=0.7)
    interpreter_ok = False  # the call itself is scored; the agent would execute it instead

    def samples(self, ctx: Context) -> list[Sample]:
        if ctx.data:
            rows = read_records(ctx.data, "tools")
        else:
            n = ctx.limit or int(ctx.options.get("n", 60))
            rows = [(f"generated:{i}", r) for i, r in
                    enumerate(generated_set(ctx.seed, n, str(ctx.options.get("phrasings", "train"))))]
        out = []
        for where, row in rows:
            if not isinstance(row.get("messages"), list) or not row["messages"]:
                raise EvalError(f"tools: {where}: 'messages' must be a non-empty list")
            if not isinstance(row.get("expected"), list):
                raise EvalError(f"tools: {where}: 'expected' must be a list of calls ([] for none)")
            for e in row["expected"]:
                if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                    raise EvalError(f"tools: {where}: each expected call needs a 'name'")
            out.append(Sample(id=str(len(out)), record=row, messages=row["messages"], tools=row.get("tools"),
                              groups={"expects": row["expected"][0]["name"] if row["expected"] else "no call"}))
        return apply_limit(out, ctx.limit, "tools")

    def score(self, prediction: str, record: dict) -> float:
        return float(judge(prediction, record)["ok"])

    def extract(self, prediction: str, record: dict) -> str | None:
        call = judge(prediction, record)["call"]
        return json.dumps(call, sort_keys=True) if call else "no call"

    def details(self, prediction: str, record: dict) -> dict:
        j = judge(prediction, record)
        return {k: j[k] for k in ("called", "valid_json", "name", "args")}


TASK = Tools()
