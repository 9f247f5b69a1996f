"""One model-loading path for every command: a GGUF model through `eval` and `finetune`, then
`eval` of the fine-tuned model on held-out chats (the README's real-LLM flow, on a tiny model)."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from tests.conftest import make_sft_rows


def _chats(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for r in make_sft_rows(n, seed=seed):
        messages = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
        if rng.random() < 0.5:
            messages.insert(0, {"role": "system", "content": "answer in German"})
        rows.append({"messages": messages})
    return rows


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _eval(cli, out, *args):
    result = cli("eval", *map(str, args), "--output-dir", out)
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text()), result.output


def test_gguf_error_names_the_flag(tiny_gguf_dir, tmp_path, cli):
    text = tmp_path / "t.txt"
    text.write_text("the movie was great\n", encoding="utf-8")
    result = cli("eval", "--task", "clm", "--model", tiny_gguf_dir, "--dataset", text, "-o", tmp_path / "e")
    assert result.exit_code == 2
    assert "--gguf-file model.gguf" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_gguf_model_through_eval_finetune_and_eval(tiny_gguf_dir, tiny_llama_dir, tmp_path, cli):
    train = _write_jsonl(tmp_path / "train.jsonl", _chats(48, seed=1))
    held_out = _write_jsonl(tmp_path / "held_out.jsonl", _chats(10, seed=2))
    text = tmp_path / "text.txt"
    text.write_text("".join(f"{r['messages'][-2]['content']} {r['messages'][-1]['content']}\n" for r in _chats(30, 3)))

    # eval: the GGUF file (flag or --set) scores exactly like the same weights as safetensors
    gguf = ("--model", tiny_gguf_dir, "--gguf-file", "model.gguf")
    sft_gguf, output = _eval(cli, tmp_path / "e1", "--task", "sft", *gguf, "--dataset", held_out)
    sft_ref, _ = _eval(cli, tmp_path / "e2", "--task", "sft", "--model", tiny_llama_dir, "--dataset", held_out)
    assert sft_gguf["eval"]["eval_loss"] == pytest.approx(sft_ref["eval"]["eval_loss"], rel=1e-5)
    assert sft_gguf["eval"]["eval_tokens"] == sft_ref["eval"]["eval_tokens"] > 0
    # on CPU no answers are generated unless asked, and the run says so
    assert (tmp_path / "e1" / "predictions.jsonl").read_text() == ""
    assert "options.num_samples" in output
    clm_gguf, _ = _eval(
        cli, tmp_path / "e3", "--task", "clm", "--model", tiny_gguf_dir, "--set", "model.gguf_file=model.gguf",
        "--dataset", text,
    )  # fmt: skip
    clm_ref, _ = _eval(cli, tmp_path / "e4", "--task", "clm", "--model", tiny_llama_dir, "--dataset", text)
    assert clm_gguf["eval"]["eval_perplexity"] == pytest.approx(clm_ref["eval"]["eval_perplexity"], rel=1e-5)

    # finetune from the GGUF file with the task's default recipe, no validation, fewer steps than an epoch
    out = tmp_path / "tuned"
    result = cli(
        "finetune", "--task", "sft", *gguf, "--dataset", train, "--output-dir", out, "--max-steps", "3",
        "--batch-size", "4", "--lr", "3e-3", "--set", "data.validation_split=0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # the default recipe's values are listed once; its description (No Robots...) is not carried over
    assert result.output.count("default recipe sft.yaml set:") == 1
    assert "train.lr_scheduler=cosine" in result.output and "options.packing=True" in result.output
    assert "train.gradient_accumulation_steps=1 (not the recipe's 4" in result.output
    saved = yaml.safe_load((out / "llmtune_config.yaml").read_text())
    assert saved["description"] == "" and saved["train"]["gradient_accumulation_steps"] == 1
    assert saved["model"]["gguf_file"] == "model.gguf"
    # a completed run keeps no checkpoint next to its model
    assert not list(out.glob("checkpoint-*")) and (out / "model.safetensors").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["train_step_peak_rss_mb"] > 50

    # the fine-tuned model (plain safetensors now) on the held-out chats
    tuned, _ = _eval(cli, tmp_path / "e5", "--model", out, "--dataset", held_out)
    assert tuned["eval"]["eval_loss"] < sft_gguf["eval"]["eval_loss"]

    # asked for, the final checkpoint is kept (to extend the run later with --resume)
    kept = tmp_path / "kept"
    result = cli(
        "finetune", "--task", "sft", "--model", tiny_llama_dir, "--dataset", train, "--output-dir", kept,
        "--max-steps", "2", "--batch-size", "4", "--set", "data.validation_split=0",
        "--set", "train.keep_checkpoints=true",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [p.name for p in kept.glob("checkpoint-*")] == ["checkpoint-2"]
