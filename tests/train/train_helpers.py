"""Helpers shared by the training tests (imported by name; pytest puts this directory on sys.path)."""

from __future__ import annotations

import random
from pathlib import Path

import yaml


def learnable_records(n_docs: int, seed: int) -> list[dict]:
    """Text with structure a tiny model picks up in a few dozen steps (counting, repeated phrases),
    plus arithmetic prompt/completion records."""
    rng = random.Random(seed)
    words = "the model reads tokens and writes text while the engine batches requests".split()
    recs = []
    for i in range(n_docs):
        k = rng.randrange(len(words))
        line = " ".join(words[(k + j) % len(words)] for j in range(12))
        recs.append({"text": "\n".join([line] * rng.randint(2, 4))})
        if i % 2 == 0:
            a, b = rng.randrange(10), rng.randrange(10)
            recs.append({"prompt": f"{a}+{b}=", "completion": str(a + b)})
    return recs


def write_recipe(path: Path, shards, **sections) -> Path:
    """A nano-tiny pretraining recipe over `shards` (from `tiny_shards`); `sections` override keys,
    e.g. train={"steps": 10}."""
    train_dir, val_dir, tok_dir = shards
    recipe = {
        "model": {"preset": "nano-tiny"},
        "data": {"train": [str(train_dir)], "val": [str(val_dir)], "tokenizer": str(tok_dir), "seq_len": 64},
        "optim": {"lr": 3e-3, "warmup_steps": 5},
        "train": {"out_dir": str(path.parent / "out"), "steps": 20, "batch_size": 8, "eval_every": 10,
                  "log_every": 1, "save_every": 10, "progress": False, "device": "cpu", "save_hf": False,
                  "precision": "fp32"},
    }
    for sec, values in sections.items():
        recipe.setdefault(sec, {}).update(values)
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path
