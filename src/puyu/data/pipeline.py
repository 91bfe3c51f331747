"""Recipes: a YAML file (or dict) naming the input, the steps in order and their options, the output and
the executor; `run_recipe` runs one end to end and writes its report. Also the Python entry points
`clean_documents` / `clean_texts` for corpora held in memory (how the nano training corpus can go
through the pipeline: `clean_texts(texts, workdir, steps=DEDUP_STEPS)`).

Recipe keys (unknown keys anywhere are an error that names them; relative paths are relative to the
current directory, so recipes are run from the repository root):

    name: synthetic                 # free text
    workdir: runs/data/synthetic    # stages, rejects, markers, report
    synthetic: {docs: 3000, shards: 8, seed: 0, zh_share: 0.3, mixed_share: 0.04}   # optional: generate
                                    # the labelled corpus (with a Chinese and a mixed part) as input
    input: {paths: [...], text_key: text, id_key: id, files_per_shard: 256}
    output: {dir: WORKDIR/output, format: jsonl|parquet, compression: zst|gz|none}
    executor: {kind: local|ray, workers: 2, address: null, num_cpus: null}
    report: true
    steps:                          # each item: {step_name: {options}} or just step_name
      - normalise: {}
      - minhash: {threshold: 0.7}

`puyu data steps` lists every step with its options and defaults.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

from puyu.data.base import GlobalStep, Step
from puyu.data.dedup import ExactDedup
from puyu.data.documents import Document, JsonlWriter, list_shards, output_suffix, read_any, repair_surrogates
from puyu.data.enrich import Enrich
from puyu.data.executor import Job, LocalExecutor, load_stats
from puyu.data.minhash import MinHashDedup
from puyu.data.normalise import Language, Normalise
from puyu.data.quality import QualityScore
from puyu.data.rules import C4Rules, Characters, GopherQuality, GopherRepetition, Punctuation
from puyu.data.safety import DomainBlocklist, SafetyClassifier, WordBlocklist
from puyu.data.topup import DomainClassifier, TopUp
from puyu.errors import ConfigError, PuyuError

STEPS: dict[str, type[Step]] = {cls.name: cls for cls in (
    Normalise, Characters, Punctuation, Language, GopherQuality, GopherRepetition, C4Rules, ExactDedup,
    MinHashDedup, DomainBlocklist, WordBlocklist, SafetyClassifier, QualityScore, DomainClassifier, TopUp,
    Enrich)}

SECTIONS = {
    "input": {"paths", "text_key", "id_key", "files_per_shard"},
    "output": {"dir", "format", "compression"},
    "executor": {"kind", "workers", "address", "num_cpus"},
    "synthetic": {"docs", "shards", "seed", "zh_share", "mixed_share"},
}
TOP_LEVEL = {"name", "description", "workdir", "steps", "report", *SECTIONS}


@dataclass
class Recipe:
    name: str
    workdir: str
    steps: list
    input: dict = field(default_factory=dict)
    output: dict = field(default_factory=dict)
    executor: dict = field(default_factory=dict)
    synthetic: dict | None = None
    report: bool = True
    description: str = ""


def _check_keys(where: str, data: object, allowed: set[str]) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, not {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(map(str, unknown))} "
                          f"(allowed: {', '.join(sorted(allowed))})")
    return data


def parse_recipe(data: object, source: str = "recipe") -> Recipe:
    """Validate a recipe mapping (see the module docstring) and return a Recipe."""
    data = _check_keys(source, data, TOP_LEVEL)
    for key in ("workdir", "steps"):
        if key not in data:
            raise ConfigError(f"{source}: missing required key {key!r}")
    sections = {k: _check_keys(f"{source}: {k}", data.get(k), allowed) for k, allowed in SECTIONS.items()}
    if not isinstance(data["steps"], list) or not data["steps"]:
        raise ConfigError(f"{source}: steps must be a non-empty list")
    if not sections["input"].get("paths") and "synthetic" not in data:
        raise ConfigError(f"{source}: give input.paths, or a synthetic section to generate the input")
    for spec in data["steps"]:
        build_step(spec)  # fail on bad step names/options now, before any work
    return Recipe(name=str(data.get("name", os.path.basename(str(source)))), workdir=str(data["workdir"]),
                  steps=data["steps"], input=sections["input"], output=sections["output"],
                  executor=sections["executor"], synthetic=sections["synthetic"] if "synthetic" in data else None,
                  report=bool(data.get("report", True)), description=str(data.get("description", "")))


def load_recipe(path: str) -> Recipe:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise PuyuError(f"cannot read recipe {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    return parse_recipe(data, path)


def step_options(cls: type[Step]) -> dict[str, object]:
    """{option: default} of a step class (its constructor's keyword arguments)."""
    params = inspect.signature(cls.__init__).parameters
    return {n: (p.default if p.default is not inspect.Parameter.empty else "<required>")
            for n, p in params.items() if n != "self"}


def build_step(spec: object) -> Step:
    """A step from `{name: {options}}` or `name`; errors name the step and the bad option."""
    if isinstance(spec, str):
        name, opts = spec, {}
    elif isinstance(spec, dict) and len(spec) == 1:
        name, opts = next(iter(spec.items()))
        opts = opts or {}
    else:
        raise ConfigError(f"each step must be `name` or `{{name: {{options}}}}`, not {spec!r}")
    if name not in STEPS:
        raise ConfigError(f"unknown step {name!r}; known steps: {', '.join(STEPS)}")
    cls = STEPS[name]
    opts = _check_keys(f"step {name}", opts, set(step_options(cls)))
    try:
        return cls(**opts)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"step {name}: {e}") from e


