"""`puyu serve`: the OpenAI-compatible HTTP server and its web chat.

app (FastAPI routes, limits, errors), chat (requests -> prompts -> engine streams -> OpenAI chunks),
sessions (per-session interpreter workspaces and uploads), openai_schema (request and response models),
web/ (the static chat page).

Layer rule (import-linter, pyproject.toml): the top of the serving stack; imports `puyu.agent`,
`puyu.engine`, `puyu.model` and `puyu.errors`, never training, data, evaluation or RL code.
"""
