"""Re-run the nano recipe from the long-context stage (or from SFT) on an existing run's trained models, with
changed data for that stage: a paired comparison of a data change that keeps the same pretrained weights.

Copies SRC's tokenizer/, pretrain/, shards/ and data/ (with `--stage sft` also longctx/) into DST, rebuilds the
corpus with the recipe (recipes/nano.yaml plus --set overrides, SRC's seed) in a scratch folder, checks that the
records of the stages it keeps are byte for byte SRC's (the kept weights then belong to this recipe's data), takes
the restaged stage's records (long-context, or SFT), tokenizes them into DST/shards, and prints the `puyu demo
--resume` command that runs the rest and the evaluation in DST (with `--stage longctx` the SFT data stays SRC's: the
same draw). The copied stages' settings.json files record the new values of the restaged stage's corpus keys
(corpus.long_* or corpus.sft_*), so that `--resume` accepts them.

    PYTHONPATH=src python benchmarks/nano_restage.py /work/main/runs/s6_lr5e4_s0 runs/G_s0 \\
        --set seed=0 --set corpus.long_arithmetic_p_close=0.3
    PYTHONPATH=src python benchmarks/nano_restage.py runs/nano runs/nano_sft --stage sft \\
        --set corpus.sft_arithmetic_chats=6000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import tempfile
from pathlib import Path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--stage", choices=("longctx", "sft"), default="longctx",
                    help="the first stage trained again (default longctx)")
    args = ap.parse_args()
    from puyu.model.tokenizer import load_tokenizer
    from puyu.recipes.nano import NanoRecipe, build_corpus, stage_settings
    from puyu.train.recipe import load_recipe
    from puyu.train.shards import tokenize_to_shard

    r = load_recipe("recipes/nano.yaml", args.overrides + [f"out_dir={args.dst}", "progress=false"], cls=NanoRecipe)
    if args.dst.exists():
        raise SystemExit(f"{args.dst} exists")
    args.dst.mkdir(parents=True)
    kept = ["tokenizer", "pretrain"] + (["longctx"] if args.stage == "sft" else [])
    for name in kept + ["shards", "data"]:
        shutil.copytree(args.src / name, args.dst / name)
    same = ["pretrain"] + (["longctx"] if args.stage == "sft" else [])
    with tempfile.TemporaryDirectory() as tmp:
        build_corpus(r, Path(tmp))
        if _sha(Path(tmp) / "test_problems.json") != _sha(args.src / "data" / "test_problems.json"):
            raise SystemExit(f"the held-out problems differ from {args.src}'s")
        for f in [f"{n}_{split}.jsonl" for n in same for split in ("train", "val")]:
            ours = (Path(tmp) / f).read_text(encoding="utf-8").splitlines()
            theirs = (args.src / "data" / f).read_text(encoding="utf-8").splitlines()
            diff = [i for i, (x, y) in enumerate(zip(ours, theirs)) if x != y]
            # pydoc pages can differ between interpreter states (a default value's repr); nothing else may
            if len(ours) != len(theirs) or any(not ours[i].startswith('{"text": ') for i in diff):
                bad = [i for i in diff if not ours[i].startswith('{"text": ')][:3]
                raise SystemExit(f"{f} differs from {args.src}'s ({len(ours)} vs {len(theirs)} records, {len(diff)} differ, "
                                 f"first non-documentation ones: {bad}): the kept models did not see this recipe's data")
            print(f"{f}: {len(ours)} records, {len(diff)} documentation records differ, the rest identical")
        for f in (f"{args.stage}_train.jsonl", f"{args.stage}_val.jsonl"):
            shutil.copy(Path(tmp) / f, args.dst / "data" / f)
    tok = load_tokenizer(args.dst / "tokenizer")
    data, shards = args.dst / "data", args.dst / "shards"
    for split in ("train", "val"):
        shutil.rmtree(shards / f"{args.stage}_{split}")
        inputs = [data / f"{args.stage}_{split}.jsonl"]
        if args.stage == "longctx":
            inputs.append(data / f"passkey_longctx_{split}.jsonl")
        meta = tokenize_to_shard(inputs, shards / f"{args.stage}_{split}", tok, progress=False)
        print(f"{args.stage}_{split}: {meta['n_tokens']} tokens, {meta['n_docs']} documents")
    # The copied stages' recorded settings take this recipe's values of the restaged stage's data (corpus.long_*
    # or corpus.sft_*), which the check above shows leave their own data unchanged; every other value stays as SRC
    # made it, so --resume still refuses a change that would need them redone.
    prefix = {"longctx": "corpus.long_", "sft": "corpus.sft_"}[args.stage]
    for name in ["data", "shards"] + kept:
        marker = args.dst / name / "settings.json"
        if marker.is_file():
            old = json.loads(marker.read_text())
            new = {k: v for k, v in stage_settings(r, "corpus" if name == "data" else name).items()
                   if k.startswith(prefix)}
            marker.write_text(json.dumps({**old, **new}, indent=1))
    sets = " ".join(f"--set {shlex.quote(o)}" for o in args.overrides)  # pasteable: values may hold spaces, braces
    print(f"{' and '.join(same)} data identical to {args.src}'s; now:\n  puyu demo --resume --set {shlex.quote(f'out_dir={args.dst}')} {sets}")


if __name__ == "__main__":
    main()