def build_steps(specs: list) -> list[Step]:
    """Build, give unique labels ('minhash', 'minhash#2', ...), and check ordering constraints."""
    steps = [build_step(s) for s in specs]
    seen: dict[str, int] = {}
    for s in steps:
        seen[s.name] = seen.get(s.name, 0) + 1
        s.label = s.name if seen[s.name] == 1 else f"{s.name}#{seen[s.name]}"
    for i, s in enumerate(steps):
        if isinstance(s, TopUp) and s.key == "domain" and not any(isinstance(p, DomainClassifier) for p in steps[:i]):
            raise ConfigError("topup resamples by metadata['domain']: put a `domain` step before it")
    return steps


def fingerprint(recipe: Recipe) -> str:
    """What makes outputs comparable: everything but the executor and report settings."""
    key = {k: v for k, v in asdict(recipe).items() if k not in ("executor", "report", "name", "description")}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class RunResult:
    workdir: str
    output_files: list[str]
    report: str | None
    documents_in: int
    documents_out: int
    seconds: float

    def documents(self) -> Iterator[Document]:
        for path in self.output_files:
            yield from read_any(path)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def prepare_job(recipe: Recipe, progress: bool = False) -> Job:
    """Generate synthetic input if asked, list shards, build and set up the steps (training the learned
    ones, in this process, once), and return the Job."""
    workdir = recipe.workdir
    paths = recipe.input.get("paths")
    if recipe.synthetic is not None:
        from puyu.data.synthetic import write_corpus

        syn_dir = os.path.join(workdir, "input")
        if not os.path.exists(os.path.join(syn_dir, "_manifest.json")):
            s = recipe.synthetic
            _log(progress, f"generating synthetic corpus ({s.get('docs', 2000)} docs) in {syn_dir}")
            write_corpus(syn_dir, int(s.get("docs", 2000)), int(s.get("shards", 8)), int(s.get("seed", 0)),
                         zh_share=float(s.get("zh_share", 0.0)), mixed_share=float(s.get("mixed_share", 0.0)))
        paths = paths or [syn_dir]
    if isinstance(paths, str):
        paths = [paths]
    shards = list_shards(list(paths), int(recipe.input.get("files_per_shard", 256)))
    steps = build_steps(recipe.steps)
    for s in steps:
        if type(s).setup is not Step.setup:
            _log(progress, f"setting up {s.label}")
        s.setup()
    out = recipe.output
    suffix = output_suffix(out.get("format", "jsonl"), out.get("compression", "zst"))
    roots = [p for p in paths if os.path.isdir(p)]
    return Job(steps=steps, shards=shards, workdir=workdir,
               output_dir=out.get("dir") or os.path.join(workdir, "output"), suffix=suffix,
               text_key=recipe.input.get("text_key", "text"), id_key=recipe.input.get("id_key", "id"),
               root=roots[0] if len(roots) == 1 else None)


