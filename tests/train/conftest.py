"""Fixtures for the training tests: tiny token shards made with the shared tiny tokenizer, and a
helper that writes a pretraining recipe for the nano-tiny model."""

from __future__ import annotations

import json

import pytest
from train_helpers import learnable_records


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory, tiny_tokenizer):
    """(train shard dir, val shard dir, tokenizer dir) built from `learnable_records`."""
    from puyu.train.shards import tokenize_to_shard

    d = tmp_path_factory.mktemp("train_shards")
    for split, n, seed in (("train", 600, 0), ("val", 60, 1)):
        with open(d / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for r in learnable_records(n, seed):
                f.write(json.dumps(r) + "\n")
        tokenize_to_shard([d / f"{split}.jsonl"], d / split, tiny_tokenizer, progress=False)
    return d / "train", d / "val", tiny_tokenizer.model_file.parent
