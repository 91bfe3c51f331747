"""Helpers for the engine and agent tests: a small random InternLM2 model of any shape, with non-zero biases
when it has them (the released init zeroes biases, which would hide a bias that is never added), and a
scripted model whose output is known exactly."""

from __future__ import annotations

import torch
from torch import nn

from puyu.model.config import ModelConfig, get_preset
from puyu.model.transformer import InternLM2ForCausalLM

# A nano recipe in miniature (`--set` overrides): a corpus of a few hundred records and a 2-layer, 64-wide model,
# for the recipe tests that run every stage in seconds.
TINY_NANO = ["corpus.docs_chars=30000", "corpus.long_docs_chars=10000", "corpus.arithmetic=3000",
             "corpus.passkey=60", "corpus.long_passkey=30", "corpus.copy=300", "corpus.pretrain_chats=100",
             "corpus.long_arithmetic=300", "corpus.chats=200", "corpus.val_fraction=0.1", "corpus.test_small=20",
             "corpus.test_big=10", "vocab_size=400", "model_overrides={hidden_size: 64, intermediate_size: 176, "
             "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2}"]

BASE = dict(vocab_size=131, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32, rope_theta=10000.0, torch_dtype="float32")


def make_model(**kw) -> InternLM2ForCausalLM:
    model = InternLM2ForCausalLM(ModelConfig(**{**BASE, **kw})).reset_parameters(std=0.1, seed=1).eval()
    if kw.get("bias"):
        g = torch.Generator().manual_seed(2)  # seeded: a test's model must not depend on the tests run before it
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.uniform_(-0.2, 0.2, generator=g)
    return model


class ScriptedModel(nn.Module):
    """Stands in for the transformer: the logits at position p put all their mass on `sequence[p + 1]`
    (eos past its end), so detokenisation, stop strings and streaming are checked on known text."""

    def __init__(self, vocab_size: int, sequence: list[int]):
        super().__init__()
        self.config = get_preset("nano-tiny", vocab_size=vocab_size)
        self.sequence = sequence
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the engine a device and dtype
        self.output = nn.Identity()

    def forward(self, input_ids, position_ids=None, cache=None, rope_base=None, return_hidden=False):
        eos, seq = self.config.eos_token_id, self.sequence
        nxt = [[seq[p + 1] if p + 1 < len(seq) else eos for p in row] for row in position_ids.tolist()]
        return nn.functional.one_hot(torch.tensor(nxt), self.config.vocab_size).float() * 10  # [B, T, V]


KV_MODES = [None, "bf16", "int8"]  # the engine's KV formats under test (None: the model's float32)


def kv_round_trip(x: torch.Tensor, kv: str | None) -> torch.Tensor:
    """Keys or values [..., D] as a KV cache of format `kv` gives them back, written from the format's
    definition (puyu.model.quant, "the KV cache's formats"): bf16 rounding, or int8 with one scale per row
    s = max |x| / 127 and q = round(x / s) (half to even, clamped to +-127)."""
    if kv in (None, "f32"):
        return x
    if kv == "bf16":
        return x.to(torch.bfloat16).to(x.dtype)
    s = x.float().abs().amax(dim=-1, keepdim=True) / 127.0
    q = torch.where(s > 0, x.float() / torch.where(s > 0, s, 1.0), 0.0).round().clamp(-127, 127)
    return (q * s).to(x.dtype)


class RoundTripAttention:
    """A `cache` hook for the model's one-shot forward (no cache): plain causal softmax attention over the
    keys/values as a KV cache of format `kv` stores them: the reference for engines with a quantized cache."""

    def __init__(self, kv: str | None):
        self.kv = kv

    def attend(self, layer_idx, q, k, v):
        """q [B, H, T, D], k/v [B, K, T, D] -> [B, H, T, D]."""
        H, K, T, D = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
        k = kv_round_trip(k, self.kv).repeat_interleave(H // K, dim=1)  # [B, H, T, D]
        v = kv_round_trip(v, self.kv).repeat_interleave(H // K, dim=1)
        scores = (q @ k.transpose(-1, -2)) / D ** 0.5  # [B, H, T, T]
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        return scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v


class StoredAttention(RoundTripAttention):
    """A `cache` hook for the model's one-shot forward that attends over the keys/values an engine stored
    for `seq` in `cache` (read back and decoded), not over recomputed ones: the reference for "the same
    stored numbers". Recomputing them instead can flip a bf16 or int8 rounding where the engine's float
    key differs from torch's in the last bit, which moves the logits far more than summation order does."""

    def __init__(self, cache, seq):
        super().__init__(None)
        self.cache, self.seq = cache, seq

    def attend(self, layer_idx, q, k, v):
        """q [1, H, T, D]; k/v (recomputed, ignored) -> [1, H, T, D] over the stored k/v of positions [0, T)."""
        c, T = self.cache, q.shape[2]
        slots = self.seq.slots(0, T)  # [T]

        def stored(pool, scales):
            flat = pool[layer_idx].flatten(0, 1)[slots]  # [T, K, D]
            sc = None if scales is None else scales[layer_idx].flatten(0, 1)[slots]  # [T, K]
            return c.decode(flat, sc).float().transpose(0, 1)[None]  # [1, K, T, D]

        return super().attend(layer_idx, q, stored(c.k, c.k_scale), stored(c.v, c.v_scale))


@torch.inference_mode()
def stored_logits(model, cache, seq, tokens: list[int], base=None) -> torch.Tensor:
    """The model's one-shot forward logits [T, V] over `tokens`, attending over what `cache` stores for `seq`
    (every one of the T positions must have been written)."""
    return model(torch.tensor([tokens]), cache=StoredAttention(cache, seq), rope_base=base)[0].float()


@torch.inference_mode()
def reference_logits(model, tokens: list[int], kv: str | None = None, base=None) -> torch.Tensor:
    """The model's one-shot forward logits [T, V] over `tokens` with keys/values rounded as format `kv`
    stores them (the plain forward for None)."""
    hook = None if kv in (None, "f32") else RoundTripAttention(kv)
    return model(torch.tensor([tokens]), cache=hook, rope_base=base)[0].float()
