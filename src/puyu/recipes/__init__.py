"""Recipes that chain stages end to end: the nano recipe behind `make demo` (corpus, tokenizer, pretrain,
long context, SFT, evaluation; later alignment).

Layer rule (import-linter, pyproject.toml): stands on top beside `puyu.cli` and may import every layer.
"""
