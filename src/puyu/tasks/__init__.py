"""Task data and scoring as pure functions: generators of the synthetic tasks (arithmetic, passkey,
copying, chats, tool and interpreter dialogues) with their held-out sets, and their scorers.

No engine and no model runs here, so training (SFT data), evaluation and RL (rewards) share one
implementation. Layer rule (import-linter, pyproject.toml): imports `puyu.model` (the chat format) and
`puyu.errors` only.
"""
