"""Shared fixtures for the data-pipeline tests: one small synthetic corpus per session."""

from __future__ import annotations

import pytest

from puyu.data.synthetic import write_corpus


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> str:
    """600 labelled documents in 4 JSONL.zst shards (plus 8 planted broken lines)."""
    out = tmp_path_factory.mktemp("corpus")
    write_corpus(str(out), n_docs=600, shards=4, seed=1)
    return str(out)
