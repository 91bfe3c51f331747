"""Shared fixtures: a tiny trained tokenizer, the real InternLM2 tokenizer (skipped when absent), and a
tiny random model saved as a Hugging Face directory."""

from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # before torch is imported; see puyu/cli.py

import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REF_TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "internlm2" / "tokenizer.model"

_WORDS = ("the model reads tokens and writes text while the engine batches requests on a small cpu "
          "def return import print class for while if else 0 1 2 3 4 5 6 7 8 9 + - = ( ) [ ] { } : , .").split()
_ZH = "你好世界我们今天学习语言模型书生浦语上海人工智能实验室数据清洗训练推理"
_EMOJI = "😀🚀🎉👍🔥🌏"


def sample_text(n_lines: int = 2000, seed: int = 0) -> str:
    """Mixed English / Chinese / emoji / code-like lines for tokenizer training in tests."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        parts = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        if rng.random() < 0.4:
            parts.append("".join(rng.choice(_ZH) for _ in range(rng.randint(2, 8))))
        if rng.random() < 0.2:
            parts.append(rng.choice(_EMOJI))
        if rng.random() < 0.3:
            parts.append(f"{rng.randint(0, 999)}+{rng.randint(0, 999)}")
        lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from puyu.model.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("tiny_tok")
    (d / "corpus.txt").write_text(sample_text(), encoding="utf-8")
    return train_tokenizer([d / "corpus.txt"], d / "tok", vocab_size=400)


@pytest.fixture(scope="session")
def ref_tokenizer():
    if not REF_TOKENIZER.exists():
        pytest.skip(f"reference InternLM2 tokenizer not found at {REF_TOKENIZER}")
    from puyu.model.tokenizer import load_tokenizer

    return load_tokenizer(REF_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A random nano-tiny model with the tiny tokenizer's vocab, saved as a Hugging Face directory."""
    from puyu.model.checkpoint import save_pretrained
    from puyu.model.config import get_preset
    from puyu.model.transformer import InternLM2ForCausalLM

    cfg = get_preset("nano-tiny", vocab_size=tiny_tokenizer.vocab_size)
    model = InternLM2ForCausalLM(cfg).reset_parameters(seed=0)
    d = tmp_path_factory.mktemp("tiny_ckpt")
    save_pretrained(model, d, tokenizer=tiny_tokenizer)
    return d


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny-model forwards on one thread: at nano sizes a second thread costs more in
    synchronisation than it saves, and the suite shares a 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
