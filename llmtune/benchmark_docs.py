"""Document preprocessing that llmtune's offline benchmark configs name (``!function
llmtune.benchmark_docs.<name>`` in ``llmtune/resources/_benchmarks/*.yaml``).

lm-evaluation-harness imports these when it loads the configs; llmtune itself never calls them.
They reuse the harness's own text cleaning, so prompts stay the harness's; what is written here
is only what the local file layout needs (HellaSwag rows with one ``context`` column, MMLU with
every subject in one file). Module level stays torch- and lm-eval-free.
"""

from __future__ import annotations

from typing import Any


def hellaswag(dataset: Any) -> Any:
    """The harness's ``hellaswag.utils.process_docs``, also for rows whose context is one
    ``context`` (or ``ctx``) column instead of ``ctx_a``/``ctx_b``: the harness capitalises
    ``ctx_b``, which such rows cannot tell apart, so their context is used as it is."""
    from lm_eval.tasks.hellaswag.utils import preprocess

    def one(doc: dict) -> dict:
        if doc.get("ctx_a") is not None and doc.get("ctx_b") is not None:
            ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        else:
            ctx = doc.get("context") if doc.get("context") is not None else doc["ctx"]
        return {
            "query": preprocess(doc["activity_label"] + ": " + ctx),
            "choices": [preprocess(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(one)


def subject_filter(subject: str) -> Any:
    """process_docs keeping the rows of one MMLU subject (every subject sits in one file)."""

    def keep(dataset: Any) -> Any:
        return dataset.filter(lambda doc: doc["subject"] == subject)

    keep.__name__ = f"mmlu_{subject}"
    return keep


def __getattr__(name: str) -> Any:
    # ``mmlu_<subject>``: the rendered per-subject configs name one function per subject.
    if name.startswith("mmlu_"):
        return subject_filter(name[len("mmlu_") :])
    raise AttributeError(name)
