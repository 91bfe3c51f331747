"""Rollouts through `puyu.Engine` on the live actor weights, and the per-token tensors of a batch.

The engine decodes with the actor module itself (no copy): the native decode kernel and the PyTorch
paths read the parameters at every step, so after an optimizer step the next rollout samples from the
new policy. The engine is built with `prefix_cache=False`. The cache would be safe (the engine's weights
fingerprint flushes prefixes computed with older weights), but it does not pay here: GRPO-shaped rollouts
of the nano chat model (8 prompts x 8 samples, 24 new tokens, an in-place weight change between
iterations) took 13.2 s for 4 iterations without it and 15.3 s with it (best of 2, one thread, AVX2 path,
shared Sapphire Rapids VM at load 8; `benchmarks/rl_prefix_cache.py`): the prompts
are short, so little prefill is saved, and each adoption of cached blocks checks the fingerprint.

Sampling is seeded per request (`seed`, prompt index, turn), so a rollout is a function of the weights
and the seed: a resumed run and a run split across processes draw the same samples.

Environment turns: when a reply makes a plugin call and turns remain, the environment (the synthetic
tools' deterministic results, `puyu.tasks.verifiable.tool_result`) appends
`\\n<|im_start|>environment name=<|plugin|>\\n{result}<|im_end|>\\n<|im_start|>assistant\\n` and the
policy writes the next turn. Those tokens are in the sequence (the policy reads them) but their
`action_mask` is 0: no reward, no advantage, no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from puyu.engine.sampling import SamplingParams
from puyu.model.chat_format import IM_END, IM_START, PLUGIN
from puyu.rl.judge import Reply, prompt_ids
from puyu.rl.lora import decoding_weights
from puyu.rl.losses import entropy_from_logits
from puyu.tasks import verifiable as V


@dataclass
class Rollout:
    """One sampled episode. `response` = every token after the prompt (policy and environment);
    `action_mask[i]` = 1 where the policy wrote response[i]. `replies` = the policy's turns as text;
    `end` = whether the last turn ended with `<|im_end|>`."""

    sample: dict
    prompt: list[int]
    response: list[int]
    action_mask: list[int]
    replies: list[str]
    end: bool

    @property
    def first_reply(self) -> Reply:
        """The first turn (the answer, or the tool call), as the judge reads it."""
        n = sum(self.action_mask[: self._first_turn_len()])
        ended = self.end if len(self.replies) == 1 else True
        return Reply(self.replies[0], ended, n)

    def _first_turn_len(self) -> int:
        for i, m in enumerate(self.action_mask):
            if m == 0:
                return i
        return len(self.action_mask)

    @property
    def n_policy_tokens(self) -> int:
        return sum(self.action_mask)


def make_engine(actor, tokenizer, max_batch_size: int = 64):
    """An engine over the live actor (no prefix cache: measured slower, see the module docstring)."""
    from puyu.engine.scheduler import Engine

    return Engine(actor, tokenizer, max_batch_size=max_batch_size, prefix_cache=False)


def generate_rollouts(engine, tok, samples: list[dict], params: SamplingParams, seed: int,
                      max_turns: int = 1, index_offset: int = 0) -> list[Rollout]:
    """Sample one episode per sample (a batch through the engine per turn)."""
    im_end = tok.special_ids[IM_END]
    stops = sorted(set(params.stop_token_ids) | set(tok.stop_ids))
    prompts = [prompt_ids(tok, s["messages"], s.get("tools"), s.get("interpreter")) for s in samples]
    outs = [Rollout(s, p, [], [], [], False) for s, p in zip(samples, prompts)]
    active = list(range(len(samples)))
    for turn in range(max_turns):
        if not active:
            break
        plist = [replace(params, stop_token_ids=stops, seed=_seed(seed, index_offset + i, turn)) for i in active]
        with decoding_weights(engine.model):  # LoRA adapters folded into the weights the decode reads
            results = engine.generate([outs[i].prompt + outs[i].response for i in active], plist)
        nxt = []
        for i, res in zip(active, results):
            ro = outs[i]
            ids = list(res.token_ids)
            ro.response += ids
            ro.action_mask += [1] * len(ids)
            ended = bool(ids) and ids[-1] == im_end
            body = ids[:-1] if ended or (ids and ids[-1] in tok.stop_ids) else ids
            ro.replies.append(tok.decode(body))
            ro.end = ended
            call = V.parse_plugin_call(ro.replies[-1]) if ro.sample.get("tools") else None
            if ended and call is not None and turn + 1 < max_turns:
                env = ("\n" + f"{IM_START}environment name={PLUGIN}\n{V.tool_result(call)}{IM_END}\n"
                       + f"{IM_START}assistant\n")
                env_ids = tok.encode(env, allow_special=True)
                ro.response += env_ids
                ro.action_mask += [0] * len(env_ids)
                nxt.append(i)
        active = nxt
    return outs


def _seed(seed: int, index: int, turn: int) -> int:
    return (seed * 1_000_003 + index * 7919 + turn) % (2**31 - 1)


# ---- tensors of a batch --------------------------------------------------------------------------
@dataclass
class SeqBatch:
    """Right-padded prompt + response rows. ids/attn [B, L]; `resp_index` [B, R] is the position in ids
    of response token j (clamped on padding); `mask` [B, R] = action mask (0 on padding)."""

    ids: torch.Tensor
    attn: torch.Tensor
    resp_index: torch.Tensor
    resp_ids: torch.Tensor
    mask: torch.Tensor

    def to(self, device) -> SeqBatch:
        return SeqBatch(*(t.to(device) for t in (self.ids, self.attn, self.resp_index, self.resp_ids, self.mask)))


def seq_batch(prompts: list[list[int]], responses: list[list[int]], masks: list[list[int]], pad_id: int) -> SeqBatch:
    B = len(prompts)
    L = max(len(p) + len(r) for p, r in zip(prompts, responses))
    R = max(1, max(len(r) for r in responses))
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    index = torch.zeros((B, R), dtype=torch.long)
    resp = torch.full((B, R), pad_id, dtype=torch.long)
    mask = torch.zeros((B, R), dtype=torch.float32)
    for b, (p, r, m) in enumerate(zip(prompts, responses, masks)):
        n = len(p) + len(r)
        ids[b, :n] = torch.tensor(p + r, dtype=torch.long)
        attn[b, :n] = 1
        index[b] = (len(p) + torch.arange(R)).clamp(max=L - 1)
        if r:
            resp[b, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[b, : len(r)] = torch.tensor(m, dtype=torch.float32)
    return SeqBatch(ids, attn, index, resp, mask)


def token_logprobs(lm, batch: SeqBatch, with_entropy: bool = False):
    """log pi(response token j | everything before it) [B, R] (and the entropy [B, R] of that
    distribution): logits at position resp_index - 1 scored against the token at resp_index."""
    logits = lm(batch.ids)  # [B, L, V] float32; right padding never reaches earlier positions
    prev = (batch.resp_index - 1).clamp(min=0)
    picked = logits.gather(1, prev[..., None].expand(-1, -1, logits.shape[-1]))  # [B, R, V]
    logp = torch.log_softmax(picked, dim=-1).gather(-1, batch.resp_ids[..., None]).squeeze(-1)
    if with_entropy:
        return logp, entropy_from_logits(picked)
    return logp


def token_values(critic, batch: SeqBatch) -> torch.Tensor:
    """V(state before response token j) [B, R]: the critic read at position resp_index - 1."""
    v = critic.values(batch.ids, batch.attn)  # [B, L]
    return v.gather(1, (batch.resp_index - 1).clamp(min=0))


def sequence_logprob(lm, batch: SeqBatch) -> torch.Tensor:
    """Summed log-probability [B] of each row's masked response tokens (DPO)."""
    return (token_logprobs(lm, batch) * batch.mask).sum(1)
