"""Documents per second per core: puyu.data vs datatrove, the same filters + MinHash on the same corpus.

    .venv/bin/python benchmarks/data.py [--docs 6000] [--repeats 2] [--corpus en|zh|both]

Two corpora, each run on both sides in the same process run: `en` (the English synthetic corpus) and
`zh` (the Chinese part of the synthetic corpus: clean, duplicates, spam, repetition, GBK mojibake).

Both sides, one process each (1 core), in this run, on the same synthetic corpus (plain JSONL):

  filters  Gopher quality, Gopher repetition and C4 (both libraries' defaults, which follow the
           papers), in that order;
  dedup    MinHash on word 5-grams, 20 bands x 6 rows (120 hashes for datatrove; puyu computes 128
           and bands 120 of them), keep-first;
  output   gzipped JSONL.

Equivalence notes. datatrove's English word tokenizer is spaCy, which is not installed here; both sides
therefore split words on whitespace and sentences on terminal punctuation (datatrove through a small
WordTokenizer given as its `language`), which is also the faster setting for datatrove. datatrove's
MinHash uses its default xxhash. datatrove runs MinHash as its documented four stages (signatures,
buckets, clusters, filter) after a filtering stage that writes the survivors, as in its examples;
puyu takes the signatures while filtering and drops duplicates in the next stage. Timings include
reading, writing and all stages; the corpus is generated once, outside the timings. The best of
`--repeats` runs counts for each side.

Decisions. A speed ratio means something only if both sides keep the same documents, so every run also
prints the documents kept by one side only, grouped by the step/reason that dropped them on the other
side (puyu's rejects, datatrove's exclusion writers and `filter_reason`). See README "Data pipeline
vs datatrove" for what each kind of difference is.

Chinese (`zh`). datatrove's Chinese word tokenizer is spaCy's zh pipeline with jieba (language
"cmn_Hani"; note that "zh" maps to spaCy's multi-language tokenizer, which does not segment Chinese at
all). Both sides run Gopher quality and Gopher repetition with FineWeb-2's cmn_Hani thresholds
(puyu.data.thresholds; datatrove given the same numbers), no C4 (FineWeb-2 applies it to English only),
then MinHash: puyu on character 5-grams, datatrove on jieba-word 5-grams (its only option), so the
dedup decisions differ by design and only its speed is compared; the rule decisions are compared like
for like.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import sys
import tempfile
import time


def write_input(folder: str, n_docs: int, corpus: str = "en") -> dict[str, str]:
    """Write the corpus; return {id: synthetic label} (for explaining disagreements)."""
    from puyu.data.documents import JsonlWriter
    from puyu.data.synthetic import Generator

    docs = Generator(2024).corpus(n_docs, zh_share=1.0 if corpus == "zh" else 0.0)
    shards = 4
    for k in range(shards):
        w = JsonlWriter(os.path.join(folder, f"part_{k}.jsonl"))
        for d in docs[k * n_docs // shards:(k + 1) * n_docs // shards]:
            w.write({"id": d.id, "text": d.text})
        w.close()
    return {d.id: d.metadata["synthetic"]["label"] for d in docs}


def _read_jsonl(folder: str) -> list[dict]:
    import gzip
    import json

    import zstandard

    out = []
    for root, _, files in os.walk(folder):
        for f in sorted(files):
            path = os.path.join(root, f)
            if f.endswith(".zst"):
                raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb")).read().decode()
            elif f.endswith(".gz"):
                raw = gzip.open(path, "rt").read()
            elif f.endswith(".jsonl"):
                raw = open(path).read()
            else:
                continue
            out += [json.loads(line) for line in raw.splitlines() if line.strip()]
    return out


def run_puyu(input_dir: str, work: str, corpus: str) -> tuple[float, set[str], dict[str, str]]:
    """(seconds, kept ids, {dropped id: "step: reason key"})."""
    from puyu.data.base import reason_key
    from puyu.data.pipeline import parse_recipe, run_recipe

    rules = ["gopher_quality", "gopher_repetition"] + (["c4"] if corpus == "en" else [])
    recipe = parse_recipe({
        "name": "bench", "workdir": work, "input": {"paths": [input_dir]}, "report": False,
        "output": {"format": "jsonl", "compression": "gz"}, "executor": {"kind": "local", "workers": 1},
        "steps": rules + [{"minhash": {"ngram": 5, "num_perm": 128, "bands": 20, "rows": 6}}]})
    t0 = time.perf_counter()
    res = run_recipe(recipe, progress=False)
    secs = time.perf_counter() - t0
    kept = {d.id for d in res.documents()}
    dropped = {r["id"]: reason_key(r["reason"]) for r in _read_jsonl(os.path.join(work, "rejects"))}
    return secs, kept, dropped


def run_datatrove(input_dir: str, work: str, corpus: str) -> tuple[float, set[str], dict[str, str]]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    from puyu.data import thresholds as th

    sentence_end = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")

    class Whitespace(WordTokenizer):
        """Whitespace words, punctuation-terminated sentences (what puyu.data uses)."""

        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return [text[s:e] for s, e in self.span_tokenize(text)]

        def span_tokenize(self, text):
            spans, start = [], 0
            for m in sentence_end.finditer(text):
                spans.append((start, m.end()))
                start = m.end()
            if start < len(text) and text[start:].strip():
                spans.append((start, len(text)))
            return spans

    cfg = MinhashConfig(n_grams=5, num_buckets=20, hashes_per_bucket=6, hash_config=HashConfig(hash_fc="xxhash"))
    p = lambda *a: os.path.join(work, *a)  # noqa: E731
    excl = lambda name: JsonlWriter(p("excluded", name), compression="gzip")  # noqa: E731

    def run(pipeline, tasks=1):
        sink = io.StringIO()  # datatrove prints and logs its stats tables
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=p("logs", str(time.time_ns()))).run()

    if corpus == "en":
        tok = Whitespace("en")
        filters = [GopherQualityFilter(language=tok, exclusion_writer=excl("gopher_quality")),
                   GopherRepetitionFilter(language=tok, exclusion_writer=excl("gopher_repetition")),
                   C4QualityFilter(language=tok, exclusion_writer=excl("c4"))]
    else:  # FineWeb-2's cmn_Hani numbers (the same tables puyu uses), jieba words through spaCy
        from datatrove.utils.word_tokenizers import SpaCyTokenizer

        # what load_word_tokenizer("cmn_Hani") builds; fresh instances, because a loaded spaCy pipeline
        # cannot be deep-copied (the executor copies each stage's pipeline) and load_word_tokenizer
        # would hand the signature stage the filters' loaded one
        tok = SpaCyTokenizer("zh")
        q, r = th.GOPHER_QUALITY["zh"], th.GOPHER_REPETITION["zh"]
        filters = [GopherQualityFilter(language=tok, min_avg_word_length=q["min_mean_word_length"],
                                       max_avg_word_length=q["max_mean_word_length"], stop_words=q["stop_words"],
                                       max_non_alpha_words_ratio=q["min_alpha_words"], min_stop_words=2,
                                       exclusion_writer=excl("gopher_quality")),
                   GopherRepetitionFilter(language=tok, dup_line_frac=r["max_dup_line_frac"],
                                          top_n_grams=tuple(r["top"].items()), dup_n_grams=tuple(r["dup"].items()),
                                          exclusion_writer=excl("gopher_repetition"))]
    t0 = time.perf_counter()
    run([JsonlReader(input_dir, glob_pattern="*.jsonl"), *filters, JsonlWriter(p("filtered"), compression="gzip")])
    sig_tok = tok if corpus == "en" else SpaCyTokenizer("zh")
    run([JsonlReader(p("filtered")), MinhashDedupSignature(p("sigs"), config=cfg, language=sig_tok)])
    run([MinhashDedupBuckets(p("sigs"), p("buckets"), config=cfg)], tasks=cfg.num_buckets)
    run([MinhashDedupCluster(p("buckets"), p("remove"), config=cfg)])
    run([JsonlReader(p("filtered")), MinhashDedupFilter(p("remove")), JsonlWriter(p("out"), compression="gzip")])
    seconds = time.perf_counter() - t0
    kept = {r["id"] for r in _read_jsonl(p("out"))}
    dropped = {}
    for name in os.listdir(p("excluded")) if os.path.isdir(p("excluded")) else []:
        for rec in _read_jsonl(p("excluded", name)):
            dropped[rec["id"]] = f"{name}: {rec.get('metadata', {}).get('filter_reason', '?')}"
    for rec in _read_jsonl(p("filtered")):
        if rec["id"] not in kept:
            dropped[rec["id"]] = "minhash"
    return seconds, kept, dropped


def disagreements(puyu: tuple, dt: tuple, all_ids: list[str], labels: dict[str, str]) -> list[str]:
    """Lines describing the documents kept by one side only, grouped by the other side's reason and
    the documents' synthetic labels."""
    from collections import Counter

    _, kept_p, drop_p = puyu
    _, kept_d, drop_d = dt
    only_p, only_d = kept_p - kept_d, kept_d - kept_p
    lines = [f"kept by both {len(kept_p & kept_d)}, puyu only {len(only_p)}, datatrove only {len(only_d)}"]
    for title, ids, why in (("kept by puyu only; datatrove dropped them at", only_p, drop_d),
                            ("kept by datatrove only; puyu dropped them at", only_d, drop_p)):
        if ids:
            lines.append(f"  {title}:")
            for (reason, label), n in Counter((why.get(i, "?"), labels.get(i, "?")) for i in ids).most_common():
                lines.append(f"    {n:5d}  {reason}  (synthetic label: {label})")
    both = Counter((drop_p[i].split(":")[0], drop_d[i].split(":")[0]) for i in all_ids if i in drop_p and i in drop_d)
    differ = {k: v for k, v in both.items() if k[0] != k[1]}
    if differ:
        lines.append("  dropped by both, at different steps (puyu step, datatrove step): "
                     + ", ".join(f"{a}/{b} {n}" for (a, b), n in sorted(differ.items())))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--corpus", choices=["en", "zh", "both"], default="both")
    args = ap.parse_args(argv)
    try:
        from loguru import logger

        logger.remove()  # datatrove logs every step to stderr; keep the output readable
    except ImportError:
        pass
    root = tempfile.mkdtemp(prefix="puyu-bench-data-")
    try:
        for corpus in (["en", "zh"] if args.corpus == "both" else [args.corpus]):
            inp = os.path.join(root, f"input_{corpus}")
            labels = write_input(inp, args.docs, corpus)
            all_ids = list(labels)
            best: dict[str, tuple] = {}
            for r in range(args.repeats):
                for name, fn in (("puyu", run_puyu), ("datatrove", run_datatrove)):
                    work = os.path.join(root, f"{corpus}_{name}{r}")
                    res = fn(inp, work, corpus)
                    print(f"  [{corpus}] run {r + 1} {name:9s} {res[0]:7.2f} s, {len(res[1])} documents kept",
                          file=sys.stderr)
                    if name not in best or res[0] < best[name][0]:
                        best[name] = res
                    shutil.rmtree(work, ignore_errors=True)
            rules = "gopher_quality, gopher_repetition" + (", c4" if corpus == "en" else " (FineWeb-2 cmn_Hani)")
            shingles = "word 5-grams both" if corpus == "en" else "puyu CJK char 5-grams, datatrove jieba-word 5-grams"
            print(f"\ncorpus {corpus}: {args.docs} synthetic documents; filters: {rules}; MinHash 20x6 "
                  f"({shingles}); 1 process (1 core) each")
            rates = {}
            for name, (secs, kept, _) in best.items():
                rates[name] = args.docs / secs  # one core each: documents/s = documents/s/core
                print(f"{name:10s} {rates[name]:8.1f} docs/s/core  ({secs:.2f} s, {len(kept)} kept)")
            print(f"ratio puyu/datatrove: {rates['puyu'] / rates['datatrove']:.2f}x")
            for line in disagreements(best["puyu"], best["datatrove"], all_ids, labels):
                print(line)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
