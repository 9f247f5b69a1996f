"""End-to-end `llmtune pretrain` / `llmtune eval` for clm and mlm through the real CLI."""

from __future__ import annotations

import json
import math

import pytest


def _metrics(path):
    return json.loads((path / "metrics.json").read_text())


@pytest.fixture(scope="module")
def clm_scratch(tmp_path_factory, tiny_bpe_dir):
    """A tiny GPT-2 from a local config.json, trained on a small corpus: several tests inspect it."""
    from typer.testing import CliRunner

    from llmtune.cli import app
    from tests.conftest import lm_corpus_lines

    root = tmp_path_factory.mktemp("clm")
    corpus = root / "corpus"
    corpus.mkdir()
    lines = lm_corpus_lines()
    (corpus / "train.txt").write_text("\n".join(lines[:260]) + "\n", encoding="utf-8")
    (corpus / "validation.txt").write_text("\n".join(lines[260:300]) + "\n", encoding="utf-8")
    config = root / "config.json"
    config.write_text(json.dumps({"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}))
    out = root / "out"
    result = CliRunner().invoke(
        app,
        [
            "pretrain", "--objective", "clm", "--model-config", str(config), "--tokenizer", str(tiny_bpe_dir),
            "--dataset", str(corpus), "--output-dir", str(out), "--block-size", "32", "--epochs", "6",
            "--lr", "5e-3", "--batch-size", "8", "--seed", "0", "--set", "train.logging_steps=20",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, corpus, result.output


@pytest.mark.slow
def test_clm_from_scratch_cuts_perplexity(clm_scratch):
    out, _, output = clm_scratch
    ev = _metrics(out)["eval"]
    # untrained: about uniform over the vocabulary; trained: the corpus is very regular
    assert ev["eval_initial_perplexity"] > 150
    assert ev["eval_perplexity"] < ev["eval_initial_perplexity"] / 10, ev
    assert abs(ev["eval_loss"] - math.log(ev["eval_perplexity"])) < 1e-6
    assert ev["eval_tokens"] > 300
    assert "eval_perplexity" in output


@pytest.mark.slow
def test_clm_outputs_and_text_generation_pipeline(clm_scratch):
    import yaml
    from transformers import pipeline

    out, _, _ = clm_scratch
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "llmtune_config.yaml",
        "metrics.json",
        "README.md",
    ):
        assert (out / name).is_file(), name
    assert "train_loss" in _metrics(out)["train"]
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "eval_perplexity" in card
    saved = yaml.safe_load((out / "llmtune_config.yaml").read_text())
    assert saved["options"]["block_size"] == 32 and saved["task"] == "clm"
    generate = pipeline("text-generation", model=str(out))
    text = generate("the movie was", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("the movie was") and len(text) > len("the movie was")


@pytest.mark.slow
def test_eval_clm_blocks_and_sliding_window(clm_scratch, cli, tmp_path):
    out, corpus, _ = clm_scratch
    trained = _metrics(out)["eval"]
    # Training reads a .txt line by line (a document per line, EOS after each): `eval` with the
    # same reading reproduces the training-time figure.
    result = cli(
        "eval", "--model", out, "--task", "clm", "--dataset", corpus, "--set", "options.sample_by=line",
        "-o", tmp_path / "e1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "each line a document followed by EOS" in result.output
    ev = json.loads((tmp_path / "e1" / "metrics.json").read_text())["eval"]
    assert abs(ev["eval_perplexity"] - trained["eval_perplexity"]) < 1e-3 * trained["eval_perplexity"]
    result = cli(
        "eval", "--model", out, "--dataset", corpus, "--set", "options.stride=8", "--set", "options.sample_by=line",
        "-o", tmp_path / "e2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    strided = json.loads((tmp_path / "e2" / "metrics.json").read_text())["eval"]
    # every token but the first is scored (blocks cannot score each block's first token)
    assert strided["eval_tokens"] > ev["eval_tokens"]
    assert strided["eval_perplexity"] < trained["eval_initial_perplexity"] / 5


def _reference_nll(model_dir, text, block, stride):
    """Perplexity the usual way (Hugging Face's perplexity guide): the text tokenized as one
    string, scored in windows of `block` tokens advancing by `stride`, each token once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([tok(text)["input_ids"]])
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, ids.size(1), stride):
        end = min(begin + block, ids.size(1))
        window = ids[:, begin:end]
        labels = window.clone()
        labels[:, : window.size(1) - (end - prev_end)] = -100
        with torch.no_grad():
            logits = model(window).logits[:, :-1]
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="sum"
        )
        total, count = total + float(nll), count + int((target != -100).sum())
        prev_end = end
        if end == ids.size(1):
            break
    return total / count, count


@pytest.mark.slow
@pytest.mark.parametrize("stride", [None, 12])
def test_eval_txt_is_one_stream_like_published_perplexity(tiny_gpt2_dir, tmp_path, cli, stride):
    from tests.conftest import lm_corpus_lines

    # Lines start with a letter: tokenizing 7-line pieces equals tokenizing the whole text.
    text = "".join(f"{line}\n" for line in lm_corpus_lines(60))
    path = tmp_path / "valid.txt"
    path.write_text(text, encoding="utf-8")
    args = ["eval", "--task", "clm", "--model", tiny_gpt2_dir, "--dataset", path, "-o", tmp_path / "e"]
    args += ["--set", "options.block_size=32", "--set", "options.pack_batch_size=7"]  # several map batches
    args += ["--set", f"options.stride={stride}"] if stride else []
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert "one token stream" in result.output
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert "sample_by=stream" in saved["method"]
    loss, count = _reference_nll(tiny_gpt2_dir, text, 32, stride or 32)
    assert saved["eval"]["eval_tokens"] == count
    assert saved["eval"]["eval_loss"] == pytest.approx(loss, rel=1e-5)


@pytest.mark.slow
def test_clm_continued_and_streaming(tiny_gpt2_dir, lm_corpus_txt, cli, tmp_path):
    out = tmp_path / "stream"
    result = cli(
        "pretrain", "--objective", "clm", "--model", tiny_gpt2_dir, "--dataset", lm_corpus_txt / "train.txt",
        "-o", out, "--streaming", "--max-steps", "12", "--block-size", "32", "--batch-size", "8", "--lr", "5e-3",
        "--set", "data.max_eval_samples=30", "--set", "data.shuffle_buffer_size=16",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ev = _metrics(out)["eval"]
    assert ev["eval_perplexity"] < ev["eval_initial_perplexity"]
    saved = (out / "llmtune_config.yaml").read_text()
    assert "streaming: true" in saved and "name_or_path: " + str(tiny_gpt2_dir) in saved


@pytest.mark.slow
def test_mlm_continued_whole_word_and_fill_mask(tiny_bert_dir, lm_corpus_txt, cli, tmp_path):
    from transformers import pipeline

    out = tmp_path / "mlm"
    result = cli(
        "pretrain", "--objective", "mlm", "--model", tiny_bert_dir, "--dataset", lm_corpus_txt, "-o", out,
        "--epochs", "3", "--block-size", "32", "--batch-size", "8", "--lr", "3e-3",
        "--set", "options.whole_word_masking=true",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ev = _metrics(out)["eval"]
    assert {"eval_mlm_loss", "eval_mlm_perplexity", "eval_masked_tokens"} <= set(ev)
    assert ev["eval_mlm_perplexity"] < ev["eval_initial_mlm_perplexity"]
    fill = pipeline("fill-mask", model=str(out))
    preds = fill("the movie was [MASK] .")
    assert len(preds) == 5 and all("token_str" in p for p in preds)
    # `eval` scores the same fixed masks: identical masked-LM loss
    result = cli("eval", "--model", out, "--task", "mlm", "--dataset", lm_corpus_txt, "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())["eval"]
    assert abs(again["eval_mlm_loss"] - ev["eval_mlm_loss"]) < 1e-6


@pytest.mark.slow
def test_mlm_from_scratch_preset(tiny_wordpiece_dir, lm_corpus_txt, cli, tmp_path):
    out = tmp_path / "bert"
    result = cli(
        "pretrain", "--objective", "mlm", "--model-config", "bert-tiny", "--tokenizer", tiny_wordpiece_dir,
        "--dataset", lm_corpus_txt, "-o", out, "--max-steps", "8", "--block-size", "32", "--batch-size", "8",
        "--set", "model.config_overrides={hidden_size: 32, intermediate_size: 64}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 32
    from transformers import AutoTokenizer

    assert config["vocab_size"] == len(AutoTokenizer.from_pretrained(tiny_wordpiece_dir))


def test_dry_run_from_scratch_defaults(cli, tmp_path):
    result = cli("pretrain", "--objective", "clm", "--model-config", "gpt2-mini", "--tokenizer", "tok", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "learning_rate: 0.0005" in result.output and "group_by_length: false" in result.output


def test_shipped_lm_recipes_validate(cli):
    result = cli("recipes", "validate", "clm-smoke", "mlm-smoke", "clm-pretrain", "mlm-pretrain", "clm", "mlm")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--objective", "clm", "--model", "m", "--dataset", "d.txt", "--streaming"], "needs train.max_steps"),
        (["--objective", "clm", "--model-config", "gpt2-smal", "--tokenizer", "t"], "did you mean 'gpt2-small'"),
        (["--objective", "clm", "--model-config", "gpt2-tiny", "--dataset", "d.txt"], "needs a tokenizer"),
        (["--objective", "mlm", "--model-config", "gpt2-tiny", "--tokenizer", "t"], "pick an encoder"),
        (["--objective", "clm", "--model", "m", "--model-config", "gpt2-tiny"], "not both"),
        (["--objective", "xlm"], "--objective must be clm or mlm"),
        (["--recipe", "sentiment-demo"], "not a pretraining recipe"),
        (["--objective", "mlm", "--model", "m", "--set", "options.mlm_probability=1.5"], "mlm_probability"),
    ],
)
def test_bad_config_one_line_exit_2(cli, args, needle):
    result = cli("pretrain", *args)
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_bad_runtime_inputs_one_line_exit_2(cli, tmp_path, tiny_gpt2_dir, tiny_bpe_dir, lm_corpus_txt):
    common = ["--dataset", lm_corpus_txt, "--max-steps", "1"]
    cases = [
        (["--objective", "clm", "--model", tiny_gpt2_dir, "--block-size", "512"], "exceeds the model's 128 positions"),
        (["--objective", "mlm", "--model-config", "bert-tiny", "--tokenizer", tiny_bpe_dir], "has no mask token"),
        (["--objective", "clm", "--model-config", tmp_path / "missing.json", "--tokenizer", tiny_bpe_dir], "not found"),
        (["--objective", "clm", "--model", tiny_gpt2_dir, "--set", "data.text_column=body"], "column 'body'"),
    ]
    for i, (args, needle) in enumerate(cases):
        result = cli("pretrain", *args, *common, "-o", tmp_path / f"o{i}")
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output, (needle, result.output)


@pytest.mark.slow
def test_resolved_block_size_is_saved_without_editing_the_config(cli, tmp_path):
    """A block size llmtune picks from the model (no --block-size) goes into the saved config and
    eval reuses it; the config object the run was given stays as resolved from the recipe."""
    import yaml

    from llmtune.resolve import load_config
    from llmtune.runner import run_train

    out = tmp_path / "clm"
    sets = ["options.block_size=null", "model.config_overrides={n_positions: 48}", "train.eval_strategy=no"]
    cfg = load_config(recipe="clm-smoke", sets=sets, flags={"train.output_dir": str(out), "train.max_steps": 2})
    run_train(cfg)
    assert cfg.options.block_size is None and cfg.train.output_dir == str(out)
    saved = yaml.safe_load((out / "llmtune_config.yaml").read_text())
    assert saved["options"]["block_size"] == 48  # the model's positions, below clm's default 1024
    result = cli("eval", "--model", out, "--dataset", "builtin:tiny_corpus", "--set", "data.max_eval_samples=8")
    assert result.exit_code == 0, result.output[-2000:]
    assert "blocks of 48 tokens" in result.output
