"""Classification beyond single sentences: sentence pairs, multi-label, regression, problem-type detection."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import NEGATIVE, NEUTRAL, POSITIVE, make_sentiment_rows

TRAIN = ["--epochs", "6", "--lr", "3e-3", "--batch-size", "16", "--seed", "0", "--set", "train.logging_steps=50"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def multilabel_rows(n: int, seed: int = 0) -> list[dict]:
    """Labels name which polarity words occur: [], [pos], [neg] or [neg, pos]."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        labels = [["pos"], ["neg"], ["neg", "pos"], []][i % 4]
        words = rng.sample(POSITIVE, 2) if "pos" in labels else []
        words += rng.sample(NEGATIVE, 2) if "neg" in labels else []
        words += rng.sample(NEUTRAL, 6 - len(words))  # one length for all: no length shortcut
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "labels": labels})
    return rows


def regression_rows(n: int, seed: int = 0) -> list[dict]:
    """Score = 0.75 * (number of positive words) + 0.25: non-integer floats, so auto -> regression."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = i % 4
        words = rng.sample(NEUTRAL, 5 - k // 2) + rng.sample(POSITIVE, k)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "score": 0.75 * k + 0.25})
    return rows


@pytest.mark.slow
def test_sentence_pairs(tmp_path, tiny_bert_dir, cli):
    """The label is the second sentence's polarity; the first is noise: only a model fed the pair can learn it."""
    rng = random.Random(1)
    rows = [
        {
            "premise": " ".join(rng.sample(NEUTRAL + POSITIVE + NEGATIVE, 5)),
            "hypothesis": r["text"],
            "label": r["label"],
        }
        for r in make_sentiment_rows(240)
    ]
    data = _jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "out"
    result = cli(
        "finetune", "--task", "text-classification", "--model", tiny_bert_dir, "--dataset", data, "-o", out,
        "--set", "data.text_column=premise", "--set", "data.text_pair_column=hypothesis", *TRAIN,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    assert metrics["eval_accuracy"] >= 0.85, metrics
    preds = _read_jsonl(out / "predictions.jsonl")
    assert set(preds[0]) == {"text", "text_pair", "label", "prediction", "score"}
    # eval reuses the saved columns (text_pair_column) from llmtune_config.yaml
    result = cli("eval", "--model", out, "--dataset", data, "-o", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["eval"]["eval_accuracy"] >= 0.85


@pytest.mark.slow
def test_multilabel_auto_detected(tmp_path, tiny_bert_dir, cli):
    data = tmp_path / "data"
    data.mkdir()
    rows = multilabel_rows(280)
    _jsonl(data / "train.jsonl", rows[:240])
    _jsonl(data / "validation.jsonl", rows[240:])
    out = tmp_path / "out"
    result = cli(
        "finetune", "--task", "text-classification", "--model", tiny_bert_dir, "--dataset", data, "-o", out,
        *TRAIN, "--epochs", "10",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    # A constant prediction scores subset accuracy 0.25 at best. The 2-layer, width-32 random
    # model reliably learns one of the two labels within this budget, not always both.
    assert metrics["eval_subset_accuracy"] >= 0.45, metrics
    assert max(metrics["eval_f1_neg"], metrics["eval_f1_pos"]) >= 0.9, metrics
    assert {"eval_f1_macro", "eval_precision_micro", "eval_f1_neg", "eval_f1_pos"} <= set(metrics)
    preds = _read_jsonl(out / "predictions.jsonl")
    assert preds[0]["label"] == rows[240]["labels"]
    assert isinstance(preds[0]["prediction"], list) and set(preds[0]["scores"]) == {"neg", "pos"}
    exact = sum(sorted(p["prediction"]) == sorted(p["label"]) for p in preds) / len(preds)
    assert exact == pytest.approx(metrics["eval_subset_accuracy"])
    # eval on a saved model; a higher threshold predicts fewer labels
    result = cli("eval", "--model", out, "--dataset", data / "validation.jsonl", "-o", tmp_path / "e1")
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "e1" / "metrics.json").read_text())["eval"]
    assert again["eval_subset_accuracy"] == pytest.approx(metrics["eval_subset_accuracy"])
    result = cli(
        "eval", "--model", out, "--dataset", data / "validation.jsonl", "-o", tmp_path / "e2",
        "--set", "options.threshold=0.999",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    n_strict = sum(len(p["prediction"]) for p in _read_jsonl(tmp_path / "e2" / "predictions.jsonl"))
    n_default = sum(len(p["prediction"]) for p in _read_jsonl(tmp_path / "e1" / "predictions.jsonl"))
    assert n_strict < n_default


@pytest.mark.slow
def test_regression_auto_detected(tmp_path, tiny_bert_dir, cli):
    data = tmp_path / "data"
    data.mkdir()
    rows = regression_rows(280)
    _jsonl(data / "train.jsonl", rows[:240])
    _jsonl(data / "validation.jsonl", rows[240:])
    out = tmp_path / "out"
    result = cli(
        "finetune", "--task", "text-classification", "--model", tiny_bert_dir, "--dataset", data, "-o", out,
        "--set", "data.label_column=score", *TRAIN,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    # predicting the mean scores MSE = label variance = 0.703 and correlation 0
    assert metrics["eval_pearson"] >= 0.8 and metrics["eval_spearman"] >= 0.7, metrics
    assert metrics["eval_mse"] < 0.35
    preds = _read_jsonl(out / "predictions.jsonl")
    assert isinstance(preds[0]["prediction"], float) and preds[0]["label"] == rows[240]["score"]
    result = cli("eval", "--model", out, "--dataset", data / "validation.jsonl", "-o", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())["eval"]
    assert again["eval_mse"] == pytest.approx(metrics["eval_mse"], rel=1e-4)


@pytest.mark.slow
def test_label_errors_are_one_line(tmp_path, tiny_bert_dir, cli):
    base = ["finetune", "--task", "text-classification", "--model", tiny_bert_dir, "--max-steps", "1"]
    rows = regression_rows(20)
    rows[5]["score"] = float("nan")
    nan = tmp_path / "nan.jsonl"
    nan.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json.dumps writes NaN
    result = cli(*base, "--dataset", nan, "-o", tmp_path / "a", "--set", "data.label_column=score")
    assert result.exit_code == 2
    assert "non-numeric value nan" in result.output and "regression" in result.output
    assert "Traceback" not in result.output

    floats = _jsonl(tmp_path / "floats.jsonl", regression_rows(20))
    result = cli(
        *base, "--dataset", floats, "-o", tmp_path / "b", "--set", "data.label_column=score",
        "--set", "options.problem_type=single_label",
    )  # fmt: skip
    assert result.exit_code == 2 and "options.problem_type=regression" in result.output

    nested = _jsonl(tmp_path / "dicts.jsonl", [{"text": "a b", "label": {"x": i % 2}} for i in range(20)])
    result = cli(*base, "--dataset", nested, "-o", tmp_path / "c")
    assert result.exit_code == 2 and "unsupported label" in result.output

    result = cli(*base, "--dataset", floats, "-o", tmp_path / "d", "--set", "options.threshold=1.5", "--dry-run")
    assert result.exit_code == 2 and "options.threshold" in result.output
    result = cli(*base, "--dataset", floats, "-o", tmp_path / "e", "--set", "options.problem_type=ordinal", "--dry-run")
    assert result.exit_code == 2 and "options.problem_type" in result.output
