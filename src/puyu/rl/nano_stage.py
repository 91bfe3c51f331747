"""The alignment stage of the nano recipe: the conditional RM from judge pairs (reported per domain with
Wilson intervals), then RL, then the SFT-vs-RL comparison with paired tests. Called by
`puyu.recipes.nano` after its evaluation (one hook there).

RL (`method`): "grpo" (default) is critic-free RL whose reward is the verifiable task score
(`puyu.tasks.verifiable`: the arithmetic answer, the tool call's name and arguments) times turn-ending;
"ppo" is online PPO rounds on the RM's reward (COOL RLHF). At nano scale the RM does not learn arithmetic
correctness (README, alignment section), so PPO on its reward cannot teach arithmetic; GRPO's exact
scorer can.

Nano settings (`NanoAlignSection`) replace the published sizes (~400 iterations a round, lr 1e-6) so the
stage takes minutes on a CPU; the published values stay the defaults of `puyu.rl.recipe`.

Comparison: the SFT model (`<out>/sft/hf`) and the RL model (`<out>/align/{grpo,ppo}/hf`) answer the same
held-out items greedily through `puyu eval` (predictions in `<out>/align/eval/{sft,rl}/<task>/`):
chat-template arithmetic on the recipe's held-out problems (task `arithmetic`, style chat, never trained
on) and tool calls (task `tools`); interpreter calls (right operands; not trained by RL, so it checks that
RL does not lose it) through the judge's greedy evaluation; turn-ending on each. Every "better" / "not
worse" claim comes with an exact McNemar test on the same items (`puyu.eval.stats.mcnemar`); "not worse"
is stated only as "no significant loss" (p >= 0.05 for a loss), never as proven equivalence.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from puyu.eval.stats import mcnemar
from puyu.rl import common as C


@dataclass
class NanoAlignSection:
    """Nano alignment settings. On by default (`enabled: false` skips it): with these defaults GRPO beat
    SFT-100 chat models on held-out chat arithmetic (192 wide, seeds 0 and 2: 79.8% -> 90.2%, McNemar p < 0.001;
    71.8% -> 77.2%, p = 0.023; the 256-wide model: 35.8% -> 46.5%, p = 2.2e-5) but not the SFT-300 ones of the
    seventh round (87.0% -> 87.5%, p = 0.86; 81.2% -> 82.2%, p = 0.69) or the SFT-500 one of the current recipe
    (seed 0: 89.2% -> 89.0%, p = 1.0; with dynamic sampling, the default since, 91.0%, and seed 2 84.0% -> 86.8%,
    pooled p = 0.04), in 1-3 CPU minutes (76 CPU s on a Zen 5, ~200 on an Emerald Rapids Xeon under load, 106
    with dynamic sampling on a quiet Xeon, all under AVX2 settings); the RM
    goal (>= 0.9 on every domain) is not met at nano scale (README, alignment section). `method`: "grpo" (critic-free RL on the verifiable task scores of
    the prompt kinds in `grpo_weights`, arithmetic only by default) or "ppo" (the RM's reward, online rounds). `reward_model`: train and
    report the conditional RM (always trained for ppo); its held-out set is `rm_held_out_prompts` prompts
    of its own, the kinds in turn, so each domain gets about 100 pairs or more. `grpo_weights`: the GRPO
    prompt kinds (`puyu.tasks.verifiable.rl_prompts`: arithmetic, tool, interpreter, chat)."""

    enabled: bool = True
    method: str = "grpo"
    reward_model: bool = False  # reported only (GRPO does not use it): ~376 CPU s, over the stage's budget
    rm_held_out_prompts: int = 330
    grpo_iterations: int = 100
    grpo_prompts: int = 8
    group_size: int = 8
    # 1e-5, not 3e-5, since SFT reaches ~95% chat arithmetic: on those models 3e-5 lost items (pooled over seeds 0-2,
    # SFT only 26 / RL only 14), 1e-5 did not (9 / 15); RL against RL, 8 / 26, p = 0.003 (README "Eleventh round")
    grpo_lr: float = 1e-5
    grpo_kl: float = 0.04
    # GRPO prompt kinds (puyu.tasks.verifiable.rl_prompts): arithmetic, tool, interpreter, chat
    grpo_weights: dict = field(default_factory=lambda: {"arithmetic": 1.0})
    # DAPO's dynamic sampling (`puyu.rl.recipe.GRPOSection`): on the SFT-500 models of seeds 0-3 chat arithmetic
    # 89.2 -> 91.0%, 80.2 -> 86.0%, 84.0 -> 86.8%, 82.2 -> 88.8% (discordant 56 vs 123 pooled, exact p = 6e-7) where
    # plain GRPO gave 89.0, 79.5, 83.5, 88.8% (88 vs 108, p = 0.17), for ~1.2-1.3x the GRPO time (README "Dynamic
    # sampling on the SFT-500 model")
    grpo_dynamic_sampling: bool = True
    grpo_max_draws: int = 4
    judge_prompts: int = 240
    samples: int = 4
    rm_epochs: float = 4.0
    rm_tool_pairs: int = 0  # programmatic tool pairs for the RM (`rm.tool_pairs`)
    rm_lr: float = 1e-4
    rounds: int = 2
    iterations: int = 10
    prompts_per_iter: int = 16
    actor_lr: float = 1e-5
    critic_lr: float = 5e-5
    critic_warmup: int = 3
    kl_coef: float = 0.01
    ptx_coef: float = 0.5
    max_new_tokens: int = 32
    fast_pairs: int = 40
    fast_steps: int = 8
    slow_prompts: int = 48
    slow_steps: int = 12
    eval_tools: int = 60
    eval_interpreter: int = 60


def _verdict(test: dict, acc_a: float, acc_b: float) -> str:
    if acc_b > acc_a and test["p_value"] < 0.05:
        return "better (p < 0.05)"
    if acc_b < acc_a and test["p_value"] < 0.05:
        return "worse (p < 0.05)"
    return f"no significant difference (p = {test['p_value']:.2f})"


def align_recipe(sec: NanoAlignSection, out: Path, seed: int, threads, progress: bool):
    from puyu.errors import ConfigError
    from puyu.rl.recipe import AlignRecipe, GRPOSection, PolicySection, PPOSection, PromptSection, RMSection

    if sec.method not in ("grpo", "ppo"):
        raise ConfigError(f"align.method must be grpo or ppo, got {sec.method!r}")
    # GRPO trains on arithmetic prompts by default (`grpo_weights`): a chat prompt's score is 1 for any plain
    # reply (no signal), and tool + interpreter prompts (30 iterations on the seed-0 chat model) collapsed the
    # tool name onto one function instead of teaching it (README); tool and interpreter calls are checked
    weights = dict(sec.grpo_weights) if sec.method == "grpo" else {"arithmetic": 0.6, "tool": 0.25, "chat": 0.15}

    return AlignRecipe(
        out_dir=str(out / "align"), seed=seed, device="cpu", threads=threads if isinstance(threads, int) else None,
        progress=progress, policy=PolicySection(init=str(out / "sft" / "hf"), tokenizer=str(out / "tokenizer")),
        prompts=PromptSection(exclude_file=str(out / "data" / "test_problems.json"), eval_n=60, weights=weights),
        rm=RMSection(judge_prompts=sec.judge_prompts, samples=sec.samples, max_new_tokens=sec.max_new_tokens,
                     epochs=sec.rm_epochs, lr=sec.rm_lr, batch_size=16, held_out_prompts=sec.rm_held_out_prompts,
                     tool_pairs=sec.rm_tool_pairs),
        grpo=GRPOSection(task="verifiable", group_size=sec.group_size, prompts_per_iter=sec.grpo_prompts,
                         iterations=sec.grpo_iterations, lr=sec.grpo_lr, kl_coef=sec.grpo_kl,
                         max_new_tokens=sec.max_new_tokens, eval_every=sec.grpo_iterations,
                         save_every=max(1, sec.grpo_iterations // 2),
                         dynamic_sampling=sec.grpo_dynamic_sampling, max_draws=sec.grpo_max_draws),
        ppo=PPOSection(rounds=sec.rounds, iterations=sec.iterations, prompts_per_iter=sec.prompts_per_iter,
                       minibatch=sec.prompts_per_iter, actor_lr=sec.actor_lr, critic_lr=sec.critic_lr,
                       critic_warmup=sec.critic_warmup, kl_coef=sec.kl_coef, ptx_coef=sec.ptx_coef,
                       ptx_data=[str(out / "data" / "sft_train.jsonl")], max_new_tokens=sec.max_new_tokens,
                       eval_every=sec.iterations, save_every=max(1, sec.iterations // 2),
                       fast_pairs=sec.fast_pairs, fast_steps=sec.fast_steps, slow_prompts=sec.slow_prompts,
                       slow_steps=sec.slow_steps))


EVAL_SETS = {  # name in the report -> (`puyu eval` task, its options, subfolder of the predictions)
    "chat_arithmetic": ("arithmetic", {"style": "chat", "sizes": "100"}, ""),
    "tool_calls": ("tools", {}, ""),
    # questions in phrasings no SFT dialogue and no RL prompt uses (`tools --option phrasings=held_out`)
    "tool_calls_held_out_phrasings": ("tools", {"phrasings": "held_out"}, "held_out_phrasings"),
}


def eval_items(model_dir: Path, out: Path, seed: int, held_out: tuple[int, int], n_tools: int,
               progress: bool = False) -> dict:
    """Per-item results of `puyu eval` (greedy, local engine) on the comparison sets: {set: {id: row}}
    where row has correct, ended (the turn stopped at a stop token, not the budget), length (tokens) and
    reply. Predictions land in `out/<task>/predictions.jsonl`, as `puyu eval run` writes them.
    `held_out`: the recipe's (test_small, test_big) counts; every one of the test_small problems is asked."""
    from puyu.eval import get_task
    from puyu.eval.backends import LocalBackend
    from puyu.eval.runner import read_predictions, run_task
    from puyu.eval.task import Context

    backend = LocalBackend(str(model_dir), dtype="float32")
    res = {}
    try:
        for name, (task_name, opts, sub) in EVAL_SETS.items():
            extra = ({"n": held_out[0], "test_small": held_out[0], "test_big": held_out[1]}
                     if task_name == "arithmetic" else {"n": n_tools})
            ctx = Context(seed=seed, options={**opts, **extra}, tokenizer=backend.tokenizer,
                          model_config=backend.config)
            d = run_task(get_task(task_name), backend, out / sub if sub else out, ctx, progress=progress, fresh=True)
            res[name] = {r["id"]: {"correct": r["score"] == 1.0, "ended": r.get("finish_reason") == "stop",
                                   "length": r.get("completion_tokens", 0), "reply": r["output"]}
                         for r in read_predictions(d / "predictions.jsonl")}
    finally:
        backend.close()
    return res


def compare(sft_dir: Path, rl_dir: Path, tok, seed: int, held_out: tuple[int, int], n_tools: int, n_interp: int,
            max_new_tokens: int, out: Path, progress: bool = False) -> dict:
    """SFT vs RL on the same held-out items (module docstring): chat arithmetic and tool calls through
    `puyu eval` (`out/{sft,rl}/<task>/predictions.jsonl`), interpreter calls through the judge's greedy
    evaluation (no `puyu eval` task checks a call's operands without running it)."""
    from puyu.model.checkpoint import load_model
    from puyu.rl.rollout import make_engine
    from puyu.tasks import verifiable as V

    rng = random.Random(f"puyu-align-compare-{seed}")
    interp = [V.interpreter_prompt(rng) for _ in range(n_interp)]
    res: dict = {}
    for name, d in (("sft", sft_dir), ("rl", rl_dir)):
        res[name] = eval_items(d, out / name, seed, held_out, n_tools, progress)
        model = load_model(d, dtype="float32", device="cpu")
        engine = make_engine(model, tok)
        try:
            items = C.greedy_eval(engine, tok, interp, max_new_tokens, items=True)["items"]
        finally:
            engine.close()
        res[name]["interpreter_calls"] = {str(i): it for i, it in enumerate(items)}
    table = {}
    for k in res["sft"]:
        ids = sorted(set(res["sft"][k]) & set(res["rl"][k]))
        a, b = [res["sft"][k][i] for i in ids], [res["rl"][k][i] for i in ids]
        for metric, pick in (("correct", lambda it: it["correct"] and it["ended"]), ("ended", lambda it: it["ended"])):
            xa, xb = [pick(i) for i in a], [pick(i) for i in b]
            acc_a, acc_b = sum(xa) / len(xa), sum(xb) / len(xb)
            t = mcnemar(xa, xb)
            table[f"{k}/{metric}"] = {"sft": acc_a, "rl": acc_b, "n": len(xa), **t, "verdict": _verdict(t, acc_a, acc_b)}
    la = [i["length"] for k in res["sft"] for i in res["sft"][k].values()]
    lb = [i["length"] for k in res["rl"] for i in res["rl"][k].values()]
    length = {"sft": sum(la) / len(la), "rl": sum(lb) / len(lb)}
    length["growth"] = length["rl"] / max(length["sft"], 1e-9) - 1
    examples = {k: [{"sft": res["sft"][k][i]["reply"], "rl": res["rl"][k][i]["reply"]} for i in sorted(res["sft"][k])[:3]]
                for k in res["sft"]}
    return {"table": table, "length": length, "examples": examples}


def run_nano_align(sec: NanoAlignSection, out: Path, seed: int, threads, progress: bool, resume: bool,
                   held_out: tuple[int, int]) -> dict:
    """The reward model (reported; the reward for ppo), GRPO or PPO rounds, and the comparison through
    `puyu eval`; writes `<out>/align/report.md` and report.json (wall and CPU seconds per part)."""
    from puyu.model.tokenizer import load_tokenizer
    from puyu.rl.grpo import run_grpo
    from puyu.rl.ppo import run_ppo
    from puyu.rl.rm_train import run_rm

    r = align_recipe(sec, out, seed, threads, progress)
    d = Path(r.out_dir)
    timings: dict = {}
    cpu: dict = {}

    def timed(name, fn):  # wall seconds, and CPU seconds of this process (the load-independent cost)
        t, c = time.perf_counter(), time.process_time()
        res = fn()
        timings[name], cpu[name] = round(time.perf_counter() - t, 1), round(time.process_time() - c, 1)
        return res

    rm_rep = None
    if sec.reward_model or sec.method == "ppo":
        rm_done = d / "rm" / "report.json"
        if resume and rm_done.exists() and (d / "rm" / "hf" / "config.json").exists():
            rm_rep = json.loads(rm_done.read_text(encoding="utf-8"))
        else:
            rm_rep = timed("rm", lambda: run_rm(r))
    if sec.method == "ppo":
        rl = timed("ppo", lambda: run_ppo(r, resume=resume))
        rl_dir, kl_end, rounds = d / "ppo" / "hf", (rl.get("last") or {}).get("kl"), rl.get("rounds")
    else:
        rl = timed("grpo", lambda: run_grpo(r, resume=resume))
        recs = [json.loads(x) for x in (d / "grpo" / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x]
        last = next((m for m in reversed(recs) if m["kind"] == "train"), {})
        rl_dir, kl_end, rounds = d / "grpo" / "hf", last.get("kl"), None
    tok = load_tokenizer(out / "tokenizer")
    cmp_ = timed("compare", lambda: compare(out / "sft" / "hf", rl_dir, tok, seed, held_out, sec.eval_tools,
                                            sec.eval_interpreter, sec.max_new_tokens, d / "eval", progress))
    timings["total"], cpu["total"] = round(sum(timings.values()), 1), round(sum(cpu.values()), 1)
    report = {"method": sec.method,
              "rm": {k: rm_rep[k] for k in ("pairs", "train", "held_out", "sources", "accuracy")} if rm_rep else None,
              "rounds": rounds, "kl_end": kl_end, "rl_dir": str(rl_dir), "compare": cmp_, "timings_s": timings, "cpu_s": cpu}
    (d / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    _write_md(d / "report.md", report)
    return report


def _write_md(path: Path, rep: dict) -> None:
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    lines = ["# nano alignment report", "",
             ("Reward model, then online PPO rounds" if rep["method"] == "ppo" else
              ("Reward model (reported), then " if rep["rm"] else "") + "GRPO on the verifiable task scores")
             + ", then SFT vs RL on the same held-out items (greedy, `puyu eval`).", ""]
    if rep["rm"]:
        acc = rep["rm"]["accuracy"]
        lines += ["## Reward model: held-out pairwise accuracy", "",
                  "| domain | accuracy | 95% Wilson | pairs |", "|---|---|---|---|",
                  *[f"| {dname} | {pct(v['accuracy'])} | {pct(v['ci95'][0])}-{pct(v['ci95'][1])} | {v['n']} |"
                    for dname, v in acc["domains"].items()],
                  f"| overall | {pct(acc['overall'])} | {pct(acc['ci95'][0])}-{pct(acc['ci95'][1])} | {acc['n']} |",
                  "", f"Pair sources (domain/source): {rep['rm']['sources']}", ""]
    if rep["rounds"]:
        lines += ["## Rounds", ""]
        for rd in rep["rounds"]:
            h = rd.get("hacking")
            det = "-" if h is None else ("detected: " + "; ".join(h["reasons"]) if h["detected"] else "not detected")
            u = rd["rm_update"]
            lines.append(f"- round {rd['round']}: hacking {det}; RM update: {u['path']} path, {u['pairs']} pairs, "
                         f"{u['steps']} steps")
        lines.append("")
    lines += ["## SFT vs RL (same items, exact McNemar test)", "",
              "| metric | SFT | RL | n | SFT only | RL only | p | verdict |", "|---|---|---|---|---|---|---|---|",
              *[f"| {k} | {pct(v['sft'])} | {pct(v['rl'])} | {v['n']} | {v['a_only']} | {v['b_only']} | "
                f"{v['p_value']:.3f} | {v['verdict']} |" for k, v in rep["compare"]["table"].items()],
              "", f"Mean reply length (tokens): SFT {rep['compare']['length']['sft']:.1f}, RL "
              f"{rep['compare']['length']['rl']:.1f} ({100 * rep['compare']['length']['growth']:+.1f}%).",
              f"KL to the reference at the end (per reply, nats): {rep['kl_end']}", "",
              f"Wall seconds: {rep['timings_s']}", f"CPU seconds (this process): {rep['cpu_s']}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
