"""Running a pipeline over shards: stages, completion markers, and the local (multi-process) executor.

Stages. Global steps (dedup, enrichment, top-up) need the whole corpus, so the step list is cut before
each of them:

    stage 0:  read input -> per-document steps ... -> [signatures for global step A]
    (driver)  A.decide(signatures of all shards)
    stage 1:  A.apply -> per-document steps ... -> [signatures for global step B]
    ...
    stage n:  ... -> final output

Every stage reads shard k of the previous stage (or of the input) and writes shard k, so shards stay
independent and any number of workers (processes here, Ray tasks in `ray_executor`) can run them.

Files under `workdir`:
    stages/J/shard_K.jsonl.zst       intermediate documents (the last stage writes to the output dir)
    stages/J/shard_K.sig.pkl         signatures for the next global step
    stages/J/shard_K.done.json       completion marker = the shard's stats (written last, atomically)
    stages/J/decisions.pkl, .json    a global step's decisions and its corpus-level summary
    rejects/stageJ_shard_K.jsonl.zst every dropped document with `step` and `reason`

Resumption: a (stage, shard) whose marker exists is skipped; one without is redone from scratch. All
files are written under a temporary name and renamed, so a crash (even SIGKILL) leaves either the old
complete file or none, and every step is deterministic, so a rerun produces the same bytes.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from puyu.data.base import Context, GlobalStep, Step
from puyu.data.documents import Document, JsonlWriter, Shard, open_writer, read_jsonl, read_shard

BATCH = 256


@dataclass
class Stage:
    index: int
    head: GlobalStep | None  # decided before this stage, applied first
    steps: list[Step]
    tail: GlobalStep | None  # signatures taken at the end of this stage

    def describe(self) -> str:
        names = ([self.head.label] if self.head else []) + [s.label for s in self.steps]
        return ", ".join(names) or "copy"


def plan_stages(steps: list[Step]) -> list[Stage]:
    """Cut `steps` into stages before every global step (see the module docstring)."""
    stages = [Stage(0, None, [], None)]
    for step in steps:
        if isinstance(step, GlobalStep):
            stages[-1].tail = step
            stages.append(Stage(len(stages), step, [], None))
        else:
            stages[-1].steps.append(step)
    return stages


@dataclass
class Job:
    """Everything a worker needs to process any (stage, shard); picklable."""

    steps: list[Step]
    shards: list[Shard]
    workdir: str
    output_dir: str
    suffix: str = ".jsonl.zst"
    text_key: str = "text"
    id_key: str = "id"
    root: str | None = None
    stages: list[Stage] = field(default_factory=list)

    def __post_init__(self):
        if not self.stages:
            self.stages = plan_stages(self.steps)

    def stage_dir(self, j: int) -> str:
        return os.path.join(self.workdir, "stages", str(j))

    def out_path(self, j: int, shard: Shard) -> str:
        if j == len(self.stages) - 1:
            return os.path.join(self.output_dir, shard.name + self.suffix)
        return os.path.join(self.stage_dir(j), shard.name + ".jsonl.zst")

    def marker(self, j: int, shard: Shard) -> str:
        return os.path.join(self.stage_dir(j), shard.name + ".done.json")

    def sig_path(self, j: int, shard: Shard) -> str:
        return os.path.join(self.stage_dir(j), shard.name + ".sig.pkl")

    def decisions_path(self, j: int) -> str:
        return os.path.join(self.stage_dir(j), "decisions.pkl")

    def rejects_path(self, j: int, shard: Shard) -> str:
        return os.path.join(self.workdir, "rejects", f"stage{j}_{shard.name}.jsonl.zst")

    def output_files(self) -> list[str]:
        return [self.out_path(len(self.stages) - 1, s) for s in self.shards]


def _atomic_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _batched(docs: Iterable[Document], n: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for d in docs:
        batch.append(d)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _checked(docs: Iterable[Document], ctx: Context) -> Iterator[Document]:
    """Route reader errors (undecodable bytes, broken JSON) to the rejects as step `reader`."""
    st = ctx.stats("reader")
    for doc in docs:
        reason = None if doc.error is None else f"reader: {doc.error}"
        st.record(doc, reason, modified=False)
        if reason is None:
            yield doc
        else:
            ctx.reject(doc, "reader", reason)


_decisions_cache: dict[tuple, list] = {}


def _decisions(path: str) -> list:
    """A global step's decisions, loaded once per process (keyed by file identity, so a fresh run in
    the same directory is not served stale decisions)."""
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size, st.st_ino)
    if key not in _decisions_cache:
        with open(path, "rb") as f:
            _decisions_cache.clear()
            _decisions_cache[key] = pickle.load(f)
    return _decisions_cache[key]


def run_shard(job: Job, j: int, shard_index: int) -> dict:
    """Process one shard through stage `j`; write its outputs, rejects, signatures and marker.
    Returns the stats written to the marker."""
    stage, shard = job.stages[j], job.shards[shard_index]
    t0 = time.time()
    os.makedirs(job.stage_dir(j), exist_ok=True)
    out_path = job.out_path(j, shard)
    stale = [glob.escape(p) + ".tmp.*" for p in (out_path, job.rejects_path(j, shard), job.sig_path(j, shard),
                                                  job.marker(j, shard))]
    for path in (f for pattern in stale for f in glob.glob(pattern)):
        os.remove(path)  # left by a killed run; never a file a live process writes (see pdeathsig)
    rejects: list[JsonlWriter] = []

    def sink(doc: Document, step: str, reason: str) -> None:
        if not rejects:
            rejects.append(JsonlWriter(job.rejects_path(j, shard)))
        rejects[0].write({**doc.to_record(), "step": step, "reason": reason})

    ctx = Context(sink)
    if j == 0:
        docs: Iterable[Document] = _checked(read_shard(shard, job.text_key, job.id_key, job.root), ctx)
    else:
        docs = read_jsonl(job.out_path(j - 1, shard))
    if stage.head is not None:
        docs = stage.head.apply(docs, _decisions(job.decisions_path(j))[shard_index], ctx)
    for step in stage.steps:
        docs = step.run(docs, ctx)
    writer = open_writer(out_path)
    sigs: list = []
    n_out = 0
    domains: Counter[str] = Counter()
    for batch in _batched(docs, BATCH):
        if stage.tail is not None:
            sigs.extend(stage.tail.signature_batch(batch))
        for d in batch:
            writer.write(d.to_record())
            dom = d.metadata.get("domain")
            if isinstance(dom, str):
                domains[dom] += 1
        n_out += len(batch)
    writer.close()
    if stage.tail is not None:
        _atomic_bytes(job.sig_path(j, shard), pickle.dumps(stage.tail.pack(sigs)))
    if rejects:
        rejects[0].close()
    stats = {"stage": j, "shard": shard.index, "out": n_out, "seconds": round(time.time() - t0, 3),
             "steps": ctx.to_dict(), "output_domains": dict(domains)}
    _atomic_bytes(job.marker(j, shard), json.dumps(stats).encode())
    return stats


def reduce_stage(job: Job, j: int) -> dict:
    """Run stage j's head `decide` over the signatures of stage j-1 (once; skipped when done)."""
    head = job.stages[j].head
    path = job.decisions_path(j)
    summary_path = path.replace(".pkl", ".json")
    if os.path.exists(path) and os.path.exists(summary_path):
        with open(summary_path) as f:
            return json.load(f)
    for path in glob.glob(glob.escape(job.stage_dir(j)) + "/decisions.*.tmp.*"):
        os.remove(path)  # from a driver killed while writing
    packed = []
    for shard in job.shards:
        with open(job.sig_path(j - 1, shard), "rb") as f:
            packed.append(pickle.load(f))
    decisions = head.decide(packed)
    if len(decisions) != len(job.shards):
        raise RuntimeError(f"{head.label}.decide returned {len(decisions)} decisions for {len(job.shards)} shards")
    os.makedirs(job.stage_dir(j), exist_ok=True)
    summary = {"step": head.label, **head.summary()}
    _atomic_bytes(path, pickle.dumps(decisions))
    _atomic_bytes(summary_path, json.dumps(summary).encode())
    return summary


