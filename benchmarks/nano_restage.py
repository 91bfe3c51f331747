"""Re-run the nano recipe from the long-context stage on an existing run's pretrained model, with changed
long-context data: a paired comparison of a data change that keeps the same pretrained weights.

Copies SRC's tokenizer/, pretrain/, shards/ and data/ into DST, rebuilds the corpus with the recipe
(recipes/nano.yaml plus --set overrides, SRC's seed) in a scratch folder, checks that its pretraining
records are byte for byte SRC's (the pretrained weights then belong to this recipe's data), takes its
long-context records, tokenizes them into DST/shards, and prints the `puyu demo --resume` command that
runs long-context, SFT and the evaluation in DST (SFT data stays SRC's: the same draw). The copied stages'
settings.json files record the new corpus.long_* values, so that `--resume` accepts them.

    PYTHONPATH=src python benchmarks/nano_restage.py /work/main/runs/s6_lr5e4_s0 runs/G_s0 \\
        --set seed=0 --set corpus.long_arithmetic_p_close=0.3
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
    args = ap.parse_args()
    from puyu.model.tokenizer import load_tokenizer
    from puyu.recipes.nano import NanoRecipe, build_corpus, stage_settings
    from puyu.train.recipe import load_recipe
    from puyu.train.shards import tokenize_to_shard

    r = load_recipe("recipes/nano.yaml", args.overrides + [f"out_dir={args.dst}", "progress=false"], cls=NanoRecipe)
    if args.dst.exists():
        raise SystemExit(f"{args.dst} exists")
    args.dst.mkdir(parents=True)
    for name in ("tokenizer", "pretrain", "shards", "data"):
        shutil.copytree(args.src / name, args.dst / name)
    with tempfile.TemporaryDirectory() as tmp:
        build_corpus(r, Path(tmp))
        if _sha(Path(tmp) / "test_problems.json") != _sha(args.src / "data" / "test_problems.json"):
            raise SystemExit(f"the held-out problems differ from {args.src}'s")
        for f in ("pretrain_train.jsonl", "pretrain_val.jsonl"):
            ours = (Path(tmp) / f).read_text(encoding="utf-8").splitlines()
            theirs = (args.src / "data" / f).read_text(encoding="utf-8").splitlines()
            diff = [i for i, (x, y) in enumerate(zip(ours, theirs)) if x != y]
            # pydoc pages can differ between interpreter states (a default value's repr); nothing else may
            if len(ours) != len(theirs) or any(not ours[i].startswith('{"text": ') for i in diff):
                bad = [i for i in diff if not ours[i].startswith('{"text": ')][:3]
                raise SystemExit(f"{f} differs from {args.src}'s ({len(ours)} vs {len(theirs)} records, {len(diff)} differ, "
                                 f"first non-documentation ones: {bad}): the pretrained model did not see this recipe's data")
            print(f"{f}: {len(ours)} records, {len(diff)} documentation records differ, the rest identical")
        for f in ("longctx_train.jsonl", "longctx_val.jsonl"):
            shutil.copy(Path(tmp) / f, args.dst / "data" / f)
    tok = load_tokenizer(args.dst / "tokenizer")
    data, shards = args.dst / "data", args.dst / "shards"
    for split in ("train", "val"):
        shutil.rmtree(shards / f"longctx_{split}")
        meta = tokenize_to_shard([data / f"longctx_{split}.jsonl", data / f"passkey_longctx_{split}.jsonl"],
                                 shards / f"longctx_{split}", tok, progress=False)
        print(f"longctx_{split}: {meta['n_tokens']} tokens, {meta['n_docs']} documents")
    # The copied stages' recorded settings take this recipe's long-context data values (corpus.long_*), which the
    # check above shows leave their own data unchanged; every other value stays as SRC made it, so --resume still
    # refuses a change that would need them redone.
    for name in ("data", "tokenizer", "shards", "pretrain"):
        marker = args.dst / name / "settings.json"
        if marker.is_file():
            old = json.loads(marker.read_text())
            new = {k: v for k, v in stage_settings(r, "corpus" if name == "data" else name).items()
                   if k.startswith("corpus.long_")}
            marker.write_text(json.dumps({**old, **new}, indent=1))
    sets = " ".join(f"--set {o}" for o in args.overrides)
    print(f"pretraining data identical to {args.src}'s; now:\n  puyu demo --resume --set out_dir={args.dst} {sets}")


if __name__ == "__main__":
    main()
