"""Metric agreement: NER against seqeval, SQuAD against the official evaluation logic; classification extras."""

from __future__ import annotations

import collections
import random
import re
import string

import numpy as np
import pytest

from llmtune.metrics import multilabel_metrics, regression_metrics
from llmtune.metrics.ner import ner_metrics
from llmtune.metrics.squad import normalize_answer, squad_v1, squad_v2

# ---------------------------------------------------------------------------------------------
# NER vs seqeval


def _random_tagging(rng: random.Random, scheme: str, n: int) -> list[list[str]]:
    prefixes = {"IOB1": "BI", "IOB2": "BI", "IOBES": "BIES"}[scheme]
    tags = ["O"] + [f"{p}-{t}" for p in prefixes for t in ("PER", "LOC", "ORG")]
    return [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(n)]


def _corrupt(rng: random.Random, sents: list[list[str]], scheme: str) -> list[list[str]]:
    alt = _random_tagging(rng, scheme, len(sents))
    return [[t if rng.random() < 0.7 else rng.choice(alt[i] or ["O"]) for t in s] for i, s in enumerate(sents)]


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2", "IOBES"])
@pytest.mark.parametrize("mode", ["default", "strict"])
def test_ner_metrics_agree_with_seqeval(scheme, mode):
    import seqeval.metrics as sm
    import seqeval.scheme

    rng = random.Random(f"{scheme}-{mode}")
    refs = _random_tagging(rng, scheme, 60)
    preds = _corrupt(rng, refs, scheme)
    ours = ner_metrics(refs, preds, scheme=scheme, mode=mode)
    kw = {"mode": "strict", "scheme": getattr(seqeval.scheme, scheme)} if mode == "strict" else {}
    assert ours["precision"] == pytest.approx(sm.precision_score(refs, preds, zero_division=0, **kw), abs=1e-6)
    assert ours["recall"] == pytest.approx(sm.recall_score(refs, preds, zero_division=0, **kw), abs=1e-6)
    assert ours["f1"] == pytest.approx(sm.f1_score(refs, preds, zero_division=0, **kw), abs=1e-6)
    assert ours["accuracy"] == pytest.approx(sm.accuracy_score(refs, preds), abs=1e-6)
    per_type = sm.f1_score(refs, preds, average=None, zero_division=0, **kw)
    types = sorted({k[: -len("_f1")] for k in ours if k.endswith("_f1") and k != "f1"})
    assert types and len(types) == len(per_type)
    for name, value in zip(types, per_type, strict=True):
        assert ours[f"{name}_f1"] == pytest.approx(value, abs=1e-6)


def test_ner_metrics_hand_example():
    refs = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    preds = [["B-PER", "I-PER", "O", "O"], ["O", "B-LOC"]]
    m = ner_metrics(refs, preds)
    # gold: PER, LOC, ORG; predicted: PER (right), LOC (wrong place)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["PER_f1"] == 1.0 and m["ORG_recall"] == 0.0 and m["LOC_number"] == 1
    # strict IOB2: an entity starting with I- is not an entity; default (conlleval) counts it
    assert ner_metrics([["I-PER"]], [["I-PER"]], mode="default")["f1"] == 1.0
    assert ner_metrics([["B-PER"]], [["I-PER"]], mode="strict")["f1"] == 0.0
    assert ner_metrics([["B-PER"]], [["I-PER"]], mode="default")["f1"] == 1.0
    with pytest.raises(ValueError):
        ner_metrics([["O", "O"]], [["O"]])


# ---------------------------------------------------------------------------------------------
# SQuAD vs an independent copy of the official evaluation scripts' logic


