"""The alignment stage of the nano recipe: RM from judge pairs, online PPO rounds, and the SFT-vs-RL
comparison with paired tests. Called by `puyu.recipes.nano` after its evaluation (one hook there).

Nano settings (`NanoAlignSection`) replace the published sizes (~400 iterations a round, lr 1e-6) so the
stage takes minutes on a CPU; the published values stay the defaults of `puyu.rl.recipe`.

Comparison: the SFT model (`<out>/chat`) and the RL model (`<out>/align/ppo/hf`) answer the same held-out
prompts greedily: chat-template arithmetic on the recipe's held-out problems (never trained on), tool
calls (right name and arguments), interpreter calls (right operands; not trained by RL, so it checks
that RL does not lose it) and turn-ending. Every "better" / "not worse" claim comes with an exact
McNemar test on the same items (`mcnemar`); "not worse" is stated only as "no significant loss"
(p >= 0.05 for a loss), never as proven equivalence.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from puyu.eval.stats import mcnemar
from puyu.rl import common as C


@dataclass
class NanoAlignSection:
    """Nano alignment settings. Off by default: at nano scale the stage does not yet improve the SFT model
    and costs ~10 minutes (issue 13's closing note); `enabled: true` runs it."""

    enabled: bool = False
    judge_prompts: int = 240
    samples: int = 4
    rm_epochs: float = 4.0
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
    from puyu.rl.recipe import AlignRecipe, PolicySection, PPOSection, PromptSection, RMSection

    return AlignRecipe(
        out_dir=str(out / "align"), seed=seed, device="cpu", threads=threads if isinstance(threads, int) else None,
        progress=progress, policy=PolicySection(init=str(out / "chat"), tokenizer=str(out / "tokenizer")),
        prompts=PromptSection(exclude_file=str(out / "data" / "test_problems.json"), eval_n=60),
        rm=RMSection(judge_prompts=sec.judge_prompts, samples=sec.samples, max_new_tokens=sec.max_new_tokens,
                     epochs=sec.rm_epochs, lr=sec.rm_lr, batch_size=16),
        ppo=PPOSection(rounds=sec.rounds, iterations=sec.iterations, prompts_per_iter=sec.prompts_per_iter,
                       minibatch=sec.prompts_per_iter, actor_lr=sec.actor_lr, critic_lr=sec.critic_lr,
                       critic_warmup=sec.critic_warmup, kl_coef=sec.kl_coef, ptx_coef=sec.ptx_coef,
                       ptx_data=[str(out / "data" / "sft_train.jsonl")], max_new_tokens=sec.max_new_tokens,
                       eval_every=sec.iterations, save_every=max(1, sec.iterations // 2),
                       fast_pairs=sec.fast_pairs, fast_steps=sec.fast_steps, slow_prompts=sec.slow_prompts,
                       slow_steps=sec.slow_steps))


EVAL_SETS = {  # name in the report -> (`puyu eval` task, its options)
    "chat_arithmetic": ("arithmetic", {"style": "chat", "sizes": "100"}),
    "tool_calls": ("tools", {}),
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
        for name, (task_name, opts) in EVAL_SETS.items():
            extra = ({"n": held_out[0], "test_small": held_out[0], "test_big": held_out[1]}
                     if task_name == "arithmetic" else {"n": n_tools})
            ctx = Context(seed=seed, options={**opts, **extra}, tokenizer=backend.tokenizer,
                          model_config=backend.config)
            d = run_task(get_task(task_name), backend, out, ctx, progress=progress, fresh=True)
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
    """RM, PPO rounds and the comparison; writes `<out>/align/report.md` and report.json."""
    from puyu.model.tokenizer import load_tokenizer
    from puyu.rl.ppo import run_ppo
    from puyu.rl.rm_train import run_rm

    r = align_recipe(sec, out, seed, threads, progress)
    d = Path(r.out_dir)
    t0 = time.perf_counter()
    timings = {}
    rm_done = d / "rm" / "report.json"
    if resume and rm_done.exists() and (d / "rm" / "hf" / "config.json").exists():
        rm_rep = json.loads(rm_done.read_text(encoding="utf-8"))
    else:
        rm_rep = run_rm(r)
    timings["rm"] = round(time.perf_counter() - t0, 1)
    t1 = time.perf_counter()
    ppo = run_ppo(r, resume=resume)
    timings["ppo"] = round(time.perf_counter() - t1, 1)
    t2 = time.perf_counter()
    tok = load_tokenizer(out / "tokenizer")
    cmp_ = compare(out / "chat", d / "ppo" / "hf", tok, seed, held_out, sec.eval_tools, sec.eval_interpreter,
                   sec.max_new_tokens, d / "eval", progress)
    timings["compare"] = round(time.perf_counter() - t2, 1)
    timings["total"] = round(time.perf_counter() - t0, 1)
    last = ppo.get("last") or {}
    report = {"rm": {k: rm_rep[k] for k in ("pairs", "train", "held_out", "sources", "accuracy")},
              "rounds": ppo.get("rounds"), "kl_end": last.get("kl"), "compare": cmp_, "timings_s": timings}
    (d / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    _write_md(d / "report.md", report)
    return report


def _write_md(path: Path, rep: dict) -> None:
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    acc = rep["rm"]["accuracy"]
    lines = ["# nano alignment report", "",
             "Reward model, then online PPO rounds, then SFT vs RL on the same held-out items (greedy).", "",
             "## Reward model: held-out pairwise accuracy", "",
             "| domain | accuracy | 95% Wilson | pairs |", "|---|---|---|---|",
             *[f"| {dname} | {pct(v['accuracy'])} | {pct(v['ci95'][0])}-{pct(v['ci95'][1])} | {v['n']} |"
               for dname, v in acc["domains"].items()],
             f"| overall | {pct(acc['overall'])} | {pct(acc['ci95'][0])}-{pct(acc['ci95'][1])} | {acc['n']} |", "",
             f"Pair sources (domain/source): {rep['rm']['sources']}", "", "## Rounds", ""]
    for rd in rep["rounds"] or []:
        h = rd.get("hacking")
        det = "-" if h is None else ("detected: " + "; ".join(h["reasons"]) if h["detected"] else "not detected")
        u = rd["rm_update"]
        lines.append(f"- round {rd['round']}: hacking {det}; RM update: {u['path']} path, {u['pairs']} pairs, {u['steps']} steps")
    lines += ["", "## SFT vs RL (same items, exact McNemar test)", "",
              "| metric | SFT | RL | n | SFT only | RL only | p | verdict |", "|---|---|---|---|---|---|---|---|",
              *[f"| {k} | {pct(v['sft'])} | {pct(v['rl'])} | {v['n']} | {v['a_only']} | {v['b_only']} | "
                f"{v['p_value']:.3f} | {v['verdict']} |" for k, v in rep["compare"]["table"].items()],
              "", f"Mean reply length (tokens): SFT {rep['compare']['length']['sft']:.1f}, RL "
              f"{rep['compare']['length']['rl']:.1f} ({100 * rep['compare']['length']['growth']:+.1f}%).",
              f"KL to the reference at the end (per reply, nats): {rep['kl_end']}", "",
              f"Seconds: {rep['timings_s']}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
