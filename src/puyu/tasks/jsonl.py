"""JSON Lines files: one JSON value a line (samples, preference pairs, predictions, SFT conversations).

The one reader and writer for the layers above (`puyu.rl`, `puyu.eval`, `puyu.train`, the recipes).
`read_jsonl` skips blank lines and raises the caller's error class naming `file:line` of a bad line;
with `torn_tail=True` a bad *last* line is dropped instead (the line a killed run was writing), which is
how resumable outputs (eval predictions) are read back.
"""

from __future__ import annotations

import json
from pathlib import Path

from puyu.errors import PuyuError


class JSONLError(PuyuError):
    """A JSON Lines file that cannot be read (missing, or a line that is not JSON)."""


def read_jsonl(path: str | Path, error: type[Exception] = JSONLError, torn_tail: bool = False,
               missing_ok: bool = False) -> list:
    """The values of a JSONL file, in order. `error`: the exception class raised (message
    "FILE:LINE: not valid JSON (...)", or "FILE does not exist"); `missing_ok`: a missing file reads as [];
    `torn_tail`: an unparsable last line is dropped, not an error."""
    p = Path(path)
    if not p.is_file():
        if missing_ok:
            return []
        raise error(f"{p} does not exist")
    lines = p.read_text(encoding="utf-8").splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if torn_tail and n == len(lines):
                break
            raise error(f"{p}:{n}: not valid JSON ({e.msg})") from None
    return out


def write_jsonl(path: str | Path, records, default=None) -> Path:
    """Write `records` (an iterable of JSON values) one a line, UTF-8 kept as is; creates the folder.
    `default`: passed to `json.dumps` for values JSON cannot encode (e.g. `str`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, default=default) + "\n")
    return p