def _official_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def _official_v1_f1(prediction, ground_truth):
    prediction_tokens = _official_normalize(prediction).split()
    ground_truth_tokens = _official_normalize(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def _official_v1_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                ground_truths = [x["text"] for x in qa["answers"]]
                prediction = predictions[qa["id"]]
                exact_match += max(_official_normalize(prediction) == _official_normalize(g) for g in ground_truths)
                f1 += max(_official_v1_f1(prediction, g) for g in ground_truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def _official_v2_evaluate(dataset, preds):
    exact_scores, f1_scores, has_ans, no_ans = {}, {}, [], []
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid = qa["id"]
                gold_answers = [a["text"] for a in qa["answers"] if _official_normalize(a["text"])]
                (has_ans if gold_answers else no_ans).append(qid)
                if not gold_answers:
                    gold_answers = [""]
                if qid not in preds:
                    continue
                a_pred = preds[qid]
                exact_scores[qid] = max(
                    int(_official_normalize(a) == _official_normalize(a_pred)) for a in gold_answers
                )

                def f1(a_gold, a_pred=a_pred):
                    gold_toks = _official_normalize(a_gold).split()
                    pred_toks = _official_normalize(a_pred).split()
                    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
                    num_same = sum(common.values())
                    if len(gold_toks) == 0 or len(pred_toks) == 0:
                        return int(gold_toks == pred_toks)
                    if num_same == 0:
                        return 0
                    precision = 1.0 * num_same / len(pred_toks)
                    recall = 1.0 * num_same / len(gold_toks)
                    return (2 * precision * recall) / (precision + recall)

                f1_scores[qid] = max(f1(a) for a in gold_answers)
    every = has_ans + no_ans

    def mean(scores, ids):
        return 100.0 * sum(scores.get(k, 0) for k in ids) / len(ids)

    return {
        "exact": mean(exact_scores, every),
        "f1": mean(f1_scores, every),
        "HasAns_exact": mean(exact_scores, has_ans),
        "HasAns_f1": mean(f1_scores, has_ans),
        "NoAns_exact": mean(exact_scores, no_ans),
        "NoAns_f1": mean(f1_scores, no_ans),
    }


WORDS = ["the", "a", "an", "Denver", "Broncos", "Carolina", "Panthers", "50", "Super", "Bowl", "gold", "Levi's"]
PUNCT = ["", ",", ".", "!", "'s", " (", ")"]


def _phrase(rng):
    return " ".join(rng.choice(WORDS) + rng.choice(PUNCT) for _ in range(rng.randint(1, 5)))


def _synthetic_squad(rng, n, unanswerable=0.0):
    qas = []
    preds = {}
    for i in range(n):
        answers = [] if rng.random() < unanswerable else [{"text": _phrase(rng)} for _ in range(rng.randint(1, 3))]
        qas.append({"id": f"q{i}", "answers": answers})
        r = rng.random()
        if r < 0.25 and answers:
            preds[f"q{i}"] = rng.choice(answers)["text"].upper() + " ."  # same after normalisation
        elif r < 0.35:
            preds[f"q{i}"] = ""
        elif r < 0.4:
            continue  # missing prediction
        else:
            preds[f"q{i}"] = _phrase(rng)
    return [{"paragraphs": [{"qas": qas}]}], preds


def test_squad_v1_agrees_with_official():
    rng = random.Random(0)
    dataset, preds = _synthetic_squad(rng, 400)
    refs = {qa["id"]: [a["text"] for a in qa["answers"]] for qa in dataset[0]["paragraphs"][0]["qas"]}
    official = _official_v1_evaluate(dataset, preds)
    ours = squad_v1(preds, refs)
    assert 0 < official["f1"] < 100
    assert ours["exact_match"] == pytest.approx(official["exact_match"], abs=1e-6)
    assert ours["f1"] == pytest.approx(official["f1"], abs=1e-6)


def test_squad_v2_agrees_with_official():
    rng = random.Random(1)
    dataset, preds = _synthetic_squad(rng, 400, unanswerable=0.3)
    refs = {qa["id"]: [a["text"] for a in qa["answers"]] for qa in dataset[0]["paragraphs"][0]["qas"]}
    official = _official_v2_evaluate(dataset, preds)
    ours = squad_v2(preds, refs)
    assert ours["exact_match"] == pytest.approx(official["exact"], abs=1e-6)
    assert ours["f1"] == pytest.approx(official["f1"], abs=1e-6)
    for key in ("HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"):
        assert ours[key] == pytest.approx(official[key], abs=1e-6), key
    assert ours["HasAns_total"] + ours["NoAns_total"] == 400


def test_squad_normalisation_and_hand_scores():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("theory") == "theory"  # articles only as whole words
    m = squad_v1({"1": "the Broncos", "2": "Carolina"}, {"1": ["Denver Broncos", "Broncos"], "2": ["Panthers"]})
    assert m == {"exact_match": 50.0, "f1": 50.0}
    m = squad_v1({"1": "Denver"}, {"1": ["Denver Broncos"]})
    assert m["f1"] == pytest.approx(100 * 2 * (1 * 0.5) / 1.5)
    v2 = squad_v2({"1": "", "2": ""}, {"1": [], "2": ["Denver"]})
    assert v2["NoAns_exact"] == 100.0 and v2["HasAns_exact"] == 0.0 and v2["exact_match"] == 50.0


# ---------------------------------------------------------------------------------------------
# multi-label and regression metrics


def test_multilabel_metrics_match_sklearn_definitions():
    preds = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    labels = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 0, 1]])
    m = multilabel_metrics(preds, labels, ["a", "b", "c"])
    assert m["subset_accuracy"] == 0.25
    tp, fp, fn = 4, 1, 2  # pooled over all cells
    assert m["precision_micro"] == pytest.approx(tp / (tp + fp))
    assert m["recall_micro"] == pytest.approx(tp / (tp + fn))
    assert m["f1_micro"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["f1_a"] == 1.0 and m["f1_c"] == pytest.approx(0.5)
    assert m["f1_macro"] == pytest.approx((1.0 + 2 / 3 + 0.5) / 3)
    assert m["hamming_loss"] == pytest.approx(3 / 12)


def test_regression_metrics():
    from scipy.stats import pearsonr, spearmanr

    labels = np.array([0.0, 1.0, 2.5, 4.0, 5.0])
    preds = np.array([0.5, 0.8, 3.0, 3.5, 5.5])
    m = regression_metrics(preds, labels)
    assert m["mse"] == pytest.approx(np.mean((preds - labels) ** 2))
    assert m["rmse"] == pytest.approx(np.sqrt(m["mse"]))
    assert m["mae"] == pytest.approx(np.mean(np.abs(preds - labels)))
    assert m["pearson"] == pytest.approx(pearsonr(preds, labels)[0])
    assert m["spearman"] == pytest.approx(spearmanr(preds, labels)[0])
    constant = regression_metrics(np.ones(5), labels)
    assert constant["pearson"] == 0.0 and constant["spearman"] == 0.0
