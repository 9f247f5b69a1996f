"""Reward models (reward): the Bradley-Terry loss and metrics against their formulas, pairs read as
dpo reads them (HH conversations included), a tiny random Llama that learns a toy preference,
eval, predict scoring conversations, the margin column, and bad input as one error line."""

from __future__ import annotations

import json
import math

import pytest

from tests.test_dpo import make_preference_rows, write_jsonl


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward-data")
    write_jsonl(root / "train.jsonl", make_preference_rows(48, seed=1, form="hh"))
    write_jsonl(root / "validation.jsonl", make_preference_rows(13, seed=2, form="hh"))
    return root


def test_loss_and_metrics_equal_their_formulas():
    import torch

    from llmtune.tasks.reward.trainer import bradley_terry_loss, pair_metrics

    c, r, m = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.5])
    expected = [-math.log(1 / (1 + math.exp(-1.0))), -math.log(1 / (1 + math.exp(1.5)))]
    assert bradley_terry_loss(c, r, m).tolist() == pytest.approx(expected)
    metrics = pair_metrics(torch.stack([c, r, m], dim=1).double())
    assert metrics["accuracy"] == 0.5 and metrics["margin"] == pytest.approx(0.0) and metrics["pairs"] == 2
    assert metrics["pair_loss"] == pytest.approx(sum(expected) / 2)


def test_pairs_tokenize_as_conversations(tiny_llama_dir, pairs):
    from llmtune.resolve import build_config
    from llmtune.tasks import get_task
    from llmtune.tasks.base import RunContext

    cfg = build_config(
        {
            "task": "reward",
            "model": {"name_or_path": str(tiny_llama_dir)},
            "data": {"dataset": str(pairs), "max_length": 24},
        }
    )
    task = get_task("reward")
    ctx = RunContext(cfg=cfg, model_path=str(tiny_llama_dir))
    ctx.tokenizer = task.load_tokenizer(ctx)
    out = task.prepare(ctx, task.load_data(ctx))
    row = out["validation"][0]
    chosen = ctx.tokenizer.decode(row["chosen_ids"])
    assert len(row["chosen_ids"]) <= 24 and "assistant" in chosen  # kept its end: the answer
    assert row["chosen_ids"] != row["rejected_ids"] and row["margin"] == 0.0


@pytest.mark.slow
def test_reward_model_learns_a_toy_preference_eval_and_predict(tiny_llama_dir, pairs, tmp_path, cli):
    out = tmp_path / "rm"
    result = cli(
        "finetune", "--task", "reward", "--model", tiny_llama_dir, "--dataset", pairs, "-o", out, "--epochs", "3",
        "--lr", "3e-3", "--batch-size", "8", "--set", "data.max_length=64", "--set", "train.logging_steps=2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    assert metrics["eval_pairs"] == 13 and metrics["eval_accuracy"] >= 0.9 and metrics["eval_margin"] > 0
    logs = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert any("accuracy" in r and "margin" in r for r in logs if "loss" in r)
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["row"] for p in preds] == list(range(13))
    assert all(p["correct"] == (p["chosen_score"] > p["rejected_score"]) for p in preds)
    # llmtune eval gives the same numbers
    again = cli(
        "eval",
        "--model",
        out,
        "--dataset",
        pairs / "validation.jsonl",
        "-o",
        tmp_path / "ev",
        "--set",
        "data.max_length=64",
    )
    assert again.exit_code == 0, again.output
    scored = json.loads((tmp_path / "ev" / "metrics.json").read_text())["eval"]
    assert scored["eval_accuracy"] == metrics["eval_accuracy"]
    assert scored["eval_margin"] == pytest.approx(metrics["eval_margin"], abs=1e-5)
    # predict: a conversation's score; the chosen answer scores higher than the rejected one
    rows = make_preference_rows(6, seed=9)
    inputs = [{"prompt": r["prompt"], "response": r[side]} for r in rows for side in ("chosen", "rejected")]
    data = write_jsonl(tmp_path / "conv.jsonl", inputs)
    result = cli("predict", "--model", out, "--input", data, "--output", tmp_path / "scores.jsonl")
    assert result.exit_code == 0, result.output
    scores = [json.loads(line)["score"] for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 12 and sum(scores[i] > scores[i + 1] for i in range(0, 12, 2)) >= 5
    # messages rows score the same conversation the same way
    chats = [
        {"messages": [{"role": "user", "content": i["prompt"]}, {"role": "assistant", "content": i["response"]}]}
        for i in inputs[:2]
    ]
    result = cli(
        "predict",
        "--model",
        out,
        "--input",
        write_jsonl(tmp_path / "chat.jsonl", chats),
        "--output",
        tmp_path / "s2.jsonl",
    )
    assert result.exit_code == 0, result.output
    again = [json.loads(line)["score"] for line in (tmp_path / "s2.jsonl").read_text().splitlines()]
    assert again == pytest.approx(scores[:2], abs=1e-5)
    # serve's /v1/predict returns the same records
    from fastapi.testclient import TestClient

    from llmtune.inference.loader import load_for_inference
    from llmtune.inference.server import ServeOptions, create_app

    with TestClient(create_app(load_for_inference(str(out)), ServeOptions(model_name="rm"))) as http:
        got = http.post("/v1/predict", json={"inputs": inputs[:4]})
        assert got.status_code == 200, got.text
        assert [p["score"] for p in got.json()["predictions"]] == pytest.approx(scores[:4], abs=1e-5)
        bad = http.post("/v1/predict", json={"inputs": [{"stars": "x"}]})
        assert bad.status_code == 400 and "reward predict needs" in bad.json()["error"]["message"]


@pytest.mark.slow
def test_margin_column_and_bad_margin(tiny_llama_dir, tmp_path, cli):
    rows = make_preference_rows(16, seed=4)
    for i, r in enumerate(rows):
        r["margin"] = float(i % 3)
    data = write_jsonl(tmp_path / "m.jsonl", rows)
    args = ["finetune", "--task", "reward", "--model", tiny_llama_dir, "--dataset", data, "--max-steps", "2"]
    args += ["--set", "data.validation_split=0", "--set", "data.max_length=64", "--set", "options.margin_column=margin"]
    result = cli(*args, "-o", tmp_path / "ok")
    assert result.exit_code == 0, result.output
    rows[3]["margin"] = "lots"
    write_jsonl(tmp_path / "m.jsonl", rows)
    result = cli(*args, "-o", tmp_path / "bad")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "column 'margin' (options.margin_column) row 4" in lines[0], result.output


def test_bad_pair_is_one_error_line(tiny_llama_dir, tmp_path, cli):
    rows = make_preference_rows(8, seed=5)
    rows[2]["chosen"] = ""
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = cli(
        "finetune",
        "--task",
        "reward",
        "--model",
        tiny_llama_dir,
        "--dataset",
        data,
        "-o",
        tmp_path / "o",
        "--max-steps",
        "1",
        "--set",
        "data.validation_split=0",
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "row 3" in lines[0] and "skip_invalid_pairs" in lines[0], result.output
