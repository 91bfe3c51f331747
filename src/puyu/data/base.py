"""Step contracts and the per-shard bookkeeping every step writes into.

A pipeline is a list of steps. Two kinds:

* `Step` (per document): `process(doc)` answers None to keep the document (possibly after editing
  its text or metadata) or a short reason string to drop it. `run(docs, ctx)` is the generator the
  executor chains: it yields kept documents and hands dropped ones to `ctx.reject`, which counts the
  reason and writes the document to the rejects output. Steps that score in batches (classifiers)
  override `process_batch`.
* `GlobalStep` (needs the whole corpus: dedup, enrichment cut-offs, resampling) runs in three parts:
  `signature(doc)` per document on the map side, `decide(per-shard signatures)` once in the driver,
  and `apply(docs, decision, ctx)` per shard, which drops or copies documents.

`Context` holds one shard's statistics: for each step, documents in / dropped / modified, drop reasons,
sampled score values (metadata keys listed in `Step.observe`), and, when documents carry a ground-truth
label (metadata["synthetic"]["label"], set by `puyu.data.synthetic`), the same counts per label and per
(synthetic language, label), from which the run report computes precision and recall overall and per
language.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from puyu.data.documents import Document

SAMPLE_CAP = 2000  # score values kept per (step, key, label) per shard; enough for histograms


def truth(doc: Document, key: str = "label") -> str | None:
    """The synthetic ground truth of `doc` (label or domain), or None for real data."""
    syn = doc.metadata.get("synthetic")
    return syn.get(key) if isinstance(syn, dict) else None


def lookup(meta: dict, key: str) -> Any:
    """meta[key], where "a.b" means meta["a"]["b"]; None when absent."""
    for part in key.split("."):
        if not isinstance(meta, dict) or part not in meta:
            return None
        meta = meta[part]
    return meta


class StepStats:
    """Counts for one step on one shard; `to_dict`/`merge` make them JSON-able and summable."""

    def __init__(self) -> None:
        self.n_in = 0
        self.dropped = 0
        self.modified = 0
        self.added = 0
        self.reasons: Counter[str] = Counter()
        self.labels: dict[str, list[int]] = {}  # label -> [in, dropped, modified]
        self.langs: dict[str, dict[str, list[int]]] = {}  # synthetic language -> the same table
        self.values: dict[str, dict[str, list[float]]] = {}  # key -> group -> sampled values
        self.categories: dict[str, Counter[str]] = {}  # key -> value -> count (e.g. domain)
        self._seen: Counter[tuple[str, str]] = Counter()
        self._rng = random.Random(0)

    def record(self, doc: Document, reason: str | None, modified: bool) -> None:
        self.n_in += 1
        label = truth(doc)
        if label is not None:
            lang = truth(doc, "lang") or "en"
            for table in (self.labels, self.langs.setdefault(lang, {})):
                row = table.setdefault(label, [0, 0, 0])
                row[0] += 1
                row[1] += reason is not None
                row[2] += modified and reason is None
        if reason is not None:
            self.dropped += 1
            # reasons carry numbers ("value 0.21 < 0.50"); count by the part before ':' or digits
            self.reasons[reason_key(reason)] += 1
        elif modified:
            self.modified += 1

    def observe(self, key: str, value: Any, group: str) -> None:
        if isinstance(value, str):
            self.categories.setdefault(key, Counter())[value] += 1
            return
        vals = self.values.setdefault(key, {}).setdefault(group, [])
        seen = self._seen[(key, group)] = self._seen[(key, group)] + 1
        if len(vals) < SAMPLE_CAP:  # reservoir sampling: a uniform sample of everything seen
            vals.append(float(value))
        else:
            j = self._rng.randrange(seen)
            if j < SAMPLE_CAP:
                vals[j] = float(value)

    def to_dict(self) -> dict:
        return {"in": self.n_in, "dropped": self.dropped, "modified": self.modified, "added": self.added,
                "reasons": dict(self.reasons), "labels": self.labels, "langs": self.langs, "values": self.values,
                "categories": {k: dict(v) for k, v in self.categories.items()}}


def reason_key(reason: str) -> str:
    """The countable part of a drop reason. Reasons are written `step: what value <op> threshold` or
    `step: what (details)`; the key stops at the first number, comparison or parenthesis, so
    'gopher_quality: mean word length 2.1 outside [3, 10]' counts as 'gopher_quality: mean word length'."""
    head, _, tail = reason.partition(":")
    if not tail:
        return reason
    words = []
    for w in tail.split():
        if w.startswith("(") or any(c.isdigit() for c in w) or w in ("<", ">", "<=", ">=", "="):
            break
        words.append(w)
    return f"{head}: {' '.join(words)}" if words else head


class Context:
    """One shard's bookkeeping. `reject_sink(doc, step, reason)` persists dropped documents."""

    def __init__(self, reject_sink: Callable[[Document, str, str], None] | None = None):
        self.steps: dict[str, StepStats] = {}
        self._sink = reject_sink

    def stats(self, step: str) -> StepStats:
        if step not in self.steps:
            self.steps[step] = StepStats()
        return self.steps[step]

    def reject(self, doc: Document, step: str, reason: str) -> None:
        if self._sink is not None:
            self._sink(doc, step, reason)

    def to_dict(self) -> dict:
        return {name: s.to_dict() for name, s in self.steps.items()}


