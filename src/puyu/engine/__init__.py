"""The inference engine: continuous batching over a paged KV cache, sampling, prefix reuse, and the
native decode kernel.

scheduler (Engine, chat_policy), kv_cache (PagedKVCache, attention over block tables), sampling
(SamplingParams), detokenize (incremental text and stop strings), decode_step (the PyTorch decode path),
fused_decode (.py/.c: the native decode path), generate (`puyu generate`).

Layer rule (import-linter, pyproject.toml): imports `puyu.model` and `puyu.errors` only.
"""

from puyu.engine.sampling import SamplingParams
from puyu.engine.scheduler import Engine, chat_policy

__all__ = ["Engine", "SamplingParams", "chat_policy"]
