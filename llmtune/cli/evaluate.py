"""``llmtune eval``: score a saved model on labelled data, or on standard benchmarks (``--benchmark``,
through lm-evaluation-harness: :mod:`llmtune.harness`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmtune.cli import _common as c
from llmtune.cli.app import app


@app.command("eval")
@c.handle_errors
def eval_cmd(
    model: c.ModelRequired,
    task: Annotated[
        Optional[str], typer.Option("--task", "-t", help="Task; default: the one the model was trained for.")
    ] = None,
    dataset: Annotated[
        Optional[str], typer.Option("--dataset", "-d", help="Data to score (file, folder or Hub name).")
    ] = None,
    split: Annotated[
        Optional[str], typer.Option("--split", help="Split to score (default: validation, else test).")
    ] = None,
    output_dir: Annotated[Optional[str], typer.Option("--output-dir", "-o", help="Default: MODEL/eval.")] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--batch-size", help="Evaluation batch size (>= 1; default: sized to the model's vocabulary for LMs)."
        ),
    ] = None,
    gguf_file: c.GgufFile = None,
    trust_remote_code: c.TrustRemoteCode = False,
    quiet: c.Quiet = False,
    sets: c.Sets = None,
    benchmark: Annotated[
        Optional[str],
        typer.Option(
            "--benchmark",
            "-b",
            help="Standard benchmarks through lm-evaluation-harness instead of a task's data, comma-separated: "
            "hellaswag,arc_easy,arc_challenge,piqa,winogrande,mmlu or any lm-eval task (needs the 'bench' extra).",
        ),
    ] = None,
    benchmark_data: Annotated[
        Optional[str],
        typer.Option(
            "--benchmark-data",
            help="Offline: folder of local benchmark files in the Hub schemas (arc_easy_validation.jsonl, ...; "
            "README: Benchmarks). Default: the harness's Hub datasets.",
        ),
    ] = None,
    num_fewshot: Annotated[
        Optional[int], typer.Option("--num-fewshot", help="Few-shot examples per prompt (default: the task's, 0).")
    ] = None,
    limit: Annotated[
        Optional[float],
        typer.Option("--limit", help="Score only this many rows per benchmark task (or a fraction, below 1)."),
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option("--seed", help="Seed of the harness's samplers (default: the harness's, 0 / 1234)."),
    ] = None,
    chat_template: Annotated[
        bool,
        typer.Option(
            "--chat-template", help="Wrap benchmark prompts in the model's chat template (off, as in the harness)."
        ),
    ] = False,
) -> None:
    """Score a saved model: metrics table, metrics.json and predictions.jsonl.

    With --benchmark: standard LLM benchmarks (acc, acc_norm, standard errors) through EleutherAI's
    lm-evaluation-harness, for any causal LM llmtune trains or loads."""
    if benchmark is not None:
        for name, value in (("--task", task), ("--dataset", dataset), ("--split", split)):
            if value is not None:
                c.fail(f"{name} does not apply with --benchmark (benchmarks bring their own data): drop {name}")
        from llmtune.harness import BenchmarkSettings, evaluate_model

        settings = BenchmarkSettings(
            benchmarks=tuple(b.strip() for b in benchmark.split(",")),
            data_dir=benchmark_data,
            num_fewshot=num_fewshot,
            limit=limit,
            batch_size=batch_size,
            seed=seed,
            chat_template=chat_template,
        )
        evaluate_model(model, settings, output_dir, gguf_file, trust_remote_code, sets, quiet, c.debug_enabled())
        return
    given = [
        n
        for n, v in (
            ("--benchmark-data", benchmark_data),
            ("--num-fewshot", num_fewshot),
            ("--limit", limit),
            ("--seed", seed),
        )
        if v is not None
    ]
    if chat_template:
        given.append("--chat-template")
    if given:
        c.fail(f"{given[0]} only applies with --benchmark: add --benchmark NAMES, or drop {given[0]}")
    from llmtune.config import CONFIG_FILENAME, FLAG_NAMES, file_origins, merge_overrides
    from llmtune.inference.loader import saved_tree
    from llmtune.modeling import check_folder, model_location
    from llmtune.resolve import build_config

    model = model_location(model)  # a missing folder fails here, naming --model
    # A folder that is not a model (empty, a data folder) says so before anything else.
    check_folder(model, model, ("config",))
    saved = Path(model) / CONFIG_FILENAME
    tree: dict[str, Any] = saved_tree(model)  # how the model was trained: columns, max length, options
    origins: dict[str, tuple[str, str]] = file_origins(tree, str(saved)) if tree else {}
    if task is not None:
        if tree.get("task") and tree["task"] != task:
            tree.pop("options", None)
        tree["task"] = task
        origins["task"] = ("flag", "--task")
    if "task" not in tree:
        c.fail(f"cannot tell which task {model} was trained for (it has no {CONFIG_FILENAME}): pass --task")
    flags = {
        "data.dataset": dataset,
        "train.output_dir": output_dir,
        "train.eval_batch_size": batch_size,
        "train.progress": "quiet" if quiet else None,
        "model.gguf_file": gguf_file,
        "model.trust_remote_code": True if trust_remote_code else None,
    }
    names = {"data.dataset": "--dataset", "train.output_dir": "--output-dir", "train.eval_batch_size": "--batch-size"}
    merge_overrides(tree, origins, sets, flags, {**FLAG_NAMES, **names})
    if not tree.get("data", {}).get("dataset"):
        c.fail("no dataset to evaluate on: pass --dataset")
    cfg = build_config(tree, source=str(saved) if saved.is_file() else None, origins=origins)
    from llmtune.runner import run_eval

    run_eval(cfg, model, split, debug=c.debug_enabled())
