"""The nano recipe's evaluation stage: the InternLM2 launch claims in miniature, through `puyu eval`.

`nano_suite(chat_dir, longctx_dir, out_dir)` runs, each into its own folder of `out_dir` (one report):
- needle@plain and needle@dynamic-ntk-F: single-needle passkey retrieval with the long-context model over
  lengths 1/4x .. 8x its training length x depths, without and with dynamic NTK at inference (factor F);
- arithmetic (chat) and arithmetic+interpreter: a±b with operands < 1000 through the chat model,
  without and with the sandboxed interpreter (side by side);
- tools: held-out tool dialogues scored with their arguments, not only the name.
Returns the summary the recipe puts in its report (and writes out_dir/report.md with the heatmaps).
"""

from __future__ import annotations

import time
from pathlib import Path

from puyu.eval import Context, get_task
from puyu.eval import report as R
from puyu.eval.backends import LocalBackend
from puyu.eval.runner import run_task


def nano_suite(chat_dir: str | Path, longctx_dir: str | Path, out_dir: str | Path, *, seed: int = 0,
               trained_length: int | None = None, ntk_factor: float = 4.0, arith_n: int = 40, tools_n: int = 40,
               depths: str = "0,25,50,75,100", max_factor: float = 8.0, interpreter: bool = True,
               held_out: tuple[int, int] = (400, 200), progress: bool = False, fresh: bool = True) -> dict:
    """`held_out`: the recipe's (test_small, test_big) counts, so the arithmetic problems are exactly the
    ones its training data skipped; at most test_big problems are drawn. `fresh` (default): earlier
    predictions in `out_dir` are deleted first (a rerun of the recipe retrains the models at the same
    paths, so old predictions would describe other weights)."""
    out = Path(out_dir)
    timings = {}
    t0 = time.perf_counter()
    for label, scaling in (("plain", None), (f"dynamic-ntk-{ntk_factor:g}", {"type": "dynamic", "factor": ntk_factor})):
        from puyu.model.config import ModelConfig

        trained = trained_length or ModelConfig.load(longctx_dir).max_position_embeddings
        # room for 8 of the longest prompts at once (the default cache is sized for the trained length)
        backend = LocalBackend(str(longctx_dir), max_batch_size=16, rope_scaling=scaling,
                               cache_tokens=8 * (int(trained * max_factor) + 64))
        try:
            ctx = Context(seed=seed, tokenizer=backend.tokenizer, model_config=backend.config,
                          options={"trained_length": str(trained), "min_factor": "0.25",
                                   "max_factor": str(max_factor), "points": "6", "depths": depths})
            run_task(get_task("needle"), backend, out, ctx, progress=progress, label=label, fresh=fresh)
        finally:
            backend.close()
    timings["needle_s"] = round(time.perf_counter() - t0, 1)
    t1 = time.perf_counter()
    chat = LocalBackend(str(chat_dir), max_batch_size=32)
    try:
        arith = Context(seed=seed, tokenizer=chat.tokenizer, model_config=chat.config,
                        options={"sizes": "1000", "n": str(min(arith_n, held_out[1])), "style": "chat",
                                 "test_small": str(held_out[0]), "test_big": str(held_out[1])})
        run_task(get_task("arithmetic"), chat, out, arith, progress=progress, fresh=fresh)
        agent_error = None
        if interpreter:
            arith.interpreter = True
            try:
                run_task(get_task("arithmetic"), chat, out, arith, progress=progress,
                         agent={"workers": 2, "max_steps": 3, "timeout": 10.0}, fresh=fresh)
            except Exception as e:  # no kernel can start here: the rest of the report still stands
                agent_error = f"{type(e).__name__}: {e}"
        tools = Context(seed=seed, tokenizer=chat.tokenizer, model_config=chat.config, options={"n": str(tools_n)})
        run_task(get_task("tools"), chat, out, tools, progress=progress, fresh=fresh)
    finally:
        chat.close()
    timings["chat_s"] = round(time.perf_counter() - t1, 1)
    rep = R.build(out)
    summary = {"report": str(out / "report.md"), "timings_s": timings}
    if agent_error:
        summary["interpreter_error"] = agent_error
    for t in rep["tasks"]:
        entry = {"pass@1": t["pass@1"]["mean"], "ci95": t["pass@1"]["ci95"], "n": t["n_samples"]}
        if "needle" in t:
            entry.update(effective_length=t["needle"]["effective_length"],
                         mean_by_length=t["needle"]["mean_by_length"], heatmap=t["needle"]["heatmap"])
        if "agent" in t:
            entry["agent"] = t["agent"]
        if t["details"]:
            entry["details"] = {k: v["mean"] for k, v in t["details"].items()}
        summary[t["folder"]] = entry
    return summary
