"""Documents per second per core: puyu.data vs datatrove, the same filters + MinHash on the same corpus.

    .venv/bin/python benchmarks/data.py [--docs 6000] [--repeats 2]

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


def write_input(folder: str, n_docs: int) -> None:
    from puyu.data.documents import JsonlWriter
    from puyu.data.synthetic import Generator

    docs = Generator(2024).corpus(n_docs)
    shards = 4
    for k in range(shards):
        w = JsonlWriter(os.path.join(folder, f"part_{k}.jsonl"))
        for d in docs[k * n_docs // shards:(k + 1) * n_docs // shards]:
            w.write({"id": d.id, "text": d.text})
        w.close()


def run_puyu(input_dir: str, work: str) -> tuple[float, int]:
    from puyu.data.pipeline import parse_recipe, run_recipe

    recipe = parse_recipe({
        "name": "bench", "workdir": work, "input": {"paths": [input_dir]}, "report": False,
        "output": {"format": "jsonl", "compression": "gz"}, "executor": {"kind": "local", "workers": 1},
        "steps": ["gopher_quality", "gopher_repetition", "c4",
                  {"minhash": {"ngram": 5, "num_perm": 128, "bands": 20, "rows": 6}}]})
    t0 = time.perf_counter()
    res = run_recipe(recipe, progress=False)
    return time.perf_counter() - t0, res.documents_out


def run_datatrove(input_dir: str, work: str) -> tuple[float, int]:
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

    tok = Whitespace("en")
    cfg = MinhashConfig(n_grams=5, num_buckets=20, hashes_per_bucket=6, hash_config=HashConfig(hash_fc="xxhash"))
    p = lambda *a: os.path.join(work, *a)  # noqa: E731

    def run(pipeline, tasks=1):
        sink = io.StringIO()  # datatrove prints and logs its stats tables
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=p("logs", str(time.time_ns()))).run()

    t0 = time.perf_counter()
    run([JsonlReader(input_dir, glob_pattern="*.jsonl"),
         GopherQualityFilter(language=tok), GopherRepetitionFilter(language=tok), C4QualityFilter(language=tok),
         JsonlWriter(p("filtered"), compression="gzip")])
    run([JsonlReader(p("filtered")), MinhashDedupSignature(p("sigs"), config=cfg, language=tok)])
    run([MinhashDedupBuckets(p("sigs"), p("buckets"), config=cfg)], tasks=cfg.num_buckets)
    run([MinhashDedupCluster(p("buckets"), p("remove"), config=cfg)])
    run([JsonlReader(p("filtered")), MinhashDedupFilter(p("remove")), JsonlWriter(p("out"), compression="gzip")])
    seconds = time.perf_counter() - t0
    import gzip

    kept = sum(sum(1 for _ in gzip.open(os.path.join(p("out"), f), "rt")) for f in os.listdir(p("out")))
    return seconds, kept


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    try:
        from loguru import logger

        logger.remove()  # datatrove logs every step to stderr; keep the output readable
    except ImportError:
        pass
    root = tempfile.mkdtemp(prefix="puyu-bench-data-")
    try:
        inp = os.path.join(root, "input")
        write_input(inp, args.docs)
        best: dict[str, tuple[float, int]] = {}
        for r in range(args.repeats):
            for name, fn in (("puyu", run_puyu), ("datatrove", run_datatrove)):
                work = os.path.join(root, f"{name}{r}")
                secs, kept = fn(inp, work)
                print(f"  run {r + 1} {name:9s} {secs:7.2f} s, {kept} documents kept", file=sys.stderr)
                if name not in best or secs < best[name][0]:
                    best[name] = (secs, kept)
                shutil.rmtree(work, ignore_errors=True)
        print(f"corpus: {args.docs} synthetic documents; filters: gopher_quality, gopher_repetition, c4; "
              f"MinHash 5-grams 20x6; 1 process (1 core) each")
        rates = {}
        for name, (secs, kept) in best.items():
            rates[name] = args.docs / secs  # one core each: documents/s = documents/s/core
            print(f"{name:10s} {rates[name]:8.1f} docs/s/core  ({secs:.2f} s, {kept} kept)")
        print(f"ratio puyu/datatrove: {rates['puyu'] / rates['datatrove']:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
