"""SQuAD exact match and F1, following the official v1.1 and v2.0 evaluation scripts.

Written out here (about 60 lines) because ``evaluate.load("squad")`` fetches its script from the
Hub. Scores are percentages, as in the official scripts. Answer normalisation: lowercase, drop
punctuation, drop the articles a/an/the, collapse whitespace; each prediction is scored against
every gold answer and the best score counts.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str, empty_matches: bool = False) -> float:
    """Token-overlap F1. v1.1 scores an empty side as 0; v2.0 (``empty_matches``) as 1 iff both are empty."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    if empty_matches and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_v1(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict:
    """Official v1.1 semantics: every referenced id is scored; a missing prediction scores 0."""
    exact = f1 = 0.0
    for qid, golds in references.items():
        if qid not in predictions:
            continue
        pred = predictions[qid]
        exact += max(exact_match_score(pred, g) for g in golds)
        f1 += max(f1_score(pred, g) for g in golds)
    total = len(references)
    return {"exact_match": 100.0 * exact / total if total else 0.0, "f1": 100.0 * f1 / total if total else 0.0}


def squad_v2(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict:
    """Official v2.0 semantics (no-answer probability threshold 1.0, i.e. predictions taken as given).

    A question with no non-empty gold answer is unanswerable: only the empty prediction is right.
    Adds HasAns_/NoAns_ scores over answerable / unanswerable questions.
    """
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    has_answer: list[str] = []
    no_answer: list[str] = []
    for qid, golds in references.items():
        golds = [g for g in golds if normalize_answer(g)] or [""]
        (has_answer if golds != [""] else no_answer).append(qid)
        if qid not in predictions:
            continue
        pred = predictions[qid]
        exact[qid] = max(exact_match_score(pred, g) for g in golds)
        f1[qid] = max(f1_score(pred, g, empty_matches=True) for g in golds)

    def mean(scores: dict, ids: list[str]) -> float:
        return 100.0 * sum(scores.get(q, 0.0) for q in ids) / len(ids) if ids else 0.0

    everything = list(references)
    out = {"exact_match": mean(exact, everything), "f1": mean(f1, everything), "total": len(everything)}
    if has_answer:
        out.update(HasAns_exact=mean(exact, has_answer), HasAns_f1=mean(f1, has_answer), HasAns_total=len(has_answer))
    if no_answer:
        out.update(NoAns_exact=mean(exact, no_answer), NoAns_f1=mean(f1, no_answer), NoAns_total=len(no_answer))
    return out
