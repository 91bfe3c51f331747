"""Alignment recipes: one typed YAML mechanism (`puyu.train.recipe`) for `puyu train rm|ppo|dpo|grpo`.

Defaults are the published settings (InternLM2 report 4.3 and xtuner's RLHF examples, quoted in
docs/internlm2.md) unless a comment says otherwise; the nano recipe overrides sizes, steps and learning
rates to fit minutes on a CPU (`puyu.recipes.nano`, `recipes/*_example.yaml`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from puyu.errors import ConfigError
from puyu.rl.lora import LoRASection


@dataclass
class PolicySection:
    """`init`: the SFT model (Hugging Face directory); the actor and the frozen reference start from it.
    `tokenizer`: directory with tokenizer.model (default: `init`)."""

    init: str = ""
    tokenizer: str | None = None


@dataclass
class PromptSection:
    """Training prompts (seeded synthetic tasks, `puyu.tasks.verifiable`): mix of kinds, and a held-out
    evaluation set drawn from another seed (arithmetic problems listed in `exclude_file`, e.g. the nano
    recipe's test_problems.json, are never trained on)."""

    weights: dict = field(default_factory=lambda: {"arithmetic": 0.6, "tool": 0.25, "chat": 0.15})
    exclude_file: str | None = None
    eval_n: int = 64
    p_big: float = 0.1


@dataclass
class RMSection:
    """Reward model. `init`: an existing reward-model directory to continue from (None: the policy's
    body with a zero `v_head`, as released). `pairs`: JSONL pair files; `judge_prompts`: prompts whose
    `samples` policy replies the judge turns into pairs (0: none), one per domain of the prompt's kind with
`per_domain`. Held out: a seeded `held_out` share of the prompts, or with `held_out_prompts` > 0 the
pairs of that many separate held-out prompts (arithmetic from `prompts.exclude_file`). Loss (report 4.3): Bradley-Terry, focal
    weight, log barrier 0.02 on (-5, 5); lr 2e-5, one epoch."""

    init: str | None = None
    reward_token_id: int | None = None  # None: 92527 when the vocabulary has it, else `<0x00>`
    pairs: list = field(default_factory=list)
    judge_prompts: int = 0
    samples: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 32
    held_out: float = 0.2
    held_out_prompts: int = 0  # > 0: held-out pairs from this many prompts of their own (not a share)
    per_domain: bool = True  # judge pairs: one per domain of each prompt's kind (False: one per prompt)
    # programmatic pairs added to training (no sampling; `puyu.rl.judge.tool_pairs` / `arithmetic_pairs`):
    # the right call or answer against the same one broken (README, alignment section, "Tool domain")
    tool_pairs: int = 0
    arithmetic_pairs: int = 0
    epochs: float = 1.0
    batch_size: int = 16
    lr: float = 2e-5
    focal: bool = True
    barrier_weight: float = 0.02
    bound: float = 5.0
    weight_decay: float = 0.0
    # dense auxiliary: Bradley-Terry on v_head at every position where chosen and rejected differ
    # (`puyu.rl.losses.dense_pair_loss`); the score stays v_head at the reward token. README, alignment section.
    dense_weight: float = 0.0
    lm_weight: float = 0.0  # next-token loss on the chosen replies through the policy's frozen LM head
    distill_weight: float = 0.0  # MSE of v_head at each reply token to the policy's log-probability of it


@dataclass
class PPOSection:
    """Online PPO in rounds (COOL RLHF). Per round: new pairs on the current policy (fast path when the
    last round showed reward hacking, else slow path), an RM update, then `iterations` PPO iterations.
    Published: ~400 iterations, critic warm-up 50 (xtuner 20), KL 0.01 per token, gamma 1, lambda 0.99,
    pretraining loss 0.5, top-p 0.9, actor lr 1e-6, critic lr 5e-6, rewards clipped to [-5, 5] then
    normalised by running moments (xtuner); three rounds. clip 0.2 is PPO's (Schulman et al. 2017)."""

    rounds: int = 3
    iterations: int = 400
    prompts_per_iter: int = 32
    ppo_epochs: int = 1
    minibatch: int = 32
    actor_lr: float = 1e-6
    critic_lr: float = 5e-6
    critic_warmup: int = 50
    kl_coef: float = 0.01
    gamma: float = 1.0
    lam: float = 0.99
    clip: float = 0.2
    value_clip: float = 0.2
    reward_clip: float = 5.0
    normalize_reward: bool = True
    ptx_coef: float = 0.5
    ptx_data: list = field(default_factory=list)  # SFT JSONL conversations for the pretraining-loss mix
    ptx_batch: int = 8
    temperature: float = 1.0
    top_p: float = 0.9
    max_new_tokens: int = 48
    max_turns: int = 1
    grad_clip: float = 1.0
    eval_every: int = 50
    save_every: int = 10
    # round updates of the reward model (fast path: 20-100 targeted pairs, report 4.3)
    fast_pairs: int = 60
    fast_steps: int = 10
    slow_prompts: int = 64
    slow_steps: int = 30
    hack_length_growth: float = 0.2  # the definition: mean length +20% without a score gain


@dataclass
class DPOSection:
    """DPO on pair files (Rafailov et al. 2023: beta 0.1)."""

    pairs: list = field(default_factory=list)
    beta: float = 0.1
    lr: float = 1e-6
    epochs: float = 1.0
    batch_size: int = 16
    held_out: float = 0.2


@dataclass
class GRPOSection:
    """Critic-free RL with verifiable rewards. `task`: an evaluation task name (`puyu.eval.get_task`) or
    a local scorer of `puyu.tasks.verifiable` ("verifiable": by each sample's kind). Group baseline
    `grpo` (Shao et al. 2024: KL beta 0.04, k3 estimator) or `rloo`."""

    task: str = "verifiable"
    baseline: str = "grpo"
    group_size: int = 8
    prompts_per_iter: int = 8
    iterations: int = 200
    lr: float = 1e-6
    kl_coef: float = 0.04
    clip: float = 0.2
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    grad_clip: float = 1.0
    eval_every: int = 50
    save_every: int = 10
    # DAPO's dynamic sampling (Yu et al. 2025, "DAPO", section 3.2): groups whose replies all scored the same
    # carry no advantage and only dilute the token mean; draw more prompts (up to max_draws batches of
    # prompts_per_iter in an iteration) and keep the first prompts_per_iter groups that differ.
    dynamic_sampling: bool = False
    max_draws: int = 4


@dataclass
class AlignRecipe:
    """`out_dir` receives rm/, ppo/, dpo/, grpo/ (each with metrics.jsonl, PNGs, checkpoints/, hf/)."""

    out_dir: str = "runs/align"
    seed: int = 0
    device: str | None = None
    threads: int | None = None
    progress: bool = True
    policy: PolicySection = field(default_factory=PolicySection)
    prompts: PromptSection = field(default_factory=PromptSection)
    rm: RMSection = field(default_factory=RMSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    dpo: DPOSection = field(default_factory=DPOSection)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    lora: LoRASection = field(default_factory=LoRASection)  # LoRA adapters for the trained models (peft)

    def validate(self) -> None:
        if not self.policy.init:
            raise ConfigError("set policy.init (the SFT model directory)")
        if self.lora.enabled:
            self.lora.validate()
        if min(self.rm.tool_pairs, self.rm.arithmetic_pairs) < 0:
            raise ConfigError("rm.tool_pairs and rm.arithmetic_pairs must be >= 0")
        if min(self.rm.dense_weight, self.rm.lm_weight, self.rm.distill_weight) < 0:
            raise ConfigError("rm.dense_weight, rm.lm_weight and rm.distill_weight must be >= 0")
        if not 0 <= self.rm.held_out < 1 or not 0 <= self.dpo.held_out < 1:
            raise ConfigError("rm.held_out and dpo.held_out must be within [0, 1)")
        if self.grpo.baseline not in ("grpo", "rloo"):
            raise ConfigError(f"grpo.baseline must be grpo or rloo, got {self.grpo.baseline!r}")
        if self.grpo.group_size < 2:
            raise ConfigError("grpo.group_size must be at least 2")
        if self.grpo.max_draws < 1:
            raise ConfigError(f"grpo.max_draws must be at least 1, got {self.grpo.max_draws}")
        for name in ("rounds", "iterations", "prompts_per_iter", "ppo_epochs", "minibatch", "max_turns"):
            if getattr(self.ppo, name) <= 0:
                raise ConfigError(f"ppo.{name} must be positive")
        if not 0 < self.ppo.top_p <= 1 or not 0 < self.grpo.top_p <= 1:
            raise ConfigError("top_p must be in (0, 1]")
        if not sum(v for v in self.prompts.weights.values()) > 0:
            raise ConfigError("prompts.weights must give some kind a positive weight")
        unknown = set(self.prompts.weights) - {"arithmetic", "tool", "interpreter", "chat"}
        if unknown:
            raise ConfigError(f"prompts.weights: unknown kind(s) {sorted(unknown)}; use arithmetic, tool, interpreter, chat")


def load_align_recipe(path, overrides=None) -> AlignRecipe:
    from puyu.train.recipe import load_recipe

    return load_recipe(path, overrides, cls=AlignRecipe)
