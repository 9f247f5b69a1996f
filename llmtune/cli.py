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
from llmtune.launch import launchable

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
tokenizer_app = typer.Typer(help="Train sub-word tokenizers.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")

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
            from llmtune.launch import is_quiet_rank, report_exit_code

            report_exit_code(exc.exit_code)
            if is_quiet_rank():  # in a launched run every worker hits the same error: rank 0 says it
                raise typer.Exit(exc.exit_code) from None
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except BrokenPipeError:
            # Output piped into e.g. `head`: stop quietly, like other Unix tools.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except Exception as exc:
            if _state["debug"]:
                raise
            from llmtune.launch import is_quiet_rank

            if is_quiet_rank():  # usually the echo of rank 0's failure (a closed connection)
                raise typer.Exit(1) from None
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
        os.environ["LLMTUNE_DEBUG"] = "1"  # launched workers inherit it


# ---------------------------------------------------------------------------------------------
# shared option groups

SetOpt = typer.Option(None, "--set", help="Override any config key: --set train.warmup_ratio=0.1 (repeatable).")
RecipeOpt = typer.Option(None, "--recipe", "-r", help="Recipe name (see `llmtune recipes list`) or YAML path.")
OutputOpt = typer.Option(None, "--output-dir", "-o", help="Where model, config, metrics and card go.")
ResumeOpt = typer.Option(
    None,
    "--resume",
    help="Continue a stopped run: 'auto' (newest complete checkpoint in --output-dir) or a checkpoint.",
)
TrustRemoteCodeOpt = typer.Option(
    False, "--trust-remote-code", help="Allow model/tokenizer code from the model folder or Hub repo to run."
)


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
    resume: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    return {
        "train.resume": resume,
        "model.trust_remote_code": True if trust_remote_code else None,
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


def _resolve_and_run(
    recipe: str | None, task: str | None, sets: list[str] | None, flags: dict, dry_run: bool, launch: Any = None
) -> None:
    from llmtune.config import load_config

    cfg = load_config(recipe=recipe, task=task, sets=sets, flags=flags)
    if dry_run:
        typer.echo(cfg.to_yaml().rstrip())
        return
    if launch is not None:
        from llmtune.launch import check_options, relaunch

        check_options(launch)
        if launch.requested:
            from llmtune.runner import precheck_train

            precheck_train(cfg)  # refuse bad output dirs / --resume before starting N workers
            raise typer.Exit(relaunch(launch))
    from llmtune.runner import run_train

    run_train(cfg, debug=_state["debug"])


@app.command()
@handle_errors
@launchable
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
    resume: Optional[str] = ResumeOpt,
    trust_remote_code: bool = TrustRemoteCodeOpt,
    sets: Optional[list[str]] = SetOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
    launch: Any = None,
) -> None:
    """Fine-tune a pretrained model on a task (sentiment, text-classification, ...)."""
    if task is None and recipe is None:
        task = "sentiment"
    flags = train_flags(
        model,
        dataset,
        output_dir,
        epochs,
        max_steps,
        lr,
        batch_size,
        grad_accum,
        seed,
        overwrite,
        resume,
        trust_remote_code,
    )
    _resolve_and_run(recipe, task, sets, flags, dry_run, launch)


