"""Entity-level NER scores with seqeval semantics.

seqeval is the reference implementation (what ``evaluate.load("seqeval")`` wraps); calling it
directly keeps the numbers identical and needs no network. ``mode="default"`` is the lenient
conlleval behaviour (an ``I-X`` after ``O`` starts an entity); ``mode="strict"`` only counts
entities that are well formed under ``scheme``.
"""

from __future__ import annotations

from collections.abc import Sequence

SCHEMES = ("IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU")
MODES = ("default", "strict")


def scheme_class(name: str) -> type:
    import seqeval.scheme

    return getattr(seqeval.scheme, name.upper())


def ner_metrics(
    references: Sequence[Sequence[str]],
    predictions: Sequence[Sequence[str]],
    scheme: str = "IOB2",
    mode: str = "default",
) -> dict:
    """Overall (micro) precision/recall/F1, token accuracy, and per-type precision/recall/F1/count."""
    from seqeval.metrics import accuracy_score, classification_report

    refs = [list(r) for r in references]
    preds = [list(p) for p in predictions]
    if len(refs) != len(preds) or any(len(r) != len(p) for r, p in zip(refs, preds, strict=False)):
        raise ValueError("references and predictions must have the same number of sentences and tokens")
    kwargs = {"mode": "strict", "scheme": scheme_class(scheme)} if mode == "strict" else {}
    report = classification_report(refs, preds, output_dict=True, zero_division=0, **kwargs)
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    out: dict[str, float] = {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "accuracy": float(accuracy_score(refs, preds)) if any(refs) else 0.0,
    }
    for entity_type, scores in sorted(report.items()):
        if entity_type.endswith(" avg"):
            continue
        key = _key(entity_type)
        out[f"{key}_precision"] = float(scores["precision"])
        out[f"{key}_recall"] = float(scores["recall"])
        out[f"{key}_f1"] = float(scores["f1-score"])
        out[f"{key}_number"] = int(scores["support"])
    return out


def _key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(name)).strip("_") or "entity"
