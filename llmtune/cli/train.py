"""``llmtune finetune``, ``llmtune pretrain`` and ``llmtune tokenizer train``."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from llmtune.cli import _common as c
from llmtune.cli.app import app
from llmtune.launch import launchable
from llmtune.raylaunch import ray_launchable

tokenizer_app = typer.Typer(help="Train sub-word tokenizers.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")


def resolve_and_run(
    recipe: str | None,
    task: str | None,
    sets: list[str] | None,
    flags: dict,
    dry_run: bool,
    launch: Any = None,
    task_flag: str = "--task",
    ray_launch: Any = None,
) -> None:
    from llmtune.resolve import load_config

    resources = None
    if ray_launch is not None:
        from llmtune.raylaunch import check_options as check_ray_options

        resources = check_ray_options(ray_launch, launch)  # flags first: before any config work
    cfg = load_config(recipe=recipe, task=task, sets=sets, flags=flags, task_flag=task_flag)
    if dry_run:
        from llmtune.recipes import recipe_defaults_note, task_defaults_note

        typer.echo(cfg.to_yaml().rstrip())
        for note in (recipe_defaults_note(cfg), task_defaults_note(cfg)):
            if note:
                typer.echo("# " + note)  # a YAML comment: the output stays a valid recipe
        return
    if ray_launch is not None and ray_launch.requested:
        from llmtune.raylaunch import run_on_ray

        run_on_ray(cfg, ray_launch, resources, debug=c.debug_enabled())
        return
    if launch is not None:
        from llmtune.launch import check_options, relaunch

        check_options(launch)
        if launch.requested:
            from llmtune.runner import precheck_train

            # Refuse bad output dirs / --resume before starting N workers. Over several machines the
            # workers check them together (every machine then reports the problem of any of them).
            precheck_train(cfg, files=(launch.num_machines or 1) == 1)
            raise typer.Exit(relaunch(launch))
    from llmtune.runner import run_train

    run_train(cfg, debug=c.debug_enabled())


@app.command()
@c.handle_errors
@ray_launchable
@launchable
@c.option_groups
def finetune(
    task: c.Task = None,
    recipe: c.Recipe = None,
    train: c.TrainOptions = c.TrainOptions(),
    gguf_file: c.GgufFile = None,
    sets: c.Sets = None,
    dry_run: c.DryRun = False,
    launch: Any = None,
    ray_launch: Any = None,
) -> None:
    """Fine-tune a pretrained model on a task (sentiment, text-classification, ...)."""
    if task is None and recipe is None:
        task = "sentiment"
    flags = {**train.flags(), "model.gguf_file": gguf_file}
    resolve_and_run(recipe, task, sets, flags, dry_run, launch, ray_launch=ray_launch)


@app.command()
@c.handle_errors
@ray_launchable
@launchable
@c.option_groups
def pretrain(
    objective: Annotated[
        Optional[str],
        typer.Option("--objective", help="clm (causal, GPT-style) or mlm (masked, BERT-style); default: the recipe's."),
    ] = None,
    recipe: c.Recipe = None,
    model: Annotated[  # a TrainOptions option, declared here for pretrain's help text (the value goes to `train`)
        Optional[str], typer.Option("--model", "-m", help="Continue pretraining this Hub id or folder.")
    ] = None,
    model_config: Annotated[
        Optional[str],
        typer.Option(
            "--model-config", help="From scratch: a size preset (gpt2-small, bert-mini...), config.json or Hub config."
        ),
    ] = None,
    tokenizer: Annotated[
        Optional[str], typer.Option("--tokenizer", help="Tokenizer folder (required from scratch).")
    ] = None,
    train: c.TrainOptions = c.TrainOptions(),  # --dataset ... --seed here; --model and the switches below
    block_size: Annotated[Optional[int], typer.Option("--block-size", help="Tokens per packed block.")] = None,
    streaming: Annotated[
        bool, typer.Option("--streaming", help="Stream the dataset (IterableDataset) end to end.")
    ] = False,
    # TrainOptions options, declared here to stay after --block-size and --streaming in --help
    overwrite: c.Overwrite = False,
    resume: c.Resume = None,
    trust_remote_code: c.TrustRemoteCode = False,
    lora: c.Lora = False,
    quiet: c.Quiet = False,
    sets: c.Sets = None,
    dry_run: c.DryRun = False,
    launch: Any = None,
    ray_launch: Any = None,
) -> None:
    """Pretrain a language model (clm or mlm), from scratch or continued from a checkpoint."""
    from llmtune.config import read_yaml
    from llmtune.recipes import find_recipe
    from llmtune.tasks import get_task

    if objective is not None and objective not in ("clm", "mlm"):
        c.fail(f"--objective must be clm or mlm, got '{objective}'")
    if recipe is not None and objective is None:
        recipe_task = read_yaml(find_recipe(recipe)).get("task")
        if recipe_task is None or get_task(str(recipe_task)).family != "lm":
            c.fail(f"recipe '{recipe}' is not a pretraining recipe (task: {recipe_task}): use finetune, or --objective")
    if objective is None and recipe is None:
        c.fail("pass --objective clm|mlm or a pretraining --recipe (e.g. clm-smoke)")
    flags = {
        **train.flags(),
        "model.config": model_config,
        "model.tokenizer": tokenizer,
        "options.block_size": block_size,
        "data.streaming": True if streaming else None,
    }
    resolve_and_run(recipe, objective, sets, flags, dry_run, launch, task_flag="--objective", ray_launch=ray_launch)


@tokenizer_app.command("train")
@c.handle_errors
def tokenizer_train(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Hub name, txt/jsonl/csv/parquet file or folder.")],
    output_dir: Annotated[str, typer.Option("--output-dir", "-o", help="Folder for the tokenizer files.")],
    objective: Annotated[str, typer.Option("--objective", help="clm or mlm: decides the special tokens.")] = "clm",
    type_: Annotated[
        Optional[str],
        typer.Option("--type", help="bpe (byte-level), wordpiece or unigram; default: bpe for clm, wordpiece for mlm."),
    ] = None,
    vocab_size: Annotated[
        int, typer.Option("--vocab-size", help="Vocabulary size, special tokens included (>= 300 for bpe, else >= 50).")
    ] = 32_000,
    min_frequency: Annotated[
        int, typer.Option("--min-frequency", help="Minimum count for a merge / word piece (>= 1).")
    ] = 2,
    text_column: Annotated[Optional[str], typer.Option("--text-column", help="Column holding the text.")] = None,
    config_name: Annotated[Optional[str], typer.Option("--config-name", help="Hub dataset configuration.")] = None,
    max_samples: Annotated[Optional[int], typer.Option("--max-samples", help="Train on the first N rows only.")] = None,
    lowercase: Annotated[bool, typer.Option("--lowercase", help="Lowercase text before tokenizing.")] = False,
    model_max_length: Annotated[
        Optional[int], typer.Option("--model-max-length", help="Saved model_max_length.")
    ] = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Train a fast tokenizer (tokenizers library) loadable with AutoTokenizer.from_pretrained(DIR)."""
    from llmtune.modeling import prepare_hub_access
    from llmtune.tokenizer_train import DEFAULT_TYPE, TokenizerSpec, train_and_save

    spec = TokenizerSpec(
        type=type_ or DEFAULT_TYPE.get(objective, "bpe"),
        vocab_size=vocab_size,
        objective=objective,
        min_frequency=min_frequency,
        lowercase=lowercase,
        model_max_length=model_max_length,
        max_samples=max_samples,
    )
    spec.check()  # every flag's range, before any data is read
    prepare_hub_access(dataset)
    tok = train_and_save(dataset, output_dir, spec, text_column, config_name, overwrite=overwrite)
    specials = ", ".join(tok.all_special_tokens)
    typer.echo(f"{spec.type} tokenizer ({len(tok)} tokens; special: {specials}) saved to {output_dir}")