Mapper = Callable[[int, list[int]], Iterator[dict]]


def execute(job: Job, mapper: Mapper, progress: bool = True) -> None:
    """Drive all stages: reduce where needed, then map the shards that have no marker yet."""
    from tqdm import tqdm

    n = len(job.stages)
    for j, stage in enumerate(job.stages):
        if stage.head is not None:
            reduce_stage(job, j)
        todo = [s.index for s in job.shards if not os.path.exists(job.marker(j, s))]
        with tqdm(total=len(job.shards), initial=len(job.shards) - len(todo), unit="shard",
                  desc=f"stage {j + 1}/{n} [{stage.describe()}]", disable=not progress) as bar:
            for _ in mapper(j, todo):
                bar.update(1)


def load_stats(workdir: str) -> list[dict]:
    """All shard markers of a run, sorted by (stage, shard)."""
    out = []
    for path in glob.glob(os.path.join(workdir, "stages", "*", "shard_*.done.json")):
        with open(path) as f:
            out.append(json.load(f))
    return sorted(out, key=lambda s: (s["stage"], s["shard"]))


# ---------------------------------------------------------------- local executor

_worker_job: Job | None = None


def _init_worker(job_bytes: bytes) -> None:
    global _worker_job
    _worker_job = pickle.loads(job_bytes)
    try:  # Linux: die with the driver, so a killed run leaves no orphan writing files
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_run(j: int, shard_index: int) -> dict:
    return run_shard(_worker_job, j, shard_index)


class LocalExecutor:
    """Processes on this machine: `workers` 1 runs inline (no subprocess at all); more uses a spawn
    process pool. No service needed."""

    def __init__(self, workers: int = 1):
        self.workers = max(1, int(workers))

    def run(self, job: Job, progress: bool = True) -> None:
        workers = min(self.workers, len(job.shards))
        if workers <= 1:
            execute(job, lambda j, todo: (run_shard(job, j, i) for i in todo), progress)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(pickle.dumps(job),)) as pool:
            def mapper(j: int, todo: list[int]) -> Iterator[dict]:
                futures = [pool.submit(_worker_run, j, i) for i in todo]
                for fut in as_completed(futures):
                    yield fut.result()

            execute(job, mapper, progress)
