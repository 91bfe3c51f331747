"""The reward model in the layout of the released `internlm2-*-reward` checkpoints, and the critic.

Released layout (docs/internlm2.md, "Reward model"): the chat transformer's body (`model.*`) plus a
linear `v_head` (hidden -> 1, no bias, zero-initialised), read at a reward token appended after the
conversation; `config.json` names the token (`reward_token_id`, 92527 = `[UNUSED_TOKEN_130]` in the
released models) and the architecture `InternLM2ForRewardModel`. There is no language-model head.
`load_reward_model(path)` reads such a directory (one file or shards, safetensors or .bin) and ours;
`save_reward_model` writes the same layout.

Scoring: `score(messages)` renders the conversation with the InternLM2 chat template (no generation
prompt), encodes it and appends the reward token; the score is `v_head` of the final hidden state at
that token. Batches are padded with the tokenizer's pad id (never the reward token: refused at
construction) and a key-padding mask; positions count real tokens only, so left and right padding give
the same scores (tests check it).

Conditional reward (COOL RLHF): one model for every preference domain; the domain's rubric goes first as
a system turn (`DOMAINS`, `with_domain`). The critic of PPO is the same module read at every position
(`values`), initialised from the reward model.

Shapes: B batch, T tokens, C hidden.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from puyu.errors import CheckpointError, ConfigError
from puyu.model.config import ModelConfig
from puyu.model.rope import cos_sin
from puyu.model.transformer import InternLM2ForCausalLM, InternLM2Model

RELEASED_REWARD_TOKEN_ID = 92527  # `[UNUSED_TOKEN_130]`, config.json of internlm2-*-reward
RELEASED_REWARD_PIECE = "[UNUSED_TOKEN_130]"

# Domain rubrics, prepended as a system turn (COOL RLHF conditions the one RM on a system prompt; xtuner's
# conditional prompts are a sentence or two). Kept to one short sentence each: the rubric is read with
# every scored reply, so at nano scale its length is most of the RM's cost (a 40-token rubric made a
# 69-token arithmetic input; these make it 42).
DOMAINS = {
    "arithmetic": "Judge: is the numeric answer right?",
    "format": "Judge: does the reply end its turn cleanly, without rambling?",
    "tool": "Judge: is the tool call valid JSON with the right tool and arguments?",
    "concise": "Judge: of two right replies, prefer the shorter.",
}


class RewardModelError(ConfigError):
    """A reward model or reward input that cannot be used (wrong reward token, empty batch, ...)."""


def with_domain(messages: list[dict], domain: str | None) -> list[dict]:
    """`messages` with the rubric of `domain` prepended as a system turn (unchanged for None)."""
    if domain is None:
        return list(messages)
    if domain not in DOMAINS:
        raise RewardModelError(f"unknown reward domain {domain!r}; known: {', '.join(DOMAINS)}")
    return [{"role": "system", "content": DOMAINS[domain]}, *messages]


def padding_mask(attn: torch.Tensor) -> torch.Tensor:
    """Causal attention restricted to real keys: attn [B, T] (1 real, 0 pad) -> bool [B, 1, T, T].
    A pad query may attend to itself only (its output is never read; this keeps softmax finite)."""
    T = attn.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=attn.device).tril()
    keys = attn.bool()[:, None, None, :]  # [B, 1, 1, T]
    eye = torch.eye(T, dtype=torch.bool, device=attn.device)
    return (causal & keys) | eye


def padded_hidden(body: InternLM2Model, cfg: ModelConfig, input_ids: torch.Tensor,
                  attn: torch.Tensor | None = None) -> torch.Tensor:
    """Final normed hidden states [B, T, C] of a padded batch: positions count real tokens only."""
    if attn is None:
        attn = torch.ones_like(input_ids)
    pos = (attn.long().cumsum(1) - 1).clamp(min=0)  # [B, T]
    cos, sin = cos_sin(cfg, pos, None)
    mask = padding_mask(attn) if not bool(attn.all()) else None
    x = body.tok_embeddings(input_ids)
    for layer in body.layers:
        x = layer(x, cos, sin, None, mask)
    return body.norm(x)


class RewardModel(nn.Module):
    """InternLM2 body + scalar `v_head`. `forward(ids, attn)` -> scores [B] at each row's last real token
    (which must be the reward token); `values(ids, attn)` -> [B, T] at every position (the critic)."""

    def __init__(self, cfg: ModelConfig, reward_token_id: int, pad_id: int | None = None):
        super().__init__()
        self.config = cfg
        if not 0 <= reward_token_id < cfg.vocab_size:
            raise RewardModelError(f"reward_token_id {reward_token_id} is outside the vocabulary (0..{cfg.vocab_size - 1})")
        self.pad_id = cfg.pad_token_id if pad_id is None else pad_id
        if reward_token_id == self.pad_id:
            raise RewardModelError(f"the reward token ({reward_token_id}) must differ from the pad id: a pad "
                                   f"position would be read as the reward")
        self.reward_token_id = reward_token_id
        self.model = InternLM2Model(cfg)
        self.v_head = nn.Linear(cfg.hidden_size, 1, bias=False)
        self.tokenizer = None  # set by load_reward_model / from_causal_lm when known

    @classmethod
    def from_causal_lm(cls, lm: InternLM2ForCausalLM, reward_token_id: int, pad_id: int | None = None,
                       tokenizer=None) -> RewardModel:
        """A reward model whose body is a copy of `lm`'s and whose `v_head` is zero (released init)."""
        rm = cls(lm.config, reward_token_id, pad_id)
        rm.model.load_state_dict(lm.model.state_dict())
        nn.init.zeros_(rm.v_head.weight)
        rm.tokenizer = tokenizer
        p = next(lm.parameters())
        return rm.to(device=p.device, dtype=p.dtype)

    def values(self, input_ids: torch.Tensor, attn: torch.Tensor | None = None) -> torch.Tensor:
        h = padded_hidden(self.model, self.config, input_ids, attn)
        return self.v_head(h).squeeze(-1).float()  # [B, T]

    def reward_positions(self, input_ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Index [B] of each row's last real token; RewardModelError unless it is the reward token."""
        T = input_ids.shape[1]
        last = torch.where(attn.bool(), torch.arange(T, device=input_ids.device), -1).max(1).values  # [B]
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        if bool((last < 0).any()) or bool((input_ids[rows, last] != self.reward_token_id).any()):
            raise RewardModelError("every row must end (before padding) with the reward token "
                                   f"{self.reward_token_id}; build inputs with reward_inputs()")
        return last

    def forward(self, input_ids: torch.Tensor, attn: torch.Tensor | None = None) -> torch.Tensor:
        if attn is None:
            attn = (input_ids != self.pad_id).long()
        last = self.reward_positions(input_ids, attn)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        h = padded_hidden(self.model, self.config, input_ids, attn)  # [B, T, C]
        return self.v_head(h[rows, last]).squeeze(-1).float()  # [B]

    # ---- text in, scores out -------------------------------------------------------------------
    def encode(self, messages: list[dict], tools=None, interpreter=None, domain: str | None = None) -> list[int]:
        """Token ids of one conversation for scoring: the rendered chat + the reward token."""
        from puyu.model.chat_format import render_chat

        if self.tokenizer is None:
            raise RewardModelError("this reward model has no tokenizer; pass token ids to forward()")
        text = render_chat(with_domain(messages, domain), tools=tools, interpreter=interpreter,
                           add_generation_prompt=False)
        return self.tokenizer.encode(text, allow_special=True) + [self.reward_token_id]

    @torch.no_grad()
    def score_batch(self, conversations: list[list[dict]], domain: str | None = None, batch_size: int = 16,
                    side: str = "right") -> list[float]:
        """Scores of several conversations (lists of messages), padded on `side`."""
        ids = [self.encode(m, domain=domain) for m in conversations]
        return score_ids(self, ids, batch_size, side)

    def score(self, messages: list[dict], domain: str | None = None) -> float:
        """The scalar reward of one conversation (its last turn is normally the assistant's reply)."""
        return self.score_batch([messages], domain=domain)[0]


def pad_batch(seqs: list[list[int]], pad_id: int, side: str = "right", device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids [B, T], attn [B, T]) padded on `side` ('right' or 'left')."""
    if not seqs:
        raise RewardModelError("empty batch")
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        attn[i, sl] = 1
    return ids.to(device), attn.to(device)


@torch.no_grad()
def score_ids(rm: RewardModel, seqs: list[list[int]], batch_size: int = 16, side: str = "right") -> list[float]:
    dev = next(rm.parameters()).device
    out: list[float] = []
    for i in range(0, len(seqs), batch_size):
        ids, attn = pad_batch(seqs[i:i + batch_size], rm.pad_id, side, dev)
        out += rm(ids, attn).tolist()
    return out


def default_reward_token(tokenizer, vocab_size: int) -> int:
    """The released reward token id when the vocabulary has it (`[UNUSED_TOKEN_130]`); otherwise the
    NUL byte piece `<0x00>`, which ordinary text never produces (nano tokenizers)."""
    sp = getattr(tokenizer, "sp", None)
    if vocab_size > RELEASED_REWARD_TOKEN_ID and (
            sp is None or sp.id_to_piece(RELEASED_REWARD_TOKEN_ID) == RELEASED_REWARD_PIECE):
        return RELEASED_REWARD_TOKEN_ID
    if sp is not None:
        pid = sp.piece_to_id("<0x00>")
        if pid != sp.unk_id():
            return pid
    raise RewardModelError("cannot choose a reward token for this tokenizer; set rm.reward_token_id")


# ---- files ---------------------------------------------------------------------------------------
def save_reward_model(rm: RewardModel, dst: str | Path, tokenizer=None, dtype: torch.dtype | None = None) -> Path:
    """Write `rm` as a Hugging Face directory in the released reward layout (`model.*`, `v_head.weight`)."""
    from puyu.model.checkpoint import write_state_dict

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.to(dtype) if dtype is not None else v) for k, v in rm.state_dict().items()}
    write_state_dict(sd, dst)
    cfg = rm.config.to_hf_dict()
    cfg.update(architectures=["InternLM2ForRewardModel"], reward_token_id=rm.reward_token_id,
               pad_token_id=rm.pad_id, torch_dtype=str(next(iter(sd.values())).dtype).replace("torch.", ""))
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    tok = tokenizer or rm.tokenizer
    if tok is not None:
        tok.save(dst)
    return dst


def load_reward_model(path: str | Path, dtype: torch.dtype | str | None = None, device=None,
                      tokenizer=None) -> RewardModel:
    """Load a reward-model directory (a released `internlm2-*-reward` or one written by puyu).

    The tokenizer is read from the directory when it holds `tokenizer.model` (or pass one), so that
    `score(messages)` works. Raises CheckpointError for a directory that is not a reward model."""
    from puyu.model.checkpoint import read_state_dict, resolve_device, resolve_dtype

    p = Path(path)
    if not (p / "config.json").is_file():
        raise CheckpointError(f"{p} is not a model directory (no config.json)")
    raw = json.loads((p / "config.json").read_text(encoding="utf-8"))
    cfg = ModelConfig.from_hf_dict(raw)
    tok_id = raw.get("reward_token_id")
    if not isinstance(tok_id, int):
        raise CheckpointError(f"{p}/config.json has no integer 'reward_token_id': not a reward model")
    cfg.extra.pop("reward_token_id", None)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    sd = read_state_dict(p)
    if "v_head.weight" not in sd:
        raise CheckpointError(f"{p} has no v_head.weight: not a reward model")
    sd = {k: v for k, v in sd.items() if k != "output.weight" and not k.endswith("rotary_emb.inv_freq")}
    rm = RewardModel(cfg, tok_id, raw.get("pad_token_id", cfg.pad_token_id))
    missing, unexpected = rm.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{p}: reward checkpoint does not match its config: missing {missing[:6]}, "
                              f"unexpected {unexpected[:6]}")
    if tokenizer is None and (p / "tokenizer.model").is_file():
        from puyu.model.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(p)
    rm.tokenizer = tokenizer
    return rm.to(device=dev, dtype=dt).eval()
