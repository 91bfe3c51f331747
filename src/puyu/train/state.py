"""Training checkpoints: atomic, verified, resumable.

Layout: `<out_dir>/checkpoints/step_000100/` holding
- `state.pt`: one `torch.save` of {"model", "optimizer", "step", "data", "rng", "recipe", "world_size"};
  model and optimizer states are full (unsharded) state dicts keyed by parameter name, so a checkpoint
  written by N processes (DDP or FSDP) resumes on any number of processes;
- `manifest.json`: format version, step, and each file's byte size and SHA-256.

Writing is atomic: everything goes to `step_000100.tmp-<pid>/`, is flushed with fsync, and the directory
is renamed to its final name only when complete. A crash mid-write leaves a `.tmp-*` directory, which is
never read (and is cleaned up by the next save). On reading, the manifest is checked first: a missing
manifest, a missing file, a wrong size (truncated) or a wrong hash (corrupted) is refused with a
`CheckpointError` that says which. `find_latest` skips such checkpoints with a warning, so the previous
good one stays usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

import torch

from puyu.errors import CheckpointError

FORMAT = 1
_STEP_DIR = re.compile(r"step_(\d+)")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rng_state() -> dict:
    """Every random number generator the loop touches (Python, torch CPU, CUDA when present)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(state["python"]) if not isinstance(state["python"], tuple) else state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dir(ckpt_root: str | Path, step: int) -> Path:
    return Path(ckpt_root) / f"step_{step:06d}"


def save_checkpoint(ckpt_root: str | Path, step: int, payload: dict, keep: int = 2) -> Path:
    """Atomically write `payload` (see module docstring) as checkpoint `step`; keep the newest `keep`.
    Returns the final directory. Only one process should call this (rank 0)."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("step_*.tmp-*"):  # leftovers of a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)
    final = step_dir(root, step)
    tmp = root / f"{final.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    state_file = tmp / "state.pt"
    with open(state_file, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    manifest = {"format": FORMAT, "step": step,
                "files": {"state.pt": {"bytes": state_file.stat().st_size, "sha256": sha256_file(state_file)}}}
    with open(tmp / "manifest.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step: swap the old one out first
        old = root / f"{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    for stale in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Finished checkpoint directories (final names only), oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def verify_checkpoint(path: str | Path) -> dict:
    """Check a checkpoint directory against its manifest; return the manifest or raise CheckpointError."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    mf = path / "manifest.json"
    if not mf.exists():
        raise CheckpointError(f"checkpoint {path} is partial or not a training checkpoint: no manifest.json "
                              f"(it is written last, so the save did not finish)")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} has a corrupt manifest.json ({e})") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {manifest.get('format')!r}; this puyu reads {FORMAT}")
    for name, info in files.items():
        f = path / name
        if not f.exists():
            raise CheckpointError(f"checkpoint {path} is partial: {name} is missing")
        size = f.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"checkpoint {path} is truncated or partial: {name} has {size} bytes, "
                                  f"the manifest says {info['bytes']}")
        if sha256_file(f) != info["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: the SHA-256 of {name} does not match its manifest")
    return manifest


def load_checkpoint(path: str | Path) -> dict:
    """Verify, then read the payload of a checkpoint directory (on CPU)."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        return torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for unreadable pickles
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None


def find_latest(ckpt_root: str | Path, warn=None) -> Path | None:
    """The newest checkpoint that verifies; newer broken ones are reported through `warn` and skipped."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    for path in reversed(list_checkpoints(ckpt_root)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as e:
            warn(f"{e}; trying the previous checkpoint")
    return None
