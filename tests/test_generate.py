"""`llmtune generate` and `llmtune chat`: streamed output, templates, sampling flags, LoRA folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_predict import greedy_reference, one_line_error


def body(result) -> str:
    """Generated text on stdout (the trailing newline removed)."""
    assert result.exit_code == 0, result.output
    return result.stdout.rstrip("\n")


def test_generate_applies_the_chat_template_and_matches_greedy(cli, tiny_llama_dir):
    prompt = "translate the big dog"
    result = cli("generate", "-m", tiny_llama_dir, prompt, "--greedy", "--max-new-tokens", "10")
    assert body(result) == greedy_reference(tiny_llama_dir, prompt, 10, chat=True)
    assert "finish: " in result.stderr
    # --raw: the same model as a plain continuation (BOS + the prompt)
    raw = body(cli("generate", "-m", tiny_llama_dir, prompt, "--greedy", "--max-new-tokens", "10", "--raw"))
    assert raw == greedy_reference(tiny_llama_dir, prompt, 10, chat=False)


def test_stop_strings_cut_the_output(cli, tiny_llama_dir):
    args = ["generate", "-m", tiny_llama_dir, "the film", "--raw", "--greedy", "--max-new-tokens", "16"]
    full = body(cli(*args))
    assert len(full) > 8
    stop = full[3:7]
    result = cli(*args, "--stop", stop)
    assert body(result) == full[: full.find(stop)]  # the answer ends before the stop string
    assert "finish: stop" in result.stderr


def test_sampling_is_seeded(cli, tiny_llama_dir):
    args = [
        "generate",
        "-m",
        tiny_llama_dir,
        "hello",
        "--max-new-tokens",
        "12",
        "--temperature",
        "1.5",
        "--top-k",
        "50",
    ]
    a, b = body(cli(*args, "--seed", "1")), body(cli(*args, "--seed", "1"))
    assert a == b
    others = {body(cli(*args, "--seed", str(s))) for s in (2, 3, 4)}
    assert others - {a}  # different seeds sample different text from a random model


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--temperature", "-0.1"], "--temperature must be >= 0"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["--repetition-penalty", "0"], "--repetition-penalty must be > 0"),
    ],
)
def test_generation_flags_out_of_range(cli, tiny_llama_dir, flags, fragment):
    one_line_error(cli("generate", "-m", tiny_llama_dir, "hi", *flags), fragment)


def test_generate_refuses_non_generative_models(cli, tmp_path, tiny_wordpiece_dir):
    from tests.test_predict import bert_head, save_llmtune_config

    model = bert_head(tiny_wordpiece_dir, tmp_path / "cls", "AutoModelForSequenceClassification", num_labels=2)
    save_llmtune_config(model, {"task": "sentiment"})
    one_line_error(cli("generate", "-m", model, "hi"), "llmtune predict")


def test_chat_keeps_the_conversation_and_resets(cli, cli_input, tiny_llama_dir):
    sampling = ["--max-new-tokens", "8", "--temperature", "1.5", "--top-k", "50", "--seed", "7"]
    result = cli_input(
        ["chat", "-m", tiny_llama_dir, *sampling], "translate a cat\nand the dog\n/reset\nand the dog\n/exit\n"
    )
    assert result.exit_code == 0, result.output
    first = body(cli("generate", "-m", tiny_llama_dir, "translate a cat", *sampling))
    fresh = body(cli("generate", "-m", tiny_llama_dir, "and the dog", *sampling))
    assert first and fresh
    # turn 1 is what `generate` gives for the prompt alone (same seed); after /reset the model
    # sees only the new turn again; before it, the second turn saw the conversation so far
    assert result.stdout.startswith(f">>> {first}\n>>> ")
    assert f">>> >>> {fresh}\n>>> " in result.stdout
    second = result.stdout[len(f">>> {first}\n>>> ") : result.stdout.index(f">>> >>> {fresh}")]
    assert second.rstrip("\n") != fresh
    assert "(conversation cleared)" in result.stderr and "bye" in result.stderr
    # Ctrl-D (end of input) leaves quietly, exit 0
    assert cli_input(["chat", "-m", tiny_llama_dir, *sampling], "translate a cat\n").exit_code == 0


def test_chat_without_template_falls_back_once(cli_input, tiny_gpt2_dir):
    result = cli_input(["chat", "-m", tiny_gpt2_dir, "--greedy", "--max-new-tokens", "4"], "the film\nwas\n/exit\n")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("no chat template") == 1


def test_unmerged_lora_folder_generates_like_the_merged_model(cli, tiny_llama_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    torch.manual_seed(1)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    adapters = tmp_path / "adapters"
    peft_model.save_pretrained(adapters)  # adapter_config.json names the base folder
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_llama_dir / name).is_file():
            shutil.copy(tiny_llama_dir / name, adapters / name)
    merged = tmp_path / "merged"
    peft_model.merge_and_unload().save_pretrained(merged)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_llama_dir / name).is_file():
            shutil.copy(tiny_llama_dir / name, merged / name)
    args = ["translate the dog", "--greedy", "--max-new-tokens", "10"]
    from_adapters = body(cli("generate", "-m", adapters, *args))
    assert from_adapters == body(cli("generate", "-m", merged, *args))
    assert from_adapters != body(cli("generate", "-m", tiny_llama_dir, *args))  # the adapters change the model


@pytest.fixture()
def cli_input():
    from typer.testing import CliRunner

    from llmtune.cli import app

    def invoke(args: list, text: str):
        return CliRunner().invoke(app, [str(a) for a in args], input=text)

    return invoke


def test_generate_model_folder_without_weights(cli, tiny_llama_dir, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    shutil.copy(Path(tiny_llama_dir) / "config.json", folder / "config.json")
    one_line_error(cli("generate", "-m", folder, "hi"), "no weights")