def _clear(workdir: str, output_dir: str, synthetic: bool) -> None:
    """Remove what a run wrote (and the generated input, when the recipe generates it)."""
    for sub in ("stages", "rejects", "report") + (("input",) if synthetic else ()):
        shutil.rmtree(os.path.join(workdir, sub), ignore_errors=True)
    shutil.rmtree(output_dir, ignore_errors=True)
    if os.path.exists(os.path.join(workdir, "run.json")):
        os.remove(os.path.join(workdir, "run.json"))


def _input_paths(recipe: Recipe) -> list[str] | None:
    """The recipe's input paths (the generated folder for a synthetic recipe), or None when a synthetic
    input has not been generated yet."""
    paths = recipe.input.get("paths")
    if not paths and recipe.synthetic is not None:
        syn_dir = os.path.join(recipe.workdir, "input")
        if not os.path.exists(os.path.join(syn_dir, "_manifest.json")):
            return None
        paths = [syn_dir]
    return [paths] if isinstance(paths, str) else list(paths)


def input_state(shards) -> dict[str, list[int]]:
    """{input file: [size in bytes, mtime in ns]} of every file of `shards`: what run.json records so a
    rerun can tell that the inputs changed since."""
    out: dict[str, list[int]] = {}
    for sh in shards:
        for f in sh.files:
            st = os.stat(f)
            out[f] = [st.st_size, st.st_mtime_ns]
    return out


def _check_inputs(recipe: Recipe, recorded: dict | None) -> None:
    """Refuse to resume a run whose input files changed (size, mtime, added, removed) since it was
    recorded: its finished shards were computed from the old files and would be reused silently."""
    if recorded is None:  # a run.json written before inputs were recorded
        return
    paths = _input_paths(recipe)
    if paths is None:
        return
    now = input_state(list_shards(paths, int(recipe.input.get("files_per_shard", 256))))
    if now == recorded:
        return
    changed = sorted(f for f in now.keys() & recorded.keys() if now[f] != recorded[f])
    added = sorted(now.keys() - recorded.keys())
    gone = sorted(recorded.keys() - now.keys())
    example = (changed or added or gone)[0]
    raise PuyuError(f"the input files changed since the run in {recipe.workdir} ({len(changed)} changed, "
                    f"{len(added)} new, {len(gone)} gone; e.g. {example}): its results would be reused; "
                    "rerun with --fresh to start over")


def make_executor(recipe: Recipe, kind: str | None = None, workers: int | None = None):
    ex = recipe.executor
    kind = kind or ex.get("kind", "local")
    if kind == "local":
        return LocalExecutor(workers or int(ex.get("workers", 1)))
    if kind == "ray":
        from puyu.data.ray_executor import RayExecutor

        return RayExecutor(address=ex.get("address"), num_cpus=workers or ex.get("num_cpus"))
    raise ConfigError(f"executor.kind must be 'local' or 'ray', not {kind!r}")


def run_recipe(recipe: Recipe | str, *, workers: int | None = None, executor: str | None = None,
               fresh: bool = False, progress: bool = True) -> RunResult:
    """Run a recipe (a Recipe or a YAML path). Resumes a previous interrupted run of the same recipe in
    the same workdir; `fresh` starts over. Refuses (PuyuError) to resume when the recipe or options
    differ, or when the input files changed since (sizes, mtimes, files added or removed: run.json
    records them). Returns where the outputs and report are."""
    if isinstance(recipe, str):
        recipe = load_recipe(recipe)
    output_dir = recipe.output.get("dir") or os.path.join(recipe.workdir, "output")
    run_file = os.path.join(recipe.workdir, "run.json")
    if fresh:
        _clear(recipe.workdir, output_dir, recipe.synthetic is not None)
    fp = fingerprint(recipe)
    if os.path.exists(run_file):
        with open(run_file) as f:
            old = json.load(f)
        if old.get("fingerprint") != fp:
            raise PuyuError(f"{recipe.workdir} holds a run of a different recipe or options; "
                            "rerun with --fresh to start over")
        _check_inputs(recipe, old.get("inputs"))
    job = prepare_job(recipe, progress)
    manifest = os.path.join(recipe.workdir, "input", "_manifest.json") if recipe.synthetic is not None else None
    info = {"fingerprint": fp, "recipe": asdict(recipe), "shards": len(job.shards), "inputs": input_state(job.shards),
            "output_dir": job.output_dir, "synthetic_manifest": manifest,
            "steps": [{"label": s.label, "name": s.name, "category": s.category,
                       "global": isinstance(s, GlobalStep),
                       **({"seed_domain": s.seed_domain} if isinstance(s, Enrich) else {})} for s in job.steps]}
    os.makedirs(recipe.workdir, exist_ok=True)
    with open(run_file, "w") as f:
        json.dump(info, f, indent=1)
    t0 = time.time()
    make_executor(recipe, executor, workers).run(job, progress)
    seconds = time.time() - t0
    info["seconds"] = round(seconds, 2)
    with open(run_file, "w") as f:
        json.dump(info, f, indent=1)
    stats = load_stats(recipe.workdir)
    n_in = sum(s["steps"].get("reader", {}).get("in", 0) for s in stats if s["stage"] == 0)
    n_out = sum(s["out"] for s in stats if s["stage"] == len(job.stages) - 1)
    report = None
    if recipe.report:
        from puyu.data.report import write_report

        report = write_report(recipe.workdir)
    return RunResult(recipe.workdir, job.output_files(), report, n_in, n_out, seconds)


