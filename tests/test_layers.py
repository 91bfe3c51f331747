"""The layer rules of README "Layout": the import-linter contracts in pyproject.toml hold, and no module
inside the package imports the root `puyu` (whose lazy exports would let a low layer reach a high one
without the contracts seeing it)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "puyu"


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (pip install 'puyu[dev]')")
    r = subprocess.run([exe, "--no-cache"], cwd=SRC.parents[1], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout and " 0 broken" in r.stdout


def test_no_module_imports_the_package_root():
    offenders = []
    for f in sorted(SRC.rglob("*.py")):
        if f == SRC / "__init__.py":
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            if isinstance(node, ast.Import) and any(a.name == "puyu" for a in node.names):
                offenders.append(f"{f.relative_to(SRC)}:{node.lineno} import puyu")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "puyu":
                names = [a.name for a in node.names]
                # `from puyu import model` names a sub-package (the contracts see it); an attribute does not
                subpackages = {p.name for p in SRC.iterdir() if p.is_dir()} | {p.stem for p in SRC.glob("*.py")}
                subpackages.add("__version__")  # a constant, not a lazy export
                if any(n not in subpackages for n in names):
                    offenders.append(f"{f.relative_to(SRC)}:{node.lineno} from puyu import {', '.join(names)}")
    assert not offenders, "modules importing the package root:\n" + "\n".join(offenders)
