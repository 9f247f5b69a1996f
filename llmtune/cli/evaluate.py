"""``llmtune eval``: score a saved model on labelled data."""

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
        typer.Option("--batch-size", help="Evaluation batch size (default: sized to the model's vocabulary for LMs)."),
    ] = None,
    gguf_file: c.GgufFile = None,
    trust_remote_code: c.TrustRemoteCode = False,
    quiet: c.Quiet = False,
    sets: c.Sets = None,
) -> None:
    """Score a saved model: metrics table, metrics.json and predictions.jsonl."""
    from llmtune.config import CONFIG_FILENAME, apply_override, build_config, parse_set_overrides
    from llmtune.inference.loader import saved_tree
    from llmtune.modeling import model_location

    model = model_location(model)  # a missing folder fails here, naming --model
    saved = Path(model) / CONFIG_FILENAME
    tree: dict[str, Any] = saved_tree(model)  # how the model was trained: columns, max length, options
    if task is not None:
        if tree.get("task") and tree["task"] != task:
            tree.pop("options", None)
        tree["task"] = task
    if "task" not in tree:
        c.fail(f"cannot tell which task {model} was trained for: pass --task")
    for key, value in parse_set_overrides(sets):
        apply_override(tree, key, value)
    for key, value in {
        "data.dataset": dataset,
        "train.output_dir": output_dir,
        "train.eval_batch_size": batch_size,
        "train.progress": "quiet" if quiet else None,
        "model.gguf_file": gguf_file,
        "model.trust_remote_code": True if trust_remote_code else None,
    }.items():
        if value is not None:
            apply_override(tree, key, value)
    if not tree.get("data", {}).get("dataset"):
        c.fail("no dataset to evaluate on: pass --dataset")
    cfg = build_config(tree, source=str(saved) if saved.is_file() else None)
    from llmtune.runner import run_eval

    run_eval(cfg, model, split, debug=c.debug_enabled())
