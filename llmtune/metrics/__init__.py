"""Offline metrics (classification here; one module per metric family beside it).

``evaluate.load("accuracy")`` downloads a script from the Hub, so llmtune computes metrics with
the libraries those scripts wrap (scikit-learn here; seqeval, sacrebleu, rouge-score for other
tasks) and needs no network.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_metrics(preds: Sequence[int], labels: Sequence[int], label_names: Sequence[str]) -> dict:
    """Accuracy, macro precision/recall/F1 and per-label precision/recall/F1."""
    from sklearn.metrics import precision_recall_fscore_support

    preds = np.asarray(preds)
    labels = np.asarray(labels)
    ids = list(range(len(label_names)))
    out: dict[str, float] = {"accuracy": float((preds == labels).mean()) if len(labels) else 0.0}
    p, r, f, _ = precision_recall_fscore_support(labels, preds, labels=ids, average="macro", zero_division=0)
    out.update({"precision_macro": float(p), "recall_macro": float(r), "f1_macro": float(f)})
    if len(ids) == 2:
        # binary F1 of the second label ("positive" for sorted negative/positive labels)
        _p1, _r1, f1, _ = precision_recall_fscore_support(labels, preds, labels=[1], average="macro", zero_division=0)
        out["f1"] = float(f1)
    ps, rs, fs, _support = precision_recall_fscore_support(labels, preds, labels=ids, average=None, zero_division=0)
    for i, name in enumerate(label_names):
        key = metric_key(name)
        out[f"precision_{key}"] = float(ps[i])
        out[f"recall_{key}"] = float(rs[i])
        out[f"f1_{key}"] = float(fs[i])
    return out


def metric_key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(name)).strip("_") or "label"


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
