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


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def multilabel_metrics(pred_multi_hot: np.ndarray, label_multi_hot: np.ndarray, label_names: Sequence[str]) -> dict:
    """Multi-label scores on 0/1 matrices (examples x labels).

    ``subset_accuracy`` counts an example right only when its whole label set is right;
    micro averages pool every (example, label) decision, macro averages weigh labels equally.
    """
    from sklearn.metrics import precision_recall_fscore_support

    preds = np.asarray(pred_multi_hot).astype(int)
    labels = np.asarray(label_multi_hot).astype(int)
    out: dict[str, float] = {
        "subset_accuracy": float((preds == labels).all(axis=1).mean()) if len(labels) else 0.0,
        "hamming_loss": float((preds != labels).mean()) if labels.size else 0.0,
    }
    for average in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(labels, preds, average=average, zero_division=0)
        out.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
    _ps, _rs, fs, _ = precision_recall_fscore_support(labels, preds, average=None, zero_division=0)
    for i, name in enumerate(label_names):
        out[f"f1_{metric_key(name)}"] = float(fs[i])
    return out


def regression_metrics(preds: Sequence[float], labels: Sequence[float]) -> dict:
    """MSE, RMSE, MAE, Pearson and Spearman correlation (NaN-free: constant inputs give 0)."""
    from scipy.stats import pearsonr, spearmanr

    preds = np.asarray(preds, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    err = preds - labels
    mse = float(np.mean(err**2)) if len(err) else 0.0
    out = {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(np.mean(np.abs(err))) if len(err) else 0.0}
    # Correlations are undefined for constant input (an untrained model often predicts a constant).
    varies = len(preds) > 1 and np.ptp(preds) > 0 and np.ptp(labels) > 0
    out["pearson"] = float(pearsonr(preds, labels)[0]) if varies else 0.0
    out["spearman"] = float(spearmanr(preds, labels)[0]) if varies else 0.0
    return out


def classification_loss(problem: str, logits: np.ndarray, labels: np.ndarray) -> float:
    """The model's training loss recomputed over every evaluated example exactly once.

    transformers' eval loop averages per-batch mean losses, and in a multi-process run the padded
    last batch repeats a few examples; recomputing from the gathered logits (each example once)
    gives the true mean: cross-entropy, binary cross-entropy per label, or MSE, as the
    ``*ForSequenceClassification`` heads compute them.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if problem == "regression":
        return float(np.mean((logits.reshape(len(logits), -1)[:, 0] - labels.reshape(-1).astype(np.float64)) ** 2))
    if problem == "multi_label":
        y = labels.astype(np.float64)
        # log(1 + exp(-|x|)) + max(x, 0) - x*y: a stable BCE-with-logits
        return float(np.mean(np.logaddexp(0.0, -np.abs(logits)) + np.maximum(logits, 0.0) - logits * y))
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels.astype(np.int64)].mean())
