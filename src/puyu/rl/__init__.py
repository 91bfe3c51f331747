"""Alignment: the conditional reward model, online RLHF in rounds (COOL RLHF: PPO), DPO, and critic-free
RL with verifiable rewards (GRPO/RLOO). Commands: `puyu train rm|ppo|dpo|grpo RECIPE.yaml`.

Layer rule (import-linter, pyproject.toml): may import `puyu.train`, `puyu.eval`, `puyu.agent`,
`puyu.engine`, `puyu.model`, `puyu.tasks` and `puyu.errors`; never `puyu.serve` or `puyu.data`.

Files: losses.py (GAE, PPO, value, KL estimators, Bradley-Terry, DPO, group baselines: pure functions),
reward_model.py (released `v_head` layout, `load_reward_model`, `score`/`score_batch`, domain rubrics),
judge.py (programmatic judge, pair JSONL), rollout.py (engine rollouts on the live actor, batch tensors),
recipe.py (AlignRecipe), common.py (loading, prompts, conditional RM scores, greedy eval),
rm_train.py (`puyu train rm`), ppo.py (`puyu train ppo`, rounds and hacking detection),
dpo.py (`puyu train dpo`), grpo.py (`puyu train grpo`).
"""
