"""Two nano runs on the same held-out problems, paired: is B's arithmetic better than A's, or only different?

For each run directory (a `puyu demo` output) the held-out a±b < 100 problems (`data/test_problems.json`, which
must be the same in both) are scored per problem, greedily: the base model (`longctx/hf`) on the raw prompt and
the chat model (`sft/hf`) through the chat template (`puyu.train.evaluate`, as the recipe's report does; its
report.json's per-problem `right` lists are used where present). Prints each run's accuracy and the exact McNemar
test on the problems where exactly one of the two is right (`puyu.eval.stats.mcnemar`).

With `--passkey N`, also passkey retrieval by the two base models on the same N keys at N evenly spread depths
(`puyu.train.evaluate.passkey_accuracy`, the report's test with N depths instead of its 50; the prompt fills the
long-context stage's rows), paired key by key.

    PYTHONPATH=src python benchmarks/nano_paired.py runs/A runs/B [--passkey 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def outcomes(run: Path) -> dict[str, list[bool]]:
    """Per-problem outcomes of `run` for "base" and "chat" arithmetic < 100, from its report.json or recomputed."""
    rep = json.loads((run / "report.json").read_text(encoding="utf-8")) if (run / "report.json").is_file() else {}
    ev = rep.get("eval", {})
    got = {k: ev.get(key, {}).get("right") for k, key in (("base", "base_arith_100"), ("chat", "chat_arith_100"))}
    if all(got.values()):
        return got
    from puyu.model.checkpoint import load_model
    from puyu.model.tokenizer import load_tokenizer
    from puyu.recipes.nano import _load_tests
    from puyu.train import evaluate as E

    tok = load_tokenizer(run / "tokenizer")
    small, _ = _load_tests(run / "data")
    base = load_model(run / "longctx" / "hf", dtype="float32", device="cpu")
    chat = load_model(run / "sft" / "hf", dtype="float32", device="cpu")
    return {"base": E.arithmetic_accuracy(base, tok, small)["right"],
            "chat": E.chat_arithmetic_accuracy(chat, tok, small)["right"]}


def longctx_seq_len(run: Path) -> int:
    """The long-context stage's row length: its settings.json, else report.json's recipe; SystemExit without one."""
    for f, get in ((run / "longctx" / "settings.json", lambda d: d.get("longctx.seq_len")),
                   (run / "report.json", lambda d: d.get("recipe", {}).get("longctx", {}).get("seq_len"))):
        try:
            v = get(json.loads(f.read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(v, int) and v > 0:
            return v
    raise SystemExit(f"{run}: no long-context row length in longctx/settings.json or report.json")


def passkey_outcomes(run: Path, n: int, seq_len: int) -> list[bool]:
    """Per-key passkey outcomes of `run`'s base model (longctx/hf) at n depths, prompts of seq_len tokens."""
    from puyu.model.checkpoint import load_model
    from puyu.model.tokenizer import load_tokenizer
    from puyu.train import evaluate as E

    base = load_model(run / "longctx" / "hf", dtype="float32", device="cpu")
    return E.passkey_accuracy(base, load_tokenizer(run / "tokenizer"), n, seq_len, seed=0)["right"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--passkey", type=int, default=0, metavar="N", help="also passkey at N depths (default: not)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from puyu.eval.stats import mcnemar

    if (args.a / "data" / "test_problems.json").read_bytes() != (args.b / "data" / "test_problems.json").read_bytes():
        raise SystemExit("the two runs hold different held-out problems: no paired comparison")
    if args.passkey < 0:
        raise SystemExit("--passkey must be >= 0")
    if args.passkey:  # the same prompts for both, checked before any work
        seq_len = {longctx_seq_len(args.a), longctx_seq_len(args.b)}
        if len(seq_len) > 1:
            raise SystemExit(f"the two runs' long-context rows differ in length ({sorted(seq_len)}): no paired passkey")
    oa, ob = outcomes(args.a), outcomes(args.b)
    out = {}
    for k in ("base", "chat"):
        t = mcnemar(oa[k], ob[k])
        out[k] = {"a": sum(oa[k]) / len(oa[k]), "b": sum(ob[k]) / len(ob[k]), "n": len(oa[k]), **t}
        print(f"{k} arithmetic < 100: A {100 * out[k]['a']:.1f}% -> B {100 * out[k]['b']:.1f}% of {out[k]['n']}; "
              f"right in A only {t['a_only']}, in B only {t['b_only']}; exact McNemar p = {t['p_value']:.3g}")
    if args.passkey:
        (L,) = seq_len
        pa, pb = passkey_outcomes(args.a, args.passkey, L), passkey_outcomes(args.b, args.passkey, L)
        t = mcnemar(pa, pb)
        out["passkey"] = {"a": sum(pa) / len(pa), "b": sum(pb) / len(pb), "n": len(pa), **t}
        print(f"passkey ({len(pa)} depths): A {100 * out['passkey']['a']:.1f}% -> B {100 * out['passkey']['b']:.1f}%; "
              f"right in A only {t['a_only']}, in B only {t['b_only']}; exact McNemar p = {t['p_value']:.3g}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
