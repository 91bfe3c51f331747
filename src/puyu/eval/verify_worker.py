"""One math-verify worker: reads JSON lines `[gold, pred]` on stdin, writes `["ok", bool]` lines on
stdout (first line `["ready", null]`, or `["error", message]` when math-verify is missing).

Started by `puyu.eval.verify_pool` as `python path/to/verify_worker.py` (run as a script, so the worker
imports neither the puyu package nor the caller's `__main__`; unlike multiprocessing's spawn, it works
from a script without an `if __name__ == "__main__"` guard and from forked children).
"""

from __future__ import annotations

import os
import sys

# run as a script, this file's folder is sys.path[0], where any module named like a standard-library one (this
# folder once held a numbers.py, which shadowed the `numbers` SymPy imports) would shadow it: drop the folder
# before importing anything else
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import json  # noqa: E402


def main() -> None:
    import logging

    out = sys.stdout
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns that its own timeouts are off

    def send(kind, value) -> None:
        out.write(json.dumps([kind, value]) + "\n")
        out.flush()

    try:
        from math_verify import parse, verify
    except Exception as e:  # math-verify is missing: say so once
        send("error", f"math-verify is not installed: {e} (pip install 'puyu[eval]')")
        return
    send("ready", None)
    for line in sys.stdin:
        if not line.strip():
            continue
        gold, pred = json.loads(line)
        try:
            g = parse("\\boxed{" + gold + "}", parsing_timeout=None)
            p = parse("\\boxed{" + pred + "}", parsing_timeout=None)
            ok = bool(g) and bool(p) and verify(g, p, timeout_seconds=None)
        except Exception:  # a parse/compare failure is "not shown equivalent", not a crash
            ok = False
        send("ok", bool(ok))


if __name__ == "__main__":
    main()
