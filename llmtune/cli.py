"""The ``llmtune`` command line: parse, resolve the config, dispatch.

Kept thin and lazy: torch, transformers and datasets are imported inside command bodies (via
:mod:`llmtune.runner`), so ``llmtune --help`` and ``llmtune recipes ...`` start instantly.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from llmtune import __version__
from llmtune.errors import LlmtuneError

app = typer.Typer(
    name="llmtune",
    help="Pretrain, fine-tune and evaluate transformer language models on the Hugging Face stack.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
recipes_app = typer.Typer(help="List, show, copy and validate recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")

_state = {"debug": os.environ.get("LLMTUNE_DEBUG", "") not in ("", "0")}


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """One line and exit code 2 for user errors; --debug re-raises with the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except LlmtuneError as exc:
            if _state["debug"]:
                traceback.print_exc()
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as exc:
            if _state["debug"]:
                raise
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            fail(f"{type(exc).__name__}: {text} (rerun with --debug for the traceback)", 1)

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmtune {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and library logs."),
) -> None:
    if debug:
        _state["debug"] = True


# ---------------------------------------------------------------------------------------------
# shared option groups

SetOpt = typer.Option(None, "--set", help="Override any config key: --set train.warmup_ratio=0.1 (repeatable).")
RecipeOpt = typer.Option(None, "--recipe", "-r", help="Recipe name (see `llmtune recipes list`) or YAML path.")
OutputOpt = typer.Option(None, "--output-dir", "-o", help="Where model, config, metrics and card go.")


def train_flags(
    model: str | None,
    dataset: str | None,
    output_dir: str | None,
    epochs: float | None,
    max_steps: int | None,
    lr: float | None,
    batch_size: int | None,
    grad_accum: int | None,
    seed: int | None,
    overwrite: bool,
) -> dict[str, Any]:
    return {
        "model.name_or_path": model,
        "data.dataset": dataset,
        "train.output_dir": output_dir,
        "train.epochs": epochs,
        "train.max_steps": max_steps,
        "train.learning_rate": lr,
        "train.batch_size": batch_size,
        "train.gradient_accumulation_steps": grad_accum,
        "train.seed": seed,
        "train.overwrite": True if overwrite else None,
    }


def _resolve_and_run(recipe: str | None, task: str | None, sets: list[str] | None, flags: dict, dry_run: bool) -> None:
    from llmtune.config import load_config

    cfg = load_config(recipe=recipe, task=task, sets=sets, flags=flags)
    if dry_run:
        typer.echo(cfg.to_yaml().rstrip())
        return
    from llmtune.runner import run_train

    run_train(cfg, debug=_state["debug"])


@app.command()
@handle_errors
def finetune(
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task, e.g. sentiment (see `recipes list`)."),
    recipe: Optional[str] = RecipeOpt,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Hub id or local model folder."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", "-d", help="Hub name, csv/tsv/jsonl/parquet file or folder."
    ),
    output_dir: Optional[str] = OutputOpt,
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Training epochs."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps (overrides --epochs)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Per-device training batch size."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Gradient accumulation steps."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output dir."),
    sets: Optional[list[str]] = SetOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
) -> None:
    """Fine-tune a pretrained model on a task (sentiment, text-classification, ...)."""
    if task is None and recipe is None:
        task = "sentiment"
    flags = train_flags(model, dataset, output_dir, epochs, max_steps, lr, batch_size, grad_accum, seed, overwrite)
    _resolve_and_run(recipe, task, sets, flags, dry_run)


@app.command("eval")
@handle_errors
def eval_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Saved model folder (or Hub id)."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task; default: the one the model was trained for."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Data to score (file, folder or Hub name)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to score (default: validation, else test)."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="Default: MODEL/eval."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Evaluation batch size."),
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Score a saved model: metrics table, metrics.json and predictions.jsonl."""
    from llmtune.config import CONFIG_FILENAME, apply_override, build_config, parse_set_overrides, read_yaml

    tree: dict[str, Any] = {}
    saved = Path(model) / CONFIG_FILENAME
    if saved.is_file():
        # Reuse how the model was trained (columns, max length, task options).
        old = read_yaml(saved)
        tree = {k: old[k] for k in ("task", "data", "options") if k in old}
        for key in ("dataset", "config_name", "eval_split", "test_split", "max_train_samples", "max_eval_samples"):
            tree.get("data", {}).pop(key, None)
    if task is not None:
        if tree.get("task") and tree["task"] != task:
            tree.pop("options", None)
        tree["task"] = task
    if "task" not in tree:
        fail(f"cannot tell which task {model} was trained for: pass --task")
    for key, value in parse_set_overrides(sets):
        apply_override(tree, key, value)
    for key, value in {
        "data.dataset": dataset,
        "train.output_dir": output_dir,
        "train.eval_batch_size": batch_size,
    }.items():
        if value is not None:
            apply_override(tree, key, value)
    if not tree.get("data", {}).get("dataset"):
        fail("no dataset to evaluate on: pass --dataset")
    cfg = build_config(tree, source=str(saved) if saved.is_file() else None)
    from llmtune.runner import run_eval

    run_eval(cfg, model, split, debug=_state["debug"])


# ---------------------------------------------------------------------------------------------
# recipes


@recipes_app.command("list")
@handle_errors
def recipes_list() -> None:
    """List shipped recipes."""
    from llmtune.recipes import list_recipes, recipe_description

    rows = list_recipes()
    width = max((len(name) for name, _ in rows), default=10)
    for name, path in rows:
        typer.echo(f"{name:<{width}}  {recipe_description(path)}")


@recipes_app.command("show")
@handle_errors
def recipes_show(name: str = typer.Argument(..., help="Recipe name or path.")) -> None:
    """Print a recipe's YAML."""
    from llmtune.recipes import find_recipe

    typer.echo(find_recipe(name).read_text(encoding="utf-8").rstrip())


@recipes_app.command("copy")
@handle_errors
def recipes_copy(
    name: str = typer.Argument(..., help="Recipe name."),
    dest: str = typer.Argument(..., help="Destination file or folder."),
) -> None:
    """Copy a shipped recipe to edit it."""
    from llmtune.recipes import copy_recipe

    typer.echo(f"copied to {copy_recipe(name, dest)}")


@recipes_app.command("validate")
@handle_errors
def recipes_validate(
    files: list[str] = typer.Argument(..., help="Recipe files or names."),
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Check recipes: unknown keys, types and cross-field problems, all reported at once."""
    from llmtune.config import load_config
    from llmtune.errors import ConfigError

    bad = 0
    for item in files:
        try:
            load_config(recipe=item, sets=sets)
            typer.echo(f"ok: {item}")
        except ConfigError as exc:
            bad += 1
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    if bad:
        raise typer.Exit(2)


def run() -> None:
    """Console-script entry point: ``--debug`` may appear anywhere on the command line."""
    if "--debug" in sys.argv[1:]:
        sys.argv.remove("--debug")
        _state["debug"] = True
    app()


if __name__ == "__main__":  # pragma: no cover
    run()
