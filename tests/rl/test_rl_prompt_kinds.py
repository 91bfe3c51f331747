"""Alignment recipes accept the interpreter prompt kind, and its held-out prompts reach the evaluation."""

from __future__ import annotations

import pytest

from puyu.errors import ConfigError
from puyu.rl import common as C
from puyu.rl.recipe import AlignRecipe, PolicySection, PromptSection


def test_interpreter_kind_in_train_and_eval_prompts():
    r = AlignRecipe(policy=PolicySection(init="sft"), prompts=PromptSection(weights={"tool": 1.0, "interpreter": 1.0}, eval_n=10))
    r.validate()
    ev = C.eval_prompts(r)
    assert [p["kind"] for p in ev] == ["tool", "interpreter"] * 5
    assert {p["kind"] for p in C.train_prompts(r, 30, "x")} == {"tool", "interpreter"}
    assert C.DOMAINS_FOR_KIND["interpreter"] == ("format",)


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown kind"):
        AlignRecipe(policy=PolicySection(init="sft"), prompts=PromptSection(weights={"poetry": 1.0})).validate()
