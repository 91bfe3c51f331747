"""The nano recipe's text corpus: the Python standard library's own documentation, rendered with
`pydoc` from the modules installed with this Python, so it exists on every machine without a download.

Each module becomes one document (pydoc's plain-text page: description, classes, functions and their
docstrings). Lines that differ between machines (the FILE path, the versioned docs URL) are removed, and
so are the memory addresses in default values' reprs (`<function copy2 at 0x7f44dde3a7a0>` becomes
`<function copy2>`), which differ between two processes on one machine: with them the same seed gave a
different corpus, tokenizer and training run each time.
`docstring_facts` also collects (qualified name, first docstring line) pairs for short Q&A chats.
"""

from __future__ import annotations

import importlib
import inspect
import io
import pydoc
import re
import warnings
from contextlib import redirect_stderr, redirect_stdout

# Pure-Python, import-safe modules with substantial documentation (no GUI, no side effects on import).
MODULES = [
    "json", "re", "os", "pathlib", "collections", "itertools", "functools", "random", "math", "statistics",
    "string", "textwrap", "datetime", "heapq", "bisect", "csv", "argparse", "logging", "shutil",
    "subprocess", "typing", "dataclasses", "enum", "fractions", "decimal", "io", "tempfile", "glob",
    "hashlib", "base64", "pickle", "copy", "pprint", "unittest", "doctest", "zipfile", "tarfile", "gzip",
    "sqlite3", "urllib.parse", "html", "xml.etree.ElementTree", "email.message", "socket", "threading",
    "queue", "contextlib", "abc", "operator", "inspect", "ast", "calendar", "uuid", "secrets", "difflib",
    "array", "struct", "codecs", "unicodedata", "shlex", "configparser", "sched", "traceback", "warnings",
    "weakref", "types", "numbers", "cmath", "platform", "asyncio", "time", "sys", "fnmatch", "filecmp",
    "zlib", "binascii", "timeit", "tokenize", "keyword", "graphlib", "ipaddress", "mimetypes", "wave",
]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # `<... at 0x7f44dde3a7a0>`: differs per process
_DROP_SECTIONS = {"FILE", "MODULE REFERENCE", "VERSION", "AUTHOR", "CREDITS", "DATA"}


def _clean(page: str) -> str:
    """Drop machine-specific sections, pydoc's backspace bolding and object addresses; keep the rest verbatim."""
    page = re.sub(r".\x08", "", page)
    page = _ADDRESS.sub("", page)
    out, skipping = [], False
    for line in page.splitlines():
        if line and not line.startswith(" "):  # a section heading such as "FUNCTIONS"
            skipping = line.strip() in _DROP_SECTIONS
        if not skipping:
            out.append(line.rstrip())
    return "\n".join(out).strip() + "\n"


def stdlib_docs(max_chars: int | None = None, modules: list[str] | None = None) -> list[dict]:
    """[{"text": page, "module": name}] for each importable module, at most `max_chars` in total."""
    docs, total = [], 0
    for name in modules or MODULES:
        try:
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
                page = pydoc.render_doc(mod, renderer=pydoc.plaintext)
        except Exception:  # a module missing from this build of Python: skip it
            continue
        text = _clean(page)
        if max_chars is not None and total + len(text) > max_chars:
            text = text[: max(0, max_chars - total)]
        if text.strip():
            docs.append({"text": text, "module": name})
            total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    return docs


def docstring_facts(modules: list[str] | None = None, max_len: int = 140) -> list[tuple[str, str]]:
    """(module.function, first sentence of its docstring) for public functions with short docstrings."""
    facts = []
    for name in modules or MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except Exception:
            continue
        for attr, obj in sorted(vars(mod).items()):
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            first = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
            if 10 <= len(first) <= max_len and not first.startswith(attr + "("):
                facts.append((f"{name}.{attr}", first))
    return facts
