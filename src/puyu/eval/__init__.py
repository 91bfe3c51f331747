"""Evaluation: one module per benchmark, each a `Task` (samples, generation settings, a pure
`score(prediction, record) -> float in [0, 1]` that RL reuses as a reward), two backends (the local
engine and any OpenAI-compatible endpoint), resumable predictions and reports (`puyu eval`).

Tasks: arithmetic, gsm8k, math (competition_math.py), needle, tools, perplexity; `get_task(name)`.
Shared: task.py (the contract), verify_pool.py (math-verify workers),
stats.py (Wilson, pass@k, maj@k), backends.py, runner.py, report.py, cli.py (`puyu eval`).

Layer rule (import-linter, pyproject.toml): may import `puyu.agent`, `puyu.engine`, `puyu.model`,
`puyu.tasks` and `puyu.errors`; never `puyu.train`, `puyu.serve`, `puyu.data` or `puyu.rl`.
"""

from __future__ import annotations

import importlib

from puyu.eval.task import Context, EvalError, Generation, Sample, Task

# task name -> module defining TASK (imported on first use)
TASKS = {
    "arithmetic": "puyu.eval.arithmetic",
    "gsm8k": "puyu.eval.gsm8k",
    "math": "puyu.eval.competition_math",
    "needle": "puyu.eval.needle",
    "tools": "puyu.eval.tools",
    "perplexity": "puyu.eval.perplexity",
}


def get_task(name: str) -> Task:
    """The task object called `name` (EvalError listing the known names otherwise)."""
    if name not in TASKS:
        raise EvalError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name]).TASK


__all__ = ["TASKS", "Context", "EvalError", "Generation", "Sample", "Task", "get_task"]
