"""The nano corpus's documentation text is the same in every process (the same seed, the same run)."""

import hashlib
import subprocess
import sys

from puyu.train.corpus import _clean, stdlib_docs

# Modules whose pydoc pages print default values with addresses (`<function copy2 at 0x...>`,
# `<built-in method match of re.Pattern object at 0x...>`, weakrefs in logging.shutdown).
MODULES = ["shutil", "json", "logging"]

_PROGRAM = (
    "import hashlib, json\n"
    "from puyu.train.corpus import stdlib_docs\n"
    f"docs = stdlib_docs(modules={MODULES!r})\n"
    "print(hashlib.sha256(json.dumps(docs).encode()).hexdigest())\n"
)


def test_clean_drops_object_addresses_and_keeps_the_rest():
    page = "FUNCTIONS\n    copytree(src, copy_function=<function copy2 at 0x7f44dde3a7a0>, x=1)\n"
    assert _clean(page) == "FUNCTIONS\n    copytree(src, copy_function=<function copy2>, x=1)\n"


def test_docs_have_no_addresses():
    docs = stdlib_docs(modules=MODULES)
    assert [d["module"] for d in docs] == MODULES
    text = "".join(d["text"] for d in docs)
    assert "copy_function=<function copy2>" in text  # the repr is kept, only its address goes
    assert " at 0x" not in text


def test_two_processes_render_the_same_docs():
    # Addresses differ between processes (ASLR), so this fails when any survives the cleaning.
    runs = [subprocess.run([sys.executable, "-c", _PROGRAM], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1]
    assert len(runs[0].strip()) == len(hashlib.sha256().hexdigest())
