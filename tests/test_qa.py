"""Extractive QA: SQuAD flattening, window labelling, n-best post-processing, end to end through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmtune.errors import LlmtuneError
from llmtune.tasks.qa import flatten_squad, postprocess_predictions, read_squad_json
from tests.conftest import make_qa_rows

SQUAD = {
    "version": "1.1",
    "data": [
        {
            "title": "Broncos",
            "paragraphs": [
                {
                    "context": "Denver Broncos won Super Bowl 50.",
                    "qas": [
                        {"id": "a", "question": "Who won?", "answers": [{"text": "Denver Broncos", "answer_start": 0}]},
                        {
                            "id": "b",
                            "question": "Who lost?",
                            "answers": [],
                            "is_impossible": True,
                            "plausible_answers": [{"text": "Denver", "answer_start": 0}],
                        },
                    ],
                }
            ],
        }
    ],
}


# ---------------------------------------------------------------------------------------------
# data


def test_flatten_nested_and_flat_squad(tmp_path):
    rows = flatten_squad(SQUAD, "x")
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["answers"] == {"text": ["Denver Broncos"], "answer_start": [0]}
    assert rows[1]["answers"] == {"text": [], "answer_start": []}  # is_impossible: plausible answers ignored
    assert rows[0]["title"] == "Broncos"
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(SQUAD))
    ds = read_squad_json(path)
    assert len(ds) == 2 and ds[0]["context"].startswith("Denver")
    # the HF-exported layout: {"data": [{id, question, context, answers: {text, answer_start}}]}
    flat = {
        "version": 2.0,
        "data": [{"id": "x", "question": "q", "context": "c d", "answers": {"text": ["d"], "answer_start": [2]}}],
    }
    path.write_text(json.dumps(flat))
    assert read_squad_json(path)[0]["answers"] == {"text": ["d"], "answer_start": [2]}
    assert read_squad_json(tmp_path / "train.jsonl") is None  # standard json loader's job
    path.write_text(json.dumps({"data": []}))
    with pytest.raises(LlmtuneError, match="no questions"):
        read_squad_json(path)


# ---------------------------------------------------------------------------------------------
# post-processing on hand-built logits


def _window(n_tokens: int, context_tokens: list[tuple[int, int]], start: int) -> list:
    """Offsets for one window: None outside the context, the context's token offsets from ``start``."""
    offs = [None] * n_tokens
    for i, o in enumerate(context_tokens):
        offs[start + i] = o
    return offs


CONTEXT = "alpha beta gamma delta epsilon"
TOKENS = [(0, 5), (6, 10), (11, 16), (17, 22), (23, 30)]


def test_postprocess_picks_best_valid_span():
    offs = [_window(8, TOKENS, 2)]
    start = np.full(8, -5.0)
    end = np.full(8, -5.0)
    start[0] = end[0] = -1.0  # the null ([CLS]) score is low
    start[1], end[1] = 9.0, 9.0  # question tokens: highest, but outside the context -> skipped
    start[6], end[2] = 6.0, 6.0  # "epsilon" start, "alpha" end: end before start -> skipped
    start[3], end[4] = 4.0, 3.5  # "beta gamma"
    out = postprocess_predictions([CONTEXT], [0], offs, [start], [end], n_best_size=20, max_answer_length=30)
    assert out[0]["text"] == "beta gamma"
    assert out[0]["score"] == pytest.approx(7.5)
    # with max_answer_length=1 only single-token spans are allowed
    out = postprocess_predictions([CONTEXT], [0], offs, [start], [end], max_answer_length=1)
    assert len(out[0]["text"].split()) == 1
    # n_best_size=1 only looks at the single best start and end (question tokens) -> nothing valid
    out = postprocess_predictions([CONTEXT], [0], offs, [start], [end], n_best_size=1)
    assert out[0]["text"] == "" and out[0]["score"] is None


def test_postprocess_combines_windows_of_one_example():
    # two overlapping windows of the same example; the answer is best in the second
    offs = [_window(6, TOKENS[:3], 2), _window(6, TOKENS[2:], 2)]
    s1, e1 = np.zeros(6), np.zeros(6)
    s2, e2 = np.zeros(6), np.zeros(6)
    s1[2], e1[2] = 2.0, 2.0  # "alpha": 4
    s2[3], e2[4] = 5.0, 5.0  # "delta epsilon": 10
    out = postprocess_predictions(["x", CONTEXT], [1, 1], offs, [s1, s2], [e1, e2])
    assert out[1]["text"] == "delta epsilon"
    assert out[0] == {"text": "", "score": None}  # an example without windows


def test_postprocess_v2_null_answer_threshold():
    offs = [_window(8, TOKENS, 2)]
    start, end = np.zeros(8), np.zeros(8)
    start[0] = end[0] = 3.0  # null score 6
    start[2], end[2] = 2.5, 2.5  # best span "alpha" = 5
    common = {"version_2": True, "n_best_size": 5}
    out = postprocess_predictions([CONTEXT], [0], offs, [start], [end], **common)
    assert out[0]["text"] == "" and out[0]["null_score_diff"] == pytest.approx(1.0)
    out = postprocess_predictions([CONTEXT], [0], offs, [start], [end], null_score_diff_threshold=1.5, **common)
    assert out[0]["text"] == "alpha"
    # v1 never answers empty
    assert postprocess_predictions([CONTEXT], [0], offs, [start], [end])[0]["text"] == "alpha"


# ---------------------------------------------------------------------------------------------
# window labelling


