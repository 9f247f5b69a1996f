"""Generation quality at evaluation: sft/clm answers scored against references (eval_gen_*)."""

from __future__ import annotations

import json

import pytest

from llmtune.metrics.generation import exact_match, normalize_answer, rouge_scores, score_generations


def test_exact_match_and_score_selection():
    assert normalize_answer("  The Cat sat.  ") == "the cat sat"
    assert exact_match(["The cat sat.", "a dog"], ["the  cat sat", "a cat"]) == pytest.approx(50.0)
    scores = score_generations(["the cat sat"], ["the cat sat"], ["rougeL", "exact_match"])
    assert scores == {"rougeL": pytest.approx(100.0), "exact_match": pytest.approx(100.0)}
    both = score_generations(["a b c", "x"], ["a b d", "y"], ["bleu", "chrf", "rouge1"])
    assert set(both) == {"bleu", "chrf", "rouge1"}


def test_bad_generation_options_are_config_errors(cli, tiny_llama_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "hi", "response": "ho"}) + "\n", encoding="utf-8")
    result = cli(
        "eval", "-m", tiny_llama_dir, "--task", "sft", "-d", data, "--set", "options.eval_generation_metrics=[rougeZ]"
    )
    assert result.exit_code == 2 and "rougeZ" in result.stderr and "exact_match" in result.stderr
    result = cli("eval", "-m", tiny_llama_dir, "--task", "sft", "-d", data, "--set", "options.eval_generation_rows=-2")
    assert result.exit_code == 2 and "options.eval_generation_rows" in result.stderr


def read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_sft_eval_scores_generated_answers(cli, tiny_llama_dir, tmp_path):
    rows = [{"prompt": f"translate the {w}", "response": f"der {w}"} for w in ("dog", "cat", "car", "house", "red")]
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "ev"
    result = cli(
        "eval", "-m", tiny_llama_dir, "--task", "sft", "-d", data, "-o", out, "--batch-size", "2",
        "--set", "options.eval_generation_rows=3", "--set", "options.num_samples=0", "--set", "options.max_new_tokens=6",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    preds = read(out / "predictions.jsonl")
    assert len(preds) == 3 and metrics["eval_gen_rows"] == 3  # N rows generated and scored
    p, r = [x["prediction"] for x in preds], [x["reference"] for x in preds]
    assert r == ["der dog", "der cat", "der car"]
    assert metrics["eval_gen_rougeL"] == pytest.approx(rouge_scores(p, r)["rougeL"])
    assert metrics["eval_gen_exact_match"] == pytest.approx(exact_match(p, r))
    assert metrics["eval_gen_new_tokens"] > 0 and metrics["eval_gen_tokens_per_second"] > 0
    assert "eval_gen_rougeL" in result.stdout  # in the printed table
    off = cli(
        "eval",
        "-m",
        tiny_llama_dir,
        "--task",
        "sft",
        "-d",
        data,
        "-o",
        tmp_path / "off",
        "--set",
        "options.num_samples=0",
    )
    assert off.exit_code == 0 and not any(
        k.startswith("eval_gen") for k in json.loads((tmp_path / "off" / "metrics.json").read_text())["eval"]
    )


def test_clm_eval_scores_continuations_when_rows_have_prompt_and_reference(cli, tiny_gpt2_dir, tmp_path):
    rows = [{"text": f"the film was {w} .", "prompt": "the film was", "reference": w} for w in ("good", "bad", "dull")]
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "ev"
    result = cli("eval", "-m", tiny_gpt2_dir, "--task", "clm", "-d", data, "-o", out, "--set", "options.eval_generation_rows=-1",
                 "--set", "options.max_new_tokens=4", "--set", "options.eval_generation_metrics=[exact_match, chrf]")  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    assert metrics["eval_gen_rows"] == 3 and "eval_gen_chrf" in metrics and "eval_perplexity" in metrics
    preds = read(out / "predictions.jsonl")
    assert [x["input"] for x in preds] == ["the film was"] * 3
    assert metrics["eval_gen_exact_match"] == pytest.approx(
        exact_match([x["prediction"] for x in preds], ["good", "bad", "dull"])
    )
    plain = tmp_path / "plain.txt"
    plain.write_text("the film was good .\nthe book was bad .\n", encoding="utf-8")
    missing = cli("eval", "-m", tiny_gpt2_dir, "--task", "clm", "-d", plain, "--set", "options.eval_generation_rows=2")
    assert missing.exit_code == 2 and "no prompt column" in missing.stderr and "options.prompt_column" in missing.stderr