class Step:
    """A per-document step. Subclasses set `name` (the YAML key) and `category`, and implement
    `process` (or `process_batch`). Constructor keyword arguments are the YAML options.

    `observe` lists metadata keys whose values the executor samples into the stats after this step
    (numbers become score distributions, strings become category counts)."""

    name: ClassVar[str] = "step"
    category: ClassVar[str] = "other"
    observe: ClassVar[tuple[str, ...]] = ()
    batch_size: ClassVar[int] = 1

    label: str  # unique name of this instance in the pipeline; set by the pipeline builder

    def setup(self) -> None:
        """Train or load whatever the step needs; called once, in the driver, before any shard."""

    def process(self, doc: Document) -> str | None:
        raise NotImplementedError

    def observations(self, doc: Document) -> dict[str, Any]:
        """Extra values to record for `doc` after processing (besides the `observe` keys)."""
        return {}

    def process_batch(self, docs: list[Document]) -> list[str | None]:
        return [self.process(d) for d in docs]

    def run(self, docs: Iterable[Document], ctx: Context) -> Iterator[Document]:
        st = ctx.stats(self.label)
        it = iter(docs)
        while True:
            batch = [d for _, d in zip(range(self.batch_size), it)]
            if not batch:
                return
            before = [d.text for d in batch]
            for doc, old, reason in zip(batch, before, self.process_batch(batch)):
                st.record(doc, reason, modified=doc.text is not old)
                group = truth(doc) or "all"
                for key in self.observe:
                    value = lookup(doc.metadata, key)
                    if value is not None:
                        st.observe(key, value, group)
                for key, value in self.observations(doc).items():
                    st.observe(key, value, group)
                if reason is None:
                    yield doc
                else:
                    ctx.reject(doc, self.label, reason)


class GlobalStep(Step):
    """A step that needs to see every shard before deciding (see the module docstring).

    Contract: `decide` receives one packed signature object per shard, in shard order, and returns one
    decision object per shard; `apply` receives the documents of one shard in the same order as their
    signatures were taken, and that shard's decision. Both must be deterministic."""

    def signature(self, doc: Document) -> Any:
        raise NotImplementedError

    def signature_batch(self, docs: list[Document]) -> list[Any]:
        """Signatures of a batch (steps that vectorise override this); may annotate metadata."""
        return [self.signature(d) for d in docs]

    def pack(self, sigs: list[Any]) -> Any:
        """Turn one shard's list of signatures into what is stored (e.g. one numpy array)."""
        return sigs

    def decide(self, packed: list[Any]) -> list[Any]:
        raise NotImplementedError

    def apply(self, docs: Iterable[Document], decision: Any, ctx: Context) -> Iterator[Document]:
        raise NotImplementedError

    def summary(self) -> dict:
        """Corpus-level facts found by `decide` (e.g. cluster counts), for the report."""
        return {}

    def run(self, docs: Iterable[Document], ctx: Context) -> Iterator[Document]:
        raise TypeError(f"{self.name} is a global step; the executor runs it through decide/apply")


def drop_by_index(step: GlobalStep, docs: Iterable[Document], drops: dict[int, str],
                  ctx: Context) -> Iterator[Document]:
    """`apply` for global steps whose decision is {position in shard: drop reason}."""
    st = ctx.stats(step.label)
    for i, doc in enumerate(docs):
        reason = drops.get(i)
        st.record(doc, reason, modified=False)
        if reason is None:
            yield doc
        else:
            ctx.reject(doc, step.label, reason)