def test_long_context_windows_and_labels(tiny_bert_dir):
    """Every window holding the answer labels its tokens; the others label [CLS]."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from llmtune.resolve import load_config
    from llmtune.tasks import get_task
    from llmtune.tasks.base import RunContext

    words = ["the", "film"] * 30
    words[45] = "great"
    context = " ".join(words)
    at = context.index(" great ") + 1
    raw = Dataset.from_list(
        [
            {
                "id": "x",
                "question": "which word is good",
                "context": context,
                "answers": {"text": ["great"], "answer_start": [at]},
            }
        ]
    )
    cfg = load_config(task="qa", sets=["data.max_length=24", "options.doc_stride=8"])
    task = get_task("qa")
    ctx = RunContext(cfg=cfg, training=True)
    ctx.tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    features = task._features(ctx, raw, "validation")
    assert len(features) > 3  # overflowing windows
    answered = 0
    for f in features:
        assert len(f["input_ids"]) == 24 and f["example_index"] == 0
        if f["start_positions"] == f["null_position"]:
            continue
        answered += 1
        s, e = f["offset_mapping"][f["start_positions"]], f["offset_mapping"][f["end_positions"]]
        assert context[s[0] : e[1]] == "great"
    assert answered >= 1
    assert all(o is None for o in features[0]["offset_mapping"][:5])  # [CLS] + question tokens


# ---------------------------------------------------------------------------------------------
# end to end


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


QA_ARGS = ["--epochs", "5", "--lr", "3e-3", "--batch-size", "16", "--seed", "0", "--set", "train.logging_steps=50"]
SHORT = ["--set", "data.max_length=24", "--set", "options.doc_stride=8"]


@pytest.fixture(scope="module")
def qa_trained(tmp_path_factory, tiny_bert_dir):
    from typer.testing import CliRunner

    from llmtune.cli import app

    root = tmp_path_factory.mktemp("qa")
    data = root / "data"
    data.mkdir()
    rows = make_qa_rows(260)
    _write_jsonl(data / "train.jsonl", rows[:220])
    # validation as nested SQuAD json: both formats in one run
    squad = {
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": r["context"],
                        "qas": [
                            {
                                "id": r["id"],
                                "question": r["question"],
                                "answers": [
                                    {"text": t, "answer_start": s}
                                    for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"], strict=True)
                                ],
                            }
                        ],
                    }
                    for r in rows[220:]
                ],
            }
        ]
    }
    (data / "validation.json").write_text(json.dumps(squad))
    out = root / "out"
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            "--task",
            "qa",
            "--model",
            str(tiny_bert_dir),
            "--dataset",
            str(data),
            "-o",
            str(out),
            *QA_ARGS,
            *SHORT,
        ],
    )
    assert result.exit_code == 0, result.output
    return out, data, rows


@pytest.mark.slow
def test_qa_learns_and_exports(qa_trained):
    out, _, rows = qa_trained
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    # picking a random context word would score ~8 EM; the answer word is learnable
    assert metrics["eval_exact_match"] >= 90 and metrics["eval_f1"] >= 90, metrics
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 40
    first = preds[0]
    assert {"id", "question", "context", "answers", "prediction"} <= set(first)
    assert first["id"] == rows[220]["id"] and first["answers"] == rows[220]["answers"]["text"]
    exact = 100 * sum(p["prediction"] in p["answers"] for p in preds) / len(preds)
    assert exact == pytest.approx(metrics["eval_exact_match"])
    saved = (out / "llmtune_config.yaml").read_text()
    assert "version_2_with_negative: false" in saved  # detected and recorded for `llmtune eval`


@pytest.mark.slow
def test_qa_eval_command(qa_trained, tmp_path, cli):
    out, _, _ = qa_trained
    data = _write_jsonl(tmp_path / "more.jsonl", make_qa_rows(30, seed=7))
    result = cli("eval", "--model", out, "--dataset", data, "--output-dir", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["eval"]
    assert metrics["eval_f1"] >= 80
    assert len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()) == 30


@pytest.mark.slow
def test_qa_v2_unanswerable(tmp_path, tiny_bert_dir, cli):
    rows = make_qa_rows(240, seed=3, unanswerable_every=4)
    data = tmp_path / "data"
    data.mkdir()
    _write_jsonl(data / "train.jsonl", rows[:200])
    _write_jsonl(data / "dev.jsonl", rows[200:])
    result = cli(
        "finetune",
        "--task",
        "qa",
        "--model",
        tiny_bert_dir,
        "--dataset",
        data,
        "-o",
        tmp_path / "out",
        *QA_ARGS,
        *SHORT,
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["eval"]
    assert metrics["eval_NoAns_total"] == 10 and metrics["eval_HasAns_total"] == 30
    assert metrics["eval_NoAns_exact"] >= 80 and metrics["eval_HasAns_exact"] >= 80, metrics
    preds = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert any(p["prediction"] == "" and p["answers"] == [] for p in preds)
    assert all("null_score_diff" in p for p in preds)
    # v1 explicitly requested on data with unanswerable questions: one-line error
    result = cli(
        "finetune", "--task", "qa", "--model", tiny_bert_dir, "--dataset", data, "-o", tmp_path / "v1",
        "--set", "options.version_2_with_negative=false", *SHORT,
    )  # fmt: skip
    assert result.exit_code == 2 and "version_2_with_negative" in result.output


def test_qa_config_checks(cli):
    result = cli("finetune", "--task", "qa", "--dataset", "x.jsonl", "--dry-run", "--set", "options.doc_stride=500")
    assert result.exit_code == 2 and "options.doc_stride" in result.output
