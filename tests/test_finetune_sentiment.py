"""End-to-end sentiment fine-tuning through the real CLI on a tiny model."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir):
    """Fine-tune once; several tests inspect the result."""
    import csv

    from typer.testing import CliRunner

    from llmtune.cli import app
    from tests.conftest import make_sentiment_rows

    root = tmp_path_factory.mktemp("sent")
    data = root / "train.csv"
    with open(data, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["review", "label"])
        w.writeheader()
        w.writerows({"review": r["text"], "label": r["label"]} for r in make_sentiment_rows(240))
    out = root / "out"
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            "--task",
            "sentiment",
            "--model",
            str(tiny_bert_dir),
            "--dataset",
            str(data),
            "--output-dir",
            str(out),
            "--epochs",
            "8",
            "--lr",
            "3e-3",
            "--batch-size",
            "16",
            "--seed",
            "0",
            "--set",
            "train.logging_steps=20",
        ],
    )
    assert result.exit_code == 0, result.output
    return out, data, result.output


def test_accuracy_beats_chance(trained):
    out, _, output = trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["eval_accuracy"] >= 0.85, metrics["eval"]
    assert "eval_f1_macro" in metrics["eval"] and "eval_f1_positive" in metrics["eval"]
    assert "eval_accuracy" in output  # table printed


def test_outputs_complete(trained):
    out, _, _ = trained
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "llmtune_config.yaml",
        "metrics.json",
        "README.md",
        "predictions.jsonl",
    ):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    card = (out / "README.md").read_text()
    assert "llmtune finetune" in card or "llmtune" in card
    assert "eval_accuracy" in card or "accuracy" in card
    # a completed run keeps its (best) model and no checkpoint (train.keep_checkpoints)
    assert not list(out.glob("*checkpoint-*"))


def test_pipeline_reports_label_names(trained):
    from transformers import pipeline

    out, _, _ = trained
    clf = pipeline("text-classification", model=str(out))
    preds = clf(["great wonderful superb film", "awful boring dreadful film"])
    assert {p["label"] for p in preds} <= {"positive", "negative"}
    assert preds[0]["label"] == "positive" and preds[1]["label"] == "negative"


def test_eval_command(trained, tmp_path, cli):
    out, data, _ = trained
    eval_dir = tmp_path / "eval"
    result = cli("eval", "--model", out, "--dataset", data, "--output-dir", eval_dir)
    assert result.exit_code == 0, result.output
    metrics = json.loads((eval_dir / "metrics.json").read_text())["eval"]
    assert metrics["eval_accuracy"] >= 0.85
    rows = [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 240
    assert set(rows[0]) == {"text", "label", "prediction", "score"}
    correct = sum(r["label"] == r["prediction"] for r in rows) / len(rows)
    assert abs(correct - metrics["eval_accuracy"]) < 1e-9