# ---------------------------------------------------------------- in-memory corpora

# For documentation and code (e.g. the nano corpus of pydoc pages): web-text rules drop ~80% of such
# text (symbol-heavy lines, short lines), so only repair and deduplicate, keeping aligned columns.
DEDUP_STEPS: list = [{"normalise": {"collapse_spaces": False}}, "exact_dedup", "minhash"]

# Bilingual by default (InternLM2's corpus is Chinese and English): every rule step picks Chinese or
# English thresholds per document (puyu.data.thresholds), code passes the prose rules
DEFAULT_TEXT_STEPS: list = [
    "normalise", "characters", "punctuation", {"language": {"languages": ["zh", "en"]}}, "gopher_quality",
    "gopher_repetition", {"c4": {"terminal_punct_lines": False, "min_words_per_line": 0,
                                 "drop_curly_brace": False, "remove_citations": False}},
    "exact_dedup", "minhash",
]


def clean_documents(docs: Iterable[str | Document | dict], workdir: str, steps: list | None = None,
                    shards: int = 4, workers: int = 1, progress: bool = False,
                    report: bool = True) -> RunResult:
    """Clean an in-memory corpus: write it as `shards` JSONL shards under workdir/input, run `steps`
    (default DEFAULT_TEXT_STEPS: rules, language, exact and MinHash dedup; no learned steps, since their
    default training data is synthetic; DEDUP_STEPS for documentation/code) and return the RunResult
    (`.documents()` iterates what was kept, in input order; `.report` is the Markdown report). Always
    starts fresh. With workers > 1 the caller's script needs the usual `if __name__ == "__main__":`
    guard (worker processes are spawned)."""
    items = []
    for i, d in enumerate(docs):
        if isinstance(d, str):
            d = Document(f"doc{i:07d}", d)
        elif isinstance(d, dict):
            d = Document(str(d.get("id", f"doc{i:07d}")), d["text"], d.get("metadata", {}))
        elif not isinstance(d, Document):
            raise ConfigError(f"clean_documents: item {i} is a {type(d).__name__}, not a str, dict or Document")
        if not isinstance(d.text, str):
            raise ConfigError(f"clean_documents: item {i} has a {type(d.text).__name__} text, not a str")
        # lone UTF-16 surrogates cannot be written as UTF-8: U+FFFD, as the readers do
        d = Document(repair_surrogates(d.id), repair_surrogates(d.text), d.metadata)
        items.append(d)
    in_dir = os.path.join(workdir, "input")
    shutil.rmtree(in_dir, ignore_errors=True)
    n = max(1, min(shards, len(items)))
    for k in range(n):
        w = JsonlWriter(os.path.join(in_dir, f"shard_{k:05d}.jsonl.zst"))
        for d in items[k * len(items) // n:(k + 1) * len(items) // n]:
            w.write(d.to_record())
        w.close()
    recipe = Recipe(name="clean_documents", workdir=workdir, steps=steps or DEFAULT_TEXT_STEPS,
                    input={"paths": [in_dir]}, executor={"kind": "local", "workers": workers}, report=report)
    return run_recipe(recipe, fresh=True, progress=progress)


def clean_texts(texts: Iterable[str], workdir: str, **kwargs) -> list[str]:
    """`clean_documents` for plain strings; returns the kept texts in input order."""
    return [d.text for d in clean_documents(texts, workdir, **kwargs).documents()]
