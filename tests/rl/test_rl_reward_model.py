"""The reward model: released layout round trip, padding invariance, reward token rules, conditional prompts."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import make_model

from puyu.errors import CheckpointError
from puyu.rl.reward_model import (
    RewardModel,
    RewardModelError,
    default_reward_token,
    load_reward_model,
    pad_batch,
    save_reward_model,
    score_ids,
    with_domain,
)


def _rm(reward_token=100, seed=0):
    lm = make_model(max_position_embeddings=64)
    rm = RewardModel.from_causal_lm(lm, reward_token, pad_id=2)
    torch.nn.init.normal_(rm.v_head.weight, std=0.5, generator=torch.Generator().manual_seed(seed))
    return lm, rm.eval()


def test_score_equals_independent_reference_and_padding_sides_agree():
    lm, rm = _rm()
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(5, 99, (n,), generator=g).tolist() + [100] for n in (3, 9, 14, 6)]
    right = score_ids(rm, seqs, side="right")
    left = score_ids(rm, seqs, side="left")
    assert right == pytest.approx(left, abs=1e-5)
    # reference: each sequence alone through the causal LM's body, v_head at the last position
    for s, got in zip(seqs, right):
        h = lm(torch.tensor([s]), return_hidden=True)[0, -1]
        assert got == pytest.approx(float((h @ rm.v_head.weight[0]).detach()), abs=1e-5)
    # the zero-initialised head of a fresh RM scores everything 0 (released init)
    fresh = RewardModel.from_causal_lm(lm, 100, pad_id=2)
    assert score_ids(fresh, seqs) == [0.0] * 4


def test_reward_token_rules():
    lm = make_model()
    with pytest.raises(RewardModelError, match="pad"):
        RewardModel.from_causal_lm(lm, 2, pad_id=2)
    with pytest.raises(RewardModelError, match="outside"):
        RewardModel(lm.config, 10_000)
    _, rm = _rm()
    ids, attn = pad_batch([[5, 6, 7]], pad_id=2)  # no reward token at the end
    with pytest.raises(RewardModelError, match="reward token"):
        rm(ids, attn)


def test_released_layout_round_trip_and_sharded_bf16(tmp_path):
    """A directory laid out like internlm2-*-reward: config with reward_token_id and
    InternLM2ForRewardModel, `model.*` and `v_head.weight`, no `output.weight`, sharded bf16 safetensors."""
    from puyu.model.checkpoint import write_state_dict

    lm, rm = _rm()
    d = tmp_path / "released"
    sd = {k: v.to(torch.bfloat16) for k, v in rm.state_dict().items()}
    assert "output.weight" not in sd and sd["v_head.weight"].shape == (1, lm.config.hidden_size)
    write_state_dict(sd, d, max_shard_bytes=60_000)
    assert (d / "model.safetensors.index.json").exists()
    cfg = lm.config.to_hf_dict()
    cfg.update(architectures=["InternLM2ForRewardModel"], reward_token_id=100, torch_dtype="bfloat16")
    (d / "config.json").write_text(json.dumps(cfg))
    got = load_reward_model(d, dtype=torch.float32)
    assert got.reward_token_id == 100
    seqs = [[5, 6, 7, 100], [9, 100]]
    ref = RewardModel(lm.config, 100, 2)
    ref.load_state_dict({k: v.float() for k, v in sd.items()})
    assert score_ids(got, seqs) == pytest.approx(score_ids(ref.eval(), seqs), abs=1e-6)
    # our own save reads back identically
    save_reward_model(rm, tmp_path / "ours")
    again = load_reward_model(tmp_path / "ours")
    assert score_ids(again, seqs) == pytest.approx(score_ids(rm, seqs), abs=1e-6)
    # a causal LM directory is not a reward model
    from puyu.model.checkpoint import save_pretrained

    save_pretrained(lm, tmp_path / "lm")
    with pytest.raises(CheckpointError, match="reward_token_id"):
        load_reward_model(tmp_path / "lm")


def test_text_scoring_conditional_domain(tiny_tokenizer):
    from puyu.model.config import get_preset
    from puyu.model.transformer import InternLM2ForCausalLM

    lm = InternLM2ForCausalLM(get_preset("nano-tiny", vocab_size=tiny_tokenizer.vocab_size)).reset_parameters(seed=0)
    tid = default_reward_token(tiny_tokenizer, lm.config.vocab_size)
    assert tid != tiny_tokenizer.pad_id and tiny_tokenizer.sp.id_to_piece(tid) == "<0x00>"
    rm = RewardModel.from_causal_lm(lm, tid, pad_id=tiny_tokenizer.pad_id, tokenizer=tiny_tokenizer)
    torch.nn.init.normal_(rm.v_head.weight, std=0.5)
    msgs = [{"role": "user", "content": "1+2"}, {"role": "assistant", "content": "1+2=3"}]
    ids = rm.encode(msgs, domain="arithmetic")
    assert ids[-1] == tid and tiny_tokenizer.decode(ids[:-1]).count("numeric answer right") == 1
    a, f = rm.score(msgs, domain="arithmetic"), rm.score(msgs, domain="format")
    assert a != f  # the rubric conditions the score
    assert rm.score_batch([msgs, msgs[:1] + [{"role": "assistant", "content": "4"}]], domain="arithmetic",
                          side="left") == pytest.approx(
        rm.score_batch([msgs, msgs[:1] + [{"role": "assistant", "content": "4"}]], domain="arithmetic"), abs=1e-5)
    assert with_domain(msgs, None) == msgs
    with pytest.raises(RewardModelError, match="unknown reward domain"):
        with_domain(msgs, "poetry")


def test_released_reward_token_id_used_with_full_vocab(ref_tokenizer):
    assert default_reward_token(ref_tokenizer, 92544) == 92527
