"""Compare the SFT model with the newest GRPO checkpoint of a nano alignment run that was stopped before
its end (the comparison `run_nano_align` makes at the end: `puyu.rl.nano_stage.compare`, same held-out items,
exact McNemar). Writes `<out>/align/report_step<N>.{json,md}` and `<out>/align/grpo/hf_step<N>/`.

  python benchmarks/align_checkpoint_compare.py runs/nano --tools 120 --interpreter 100
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="the nano run folder (chat/, tokenizer/, data/, align/grpo/checkpoints/)")
    ap.add_argument("--tools", type=int, default=60)
    ap.add_argument("--interpreter", type=int, default=60)
    ap.add_argument("--held-out", type=int, nargs=2, default=(400, 200), help="test_small test_big")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    from puyu.model.checkpoint import load_model, save_pretrained
    from puyu.model.tokenizer import load_tokenizer
    from puyu.rl.nano_stage import _write_md, compare
    from puyu.train.state import find_latest, load_checkpoint

    out = Path(a.out)
    d = out / "align"
    t, c = time.perf_counter(), time.process_time()
    ck = find_latest(d / "grpo" / "checkpoints")
    if ck is None:
        raise SystemExit(f"error: no GRPO checkpoint under {d / 'grpo' / 'checkpoints'}")
    st = load_checkpoint(ck)
    tok = load_tokenizer(out / "tokenizer")
    model = load_model(out / "chat", dtype="float32")
    model.load_state_dict(st["actor"])
    hf = d / "grpo" / f"hf_step{st['step']}"
    save_pretrained(model, hf, tokenizer=tok)
    cmp_ = compare(out / "chat", hf, tok, a.seed, tuple(a.held_out), a.tools, a.interpreter, 32, d / "eval", False)
    recs = [json.loads(x) for x in (d / "grpo" / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x]
    last = [m for m in recs if m["kind"] == "train" and m["step"] == st["step"]]
    rep = {"method": "grpo", "rm": None, "rounds": None, "kl_end": last[-1]["kl"] if last else None, "compare": cmp_,
           "timings_s": {"compare": round(time.perf_counter() - t, 1)},
           "cpu_s": {"compare": round(time.process_time() - c, 1)}, "stopped_at": st["step"]}
    (d / f"report_step{st['step']}.json").write_text(json.dumps(rep, indent=1, default=str) + "\n", encoding="utf-8")
    _write_md(d / f"report_step{st['step']}.md", rep)
    print(json.dumps({"step": st["step"], "kl_end": rep["kl_end"], "cpu_s": rep["cpu_s"],
                      "table": {k: {x: v[x] for x in ("sft", "rl", "n", "a_only", "b_only", "p_value")}
                                for k, v in cmp_["table"].items()}, "length": cmp_["length"]}, indent=1))


if __name__ == "__main__":
    main()
