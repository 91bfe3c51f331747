"""Training: the loop and its stages (pretrain, long-context, SFT), tokenized shards, checkpoints.

Layer rule (checked by import-linter, see pyproject.toml): `puyu.train` may import `puyu.model`,
`puyu.engine`, `puyu.data`, `puyu.tasks` and `puyu.errors`; never `agent`, `serve`, `eval`, `rl`,
the recipes or the CLI. The `puyu train ...` command lives in `puyu.cli.train`.

Files: recipe.py (typed YAML), shards.py (tokenizing), dataset.py (rows and their order), optim.py
(AdamW groups, schedule, clipping), state.py (checkpoints), distributed.py (torchrun, DDP/FSDP),
metrics.py (JSONL, PNG), pretrain.py (the loop), sft.py (chat masking), corpus.py (nano documentation
corpus), evaluate.py (greedy task accuracy).
"""
