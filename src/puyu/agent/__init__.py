"""Tools, the sandboxed code interpreter and the multi-step agent loop of the InternLM2 protocol.

protocol (parsing the model's tool and interpreter calls), tools (schemas from Python functions, argument
checking), sandbox (bubblewrap and resource limits), interpreter (a real Jupyter kernel in the sandbox),
loop (Agent: model -> call -> environment turn -> model), chat (`puyu chat`).

Layer rule (import-linter, pyproject.toml): imports `puyu.engine`, `puyu.model` and `puyu.errors` only.
"""

from puyu.agent.interpreter import Interpreter
from puyu.agent.loop import Agent

__all__ = ["Agent", "Interpreter"]
