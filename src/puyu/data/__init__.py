"""The pretraining data-cleaning pipeline (InternLM2 report section 3.1.1 and the launch article).

Readers/writers (documents), per-document steps (normalise, rules, safety, quality, topup), global
steps (dedup, minhash, enrich, topup), executors (local processes, Ray), recipes (pipeline), the run
report, and a synthetic dirty corpus with known labels to measure every step on. Entry points:

    from puyu.data import run_recipe, clean_texts
    run_recipe("recipes/data/synthetic.yaml")
    kept = clean_texts(list_of_strings, workdir="runs/data/mycorpus")

Heavy dependencies (scikit-learn, datasketch, langid, ftfy, pyarrow, ray) are imported by the modules
that need them, so `import puyu.data` stays light.

Layer rule (import-linter, pyproject.toml): imports nothing of puyu but `puyu.errors`.
"""

from puyu.data.documents import Document

__all__ = ["Document", "clean_documents", "clean_texts", "run_recipe"]


def __getattr__(name: str):
    if name in ("clean_documents", "clean_texts", "run_recipe", "load_recipe"):
        from puyu.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
