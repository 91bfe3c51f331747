"""Alignment: reward models and online RL (reserved for the alignment stage).

Layer rule (import-linter, pyproject.toml): may import `puyu.train`, `puyu.eval`, `puyu.agent`,
`puyu.engine`, `puyu.model`, `puyu.tasks` and `puyu.errors`; never `puyu.serve` or `puyu.data`.
"""
