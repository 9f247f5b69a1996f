"""Summarization and translation: data layouts, preprocessing, and end-to-end runs on a tiny T5."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtune.errors import LlmtuneError
from tests.conftest import make_summary_rows, make_translation_rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def context(task_name: str, tree: dict, training: bool = True, tokenizer: object = None):
    """A RunContext from a plain config tree (no shipped recipe involved)."""
    from llmtune.resolve import build_config
    from llmtune.tasks import get_task
    from llmtune.tasks.base import RunContext

    cfg = build_config({"task": task_name, **tree})
    return get_task(task_name), RunContext(cfg=cfg, training=training, tokenizer=tokenizer)


def load(tmp_path: Path, dataset: str, **options):
    task, ctx = context("translation", {"data": {"dataset": dataset}, "options": options})
    return task.load_data(ctx)


# ---- translation layouts ------------------------------------------------------------------------


def test_nested_translation_layout(tmp_path):
    rows = make_translation_rows(20)
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"translation": r} for r in rows])
    raw = load(tmp_path, str(data), source_lang="en", target_lang="de")
    assert set(raw) == {"train", "validation"}  # validation carved from the single file
    assert set(raw["train"].column_names) == {"en", "de"}
    got = {(r["en"], r["de"]) for split in raw.values() for r in split}
    assert got == {(r["en"], r["de"]) for r in rows}

    with pytest.raises(LlmtuneError, match=r"languages .*de.*set options.source_lang"):
        load(tmp_path, str(data))
    with pytest.raises(LlmtuneError, match=r"options\.target_lang 'fr' is not in"):
        load(tmp_path, str(data), source_lang="en", target_lang="fr")


def test_flat_columns_pick_language_names(tmp_path):
    from transformers import AutoTokenizer

    rows = make_translation_rows(10)
    folder = tmp_path / "flat"
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "dev.jsonl", rows[:4])
    raw = load(tmp_path, str(folder), source_lang="de", target_lang="en")  # reverse direction
    assert len(raw["validation"]) == 4
    task, ctx = context(
        "translation", {"data": {"dataset": str(folder)}, "options": {"source_lang": "de", "target_lang": "en"}}
    )
    ctx.tokenizer = AutoTokenizer.from_pretrained(Path(__file__).parent.parent / "llmtune/resources/tiny_t5")
    task.prepare(ctx, raw)
    assert ctx.columns == {"source": "de", "target": "en"}


def test_parallel_text_folder(tmp_path):
    rows = make_translation_rows(12)
    folder = tmp_path / "parallel"
    write_lines(folder / "train.src", [r["en"] for r in rows] + [""])  # a trailing empty pair is dropped
    write_lines(folder / "train.tgt", [r["de"] for r in rows] + ["x"])
    write_lines(folder / "val.en", [r["en"] for r in rows[:3]])
    write_lines(folder / "val.de", [r["de"] for r in rows[:3]])
    raw = load(tmp_path, str(folder), source_lang="en", target_lang="de")
    assert set(raw) == {"train", "validation"}
    assert len(raw["train"]) == 12 and len(raw["validation"]) == 3
    # without languages, .src/.tgt files become source/target columns; val.en/val.de are ignored
    raw = load(tmp_path, str(folder))
    assert raw["train"].column_names == ["source", "target"]
    pairs = {(r["source"], r["target"]) for split in raw.values() for r in split}  # validation carved from train
    assert pairs == {(r["en"], r["de"]) for r in rows}


def test_parallel_pair_and_single_side(tmp_path):
    rows = make_translation_rows(10)
    src = write_lines(tmp_path / "corpus.en", [r["en"] for r in rows])
    tgt = write_lines(tmp_path / "corpus.de", [r["de"] for r in rows])
    raw = load(tmp_path, f"{src},{tgt}", source_lang="en", target_lang="de")
    assert len(raw["train"]) + len(raw["validation"]) == 10
    assert {r["de"] for s in raw.values() for r in s} == {r["de"] for r in rows}
    raw = load(tmp_path, str(src), source_lang="en", target_lang="de")  # counterpart found beside it
    assert len(raw["train"]) + len(raw["validation"]) == 10


def test_parallel_errors(tmp_path):
    src = write_lines(tmp_path / "a.src", ["one", "two", "three"])
    write_lines(tmp_path / "a.tgt", ["eins", "zwei"])
    with pytest.raises(LlmtuneError, match=r"not aligned: .*a.src has 3 lines, .*a.tgt has 2"):
        load(tmp_path, str(src))
    lonely = write_lines(tmp_path / "b.src", ["one"])
    with pytest.raises(LlmtuneError, match=r"no counterpart .*b.src"):
        load(tmp_path, str(lonely))
    folder = tmp_path / "half"
    write_lines(folder / "train.src", ["one"])
    with pytest.raises(LlmtuneError, match="has no target counterpart"):
        load(tmp_path, str(folder))
    with pytest.raises(LlmtuneError, match="parallel text file not found"):
        load(tmp_path, f"{src},{tmp_path / 'missing.tgt'}")


def test_config_validation():
    from llmtune.errors import ConfigError
    from llmtune.resolve import build_config

    with pytest.raises(ConfigError) as err:
        build_config(
            {
                "task": "translation",
                "data": {"text_column": "x"},
                "options": {"num_beams": 0, "source_lang": "en", "target_lang": "en"},
            }
        )
    text = str(err.value)
    assert "options.num_beams must be >= 1" in text
    assert "both 'en'" in text
    assert "data.text_column is not used" in text
    with pytest.raises(ConfigError, match=r"needs a tokenizer: pass --tokenizer"):
        build_config({"task": "summarization", "model": {"config": "builtin:tiny_t5"}})


# ---- preprocessing ------------------------------------------------------------------------------


def test_prepare_prefix_truncation_and_labels(tiny_t5_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_t5_dir)
    data = write_jsonl(tmp_path / "s.jsonl", make_summary_rows(6))
    task, ctx = context(
        "summarization",
        {
            "data": {"dataset": str(data), "validation_split": 0.5},
            "options": {"source_prefix": "summarize: ", "max_source_length": 8, "max_target_length": 3},
        },
        tokenizer=tok,
    )
    raw = task.load_data(ctx)
    out = task.prepare(ctx, raw)
    assert ctx.columns == {"source": "document", "target": "summary"}
    row = out["train"][0]
    assert len(row["input_ids"]) == 8 and row["input_ids"][-1] == tok.eos_token_id  # truncated, EOS kept
    assert tok.decode(row["input_ids"], skip_special_tokens=True).startswith("summarize:")
    assert len(row["labels"]) <= 3
    full = tok(text_target=raw["train"][0]["summary"])["input_ids"]
    assert row["labels"][:-1] == full[: len(row["labels"]) - 1]


# ---- end to end through the CLI -----------------------------------------------------------------


@pytest.fixture(scope="module")
def translated(tmp_path_factory, tiny_t5_dir):
    """Train once on parallel text files; tests inspect the outputs and evaluate the saved model."""
    from typer.testing import CliRunner

    from llmtune.cli import app

    root = tmp_path_factory.mktemp("translation")
    data = root / "data"
    train, dev = make_translation_rows(320, seed=1), make_translation_rows(24, seed=2)
    write_lines(data / "train.en", [r["en"] for r in train])
    write_lines(data / "train.de", [r["de"] for r in train])
    write_lines(data / "dev.en", [r["en"] for r in dev])
    write_lines(data / "dev.de", [r["de"] for r in dev])
    out = root / "out"
    args = ["finetune", "--task", "translation", "--model", tiny_t5_dir, "--dataset", data, "--output-dir", out]
    args += ["--max-steps", "80", "--lr", "1e-2", "--batch-size", "16", "--seed", "0"]
    for item in (
        "options.source_lang=en",
        "options.target_lang=de",
        "options.source_prefix=null",
        "options.num_beams=2",
        "options.max_new_tokens=12",
        "train.eval_strategy=no",
        "train.logging_steps=40",
    ):
        args += ["--set", item]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return out, dev, result.output


@pytest.mark.slow
def test_translation_outputs_and_metrics(translated):
    out, dev, output = translated
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    assert 0 <= metrics["eval_bleu"] <= 100 and 0 <= metrics["eval_chrf"] <= 100
    assert metrics["eval_chrf"] > 12, metrics  # learned part of the toy dictionary (random init: ~2.5)
    assert 0 < metrics["eval_gen_len"] <= 12
    assert "eval_bleu" in output and "eval_chrf" in output
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == [r["en"] for r in dev]
    assert [r["reference"] for r in rows] == [r["de"] for r in dev]
    assert all(set(r) == {"input", "reference", "prediction"} for r in rows)
    from llmtune.metrics.generation import bleu_chrf

    rescored = bleu_chrf([r["prediction"] for r in rows], [r["reference"] for r in rows])
    assert abs(rescored["bleu"] - metrics["eval_bleu"]) < 1e-6  # exported rows are what was scored
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["num_beams"] == 2 and gen["max_new_tokens"] == 12
    for name in ("model.safetensors", "config.json", "tokenizer.json", "llmtune_config.yaml", "README.md"):
        assert (out / name).is_file(), name


@pytest.mark.slow
def test_translation_eval_command_on_nested_layout(translated, tmp_path, cli):
    out, dev, _ = translated
    data = write_jsonl(tmp_path / "dev.jsonl", [{"translation": r} for r in dev])
    result = cli("eval", "--model", out, "--dataset", data, "--output-dir", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["eval"]
    trained = json.loads((out / "metrics.json").read_text())["eval"]
    # same model, same data in another layout, saved generation settings reused: same scores
    assert metrics["eval_bleu"] == pytest.approx(trained["eval_bleu"], abs=1e-6)
    assert metrics["eval_chrf"] == pytest.approx(trained["eval_chrf"], abs=1e-6)
    rows = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == len(dev)


@pytest.mark.slow
def test_summarization_end_to_end_and_eval(tiny_t5_dir, tmp_path, cli):
    folder = tmp_path / "data"
    write_jsonl(folder / "train.jsonl", make_summary_rows(160, seed=1))
    write_jsonl(folder / "validation.jsonl", make_summary_rows(16, seed=2))
    out = tmp_path / "out"
    result = cli(
        "finetune",
        "--task",
        "summarization",
        "--model",
        tiny_t5_dir,
        "--dataset",
        folder,
        "--output-dir",
        out,
        "--max-steps",
        "30",
        "--lr",
        "1e-2",
        "--batch-size",
        "16",
        "--set",
        'options.source_prefix="summarize: "',  # YAML-quoted: a bare "a: " would be a mapping
        "--set",
        "options.num_beams=1",
        "--set",
        "options.max_new_tokens=8",
        "--set",
        "train.eval_strategy=steps",
        "--set",
        "train.eval_steps=15",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    for key in ("eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum", "eval_loss"):
        assert key in metrics
    assert 0 <= metrics["eval_rouge2"] <= metrics["eval_rouge1"] <= 100
    saved = (out / "llmtune_config.yaml").read_text()
    assert "source_prefix: 'summarize: '" in saved
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and not rows[0]["input"].startswith("summarize:")  # raw input exported

    result = cli("eval", "--model", out, "--dataset", folder / "validation.jsonl", "--output-dir", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())["eval"]
    assert again["eval_rougeL"] == pytest.approx(metrics["eval_rougeL"], abs=1e-6)


@pytest.mark.slow
def test_translation_smoke_recipe_builds_from_config(tmp_path, cli):
    """The shipped smoke recipe: random-init T5 from builtin:tiny_t5 (a few steps here)."""
    out = tmp_path / "smoke"
    result = cli(
        "finetune", "--recipe", "translation-smoke", "--output-dir", out, "--max-steps", "3", "--set",
        "data.max_train_samples=48", "--set", "data.max_eval_samples=4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = (out / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 4
    assert json.loads((out / "config.json").read_text())["model_type"] == "t5"
