"""Evaluation (reserved for the evaluation suite).

Layer rule (import-linter, pyproject.toml): may import `puyu.agent`, `puyu.engine`, `puyu.model`,
`puyu.tasks` and `puyu.errors`; never `puyu.train`, `puyu.serve`, `puyu.data` or `puyu.rl`.
"""