@app.command()
@handle_errors
@launchable
def pretrain(
    objective: Optional[str] = typer.Option(
        None, "--objective", help="clm (causal, GPT-style) or mlm (masked, BERT-style); default: the recipe's."
    ),
    recipe: Optional[str] = RecipeOpt,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Continue pretraining this Hub id or folder."),
    model_config: Optional[str] = typer.Option(
        None,
        "--model-config",
        help="From scratch: a size preset (gpt2-small, bert-mini...), config.json or Hub config.",
    ),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer folder (required from scratch)."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", "-d", help="Hub name, txt/jsonl/csv/parquet file or folder."
    ),
    output_dir: Optional[str] = OutputOpt,
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Training epochs."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps (needed with --streaming)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Per-device batch size (blocks)."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Gradient accumulation steps."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="Tokens per packed block."),
    streaming: bool = typer.Option(False, "--streaming", help="Stream the dataset (IterableDataset) end to end."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output dir."),
    resume: Optional[str] = ResumeOpt,
    trust_remote_code: bool = TrustRemoteCodeOpt,
    sets: Optional[list[str]] = SetOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
    launch: Any = None,
) -> None:
    """Pretrain a language model (clm or mlm), from scratch or continued from a checkpoint."""
    from llmtune.config import read_yaml
    from llmtune.recipes import find_recipe
    from llmtune.tasks import get_task

    if objective is not None and objective not in ("clm", "mlm"):
        fail(f"--objective must be clm or mlm, got '{objective}'")
    if recipe is not None and objective is None:
        recipe_task = read_yaml(find_recipe(recipe)).get("task")
        if recipe_task is None or get_task(str(recipe_task)).family != "lm":
            fail(f"recipe '{recipe}' is not a pretraining recipe (task: {recipe_task}): use finetune, or --objective")
    if objective is None and recipe is None:
        fail("pass --objective clm|mlm or a pretraining --recipe (e.g. clm-smoke)")
    flags = train_flags(
        model=model,
        dataset=dataset,
        output_dir=output_dir,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        seed=seed,
        overwrite=overwrite,
        resume=resume,
        trust_remote_code=trust_remote_code,
    )
    flags.update(
        {
            "model.config": model_config,
            "model.tokenizer": tokenizer,
            "options.block_size": block_size,
            "data.streaming": True if streaming else None,
        }
    )
    _resolve_and_run(recipe, objective, sets, flags, dry_run, launch)


@tokenizer_app.command("train")
@handle_errors
def tokenizer_train(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Hub name, txt/jsonl/csv/parquet file or folder."),
    output_dir: str = typer.Option(..., "--output-dir", "-o", help="Folder for the tokenizer files."),
    objective: str = typer.Option("clm", "--objective", help="clm or mlm: decides the special tokens."),
    type_: Optional[str] = typer.Option(
        None, "--type", help="bpe (byte-level), wordpiece or unigram; default: bpe for clm, wordpiece for mlm."
    ),
    vocab_size: int = typer.Option(32_000, "--vocab-size", help="Vocabulary size, special tokens included."),
    min_frequency: int = typer.Option(2, "--min-frequency", help="Minimum count for a merge / word piece."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="Column holding the text."),
    config_name: Optional[str] = typer.Option(None, "--config-name", help="Hub dataset configuration."),
    max_samples: Optional[int] = typer.Option(None, "--max-samples", help="Train on the first N rows only."),
    lowercase: bool = typer.Option(False, "--lowercase", help="Lowercase text before tokenizing."),
    model_max_length: Optional[int] = typer.Option(None, "--model-max-length", help="Saved model_max_length."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output dir."),
) -> None:
    """Train a fast tokenizer (tokenizers library) loadable with AutoTokenizer.from_pretrained(DIR)."""
    from llmtune.modeling import prepare_hub_access
    from llmtune.tokenizer_train import DEFAULT_TYPE, TokenizerSpec, train_and_save

    if objective not in DEFAULT_TYPE:
        fail(f"--objective must be clm or mlm, got '{objective}'")
    spec = TokenizerSpec(
        type=type_ or DEFAULT_TYPE[objective],
        vocab_size=vocab_size,
        objective=objective,
        min_frequency=min_frequency,
        lowercase=lowercase,
        model_max_length=model_max_length,
    )
    prepare_hub_access(dataset)
    tok = train_and_save(dataset, output_dir, spec, text_column, config_name, max_samples, overwrite)
    specials = ", ".join(tok.all_special_tokens)
    typer.echo(f"{spec.type} tokenizer ({len(tok)} tokens; special: {specials}) saved to {output_dir}")


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
    from llmtune.modeling import model_location

    model = model_location(model)  # a missing folder fails here, naming --model
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
        os.environ["LLMTUNE_DEBUG"] = "1"
    app()


if __name__ == "__main__":  # pragma: no cover
    run()
