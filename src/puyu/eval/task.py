"""The task contract shared by every benchmark, `puyu eval` and RL rewards.

A task is a module-level object with
- `name`, `description` (one line, `puyu eval tasks`), `generation` (max_new_tokens, temperature for
  repeats, stop strings), `backends` (which backends can run it);
- `samples(ctx) -> list[Sample]`: the prompts, each with the dataset's own row as `record`;
- `score(prediction, record) -> float in [0, 1]`: pure (no engine, no model, no globals that change a
  verdict), so RL can call it as a reward from worker threads or processes; tasks pickle;
- `extract(prediction, record) -> str | None`: the answer `score` compared (recorded, and the key of
  maj@k); `details(prediction, record) -> dict`: extra per-sample figures (e.g. strict vs flexible).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from puyu.errors import PuyuError


class EvalError(PuyuError):
    """A problem with an evaluation's input: a dataset file, a sample, a task name, an endpoint."""


@dataclass
class Generation:
    """Generation settings of a task. `temperature` applies to `--repeats K` (K > 1); single runs are
    greedy. `stop`: extra stop strings."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    stop: list[str] = field(default_factory=list)


@dataclass
class Sample:
    """One prompt. Exactly one of `messages` (chat) or `prompt` (raw text, special tokens allowed) or
    `prompt_ids` (token ids; local backend only). `record` is the dataset row that `score` reads;
    `groups` are the report's breakdown keys (level, type, size, length, depth...)."""

    id: str
    record: dict
    messages: list[dict] | None = None
    prompt: str | None = None
    prompt_ids: list[int] | None = None
    tools: list[dict] | None = None
    groups: dict = field(default_factory=dict)
    max_new_tokens: int | None = None  # overrides the task's
    # True for prompts that go past the model's context on purpose (the needle grid's lengths beyond the
    # trained length): the local backend sends them as they are, neither capped nor refused
    beyond_context: bool = False


@dataclass
class Context:
    """What `samples()` may use: options from the command line and, when the backend is local or a
    tokenizer was given, the evaluated model's tokenizer and config."""

    data: str | None = None
    limit: int | None = None
    seed: int = 0
    tokenizer: object = None
    model_config: object = None
    options: dict = field(default_factory=dict)
    interpreter: bool = False


class Task:
    name = ""
    description = ""
    generation = Generation()
    backends = ("local", "api")
    interpreter_ok = True  # whether --interpreter applies (chat samples answered in text)
    options: tuple[str, ...] = ()  # the `--option KEY=VALUE` keys this task reads
    data = ""  # "required": needs `--data`; "optional": reads it when given; "": reads none

    def samples(self, ctx: Context) -> list[Sample]:
        raise NotImplementedError

    def score(self, prediction: str, record: dict) -> float:
        raise NotImplementedError

    def extract(self, prediction: str, record: dict) -> str | None:
        return None

    def details(self, prediction: str, record: dict) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"<task {self.name}>"


def read_records(path: str | Path, what: str) -> list[tuple[str, dict]]:
    """Rows of a JSONL file, a JSON file (a list, or one object), or a folder of such files (MATH's
    release: one JSON per problem, nested by type), as (where, row) with `where` = "file:line".
    Raises EvalError naming the file and line of anything unreadable."""
    p = Path(path)
    if not p.exists():
        raise EvalError(f"{what}: {p} does not exist")
    files = sorted(f for f in p.rglob("*") if f.suffix in (".json", ".jsonl")) if p.is_dir() else [p]
    if not files:
        raise EvalError(f"{what}: no .json or .jsonl files under {p}")
    out: list[tuple[str, dict]] = []
    for f in files:
        try:
            raw = f.read_bytes()
        except OSError as e:
            raise EvalError(f"{what}: cannot read {f}: {e.strerror or e}") from e
        try:
            text = raw.decode("utf-8-sig")  # a leading byte-order mark (Windows editors) is dropped
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise EvalError(f"{what}: {f}:{line}: not UTF-8 (byte {raw[e.start]:#04x}); save the file as UTF-8") from e
        if f.suffix == ".json":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise EvalError(f"{what}: {f}:{e.lineno}: not valid JSON ({e.msg})") from e
            rows = obj if isinstance(obj, list) else [obj]
            for i, row in enumerate(rows):
                if not isinstance(row, dict):
                    raise EvalError(f"{what}: {f}: item {i} is not an object")
                out.append((f"{f}:{i}" if len(rows) > 1 else str(f), row))
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalError(f"{what}: {f}:{n}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise EvalError(f"{what}: {f}:{n}: a JSON object per line is expected")
            out.append((f"{f}:{n}", row))
    if not out:
        raise EvalError(f"{what}: {p} has no samples")
    return out


def need(row: dict, keys: tuple[str, ...], where: str, what: str) -> None:
    missing = [k for k in keys if not isinstance(row.get(k), str) or not row.get(k).strip()]
    if missing:
        raise EvalError(f"{what}: {where}: sample has no {', '.join(repr(k) for k in missing)} "
                        f"(a sample without a reference cannot be scored)")


def apply_limit(samples: list[Sample], limit: int | None, what: str) -> list[Sample]:
    """The first `limit` samples; a limit larger than the data takes them all (as lm-evaluation-harness
    and OpenCompass do, so one --limit serves a multi-task run; `puyu eval run` says so on stderr)."""
    if limit is None:
        return samples
    if limit < 1:
        raise EvalError(f"--limit must be at least 1, got {limit}")
    return samples[:limit]
