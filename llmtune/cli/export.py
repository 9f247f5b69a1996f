"""``llmtune export``: a trained run as a clean, self-contained model folder (Hub / inference server)."""

from __future__ import annotations

from typing import Annotated

import typer

from llmtune.cli import _common as c
from llmtune.cli.app import app


@app.command("export")
@c.handle_errors
def export_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Run folder written by finetune/pretrain.")],
    output: Annotated[str, typer.Option("--output", "-o", help="New folder for the exported model.")],
    merge: Annotated[
        bool,
        typer.Option(
            "--merge", help="Merge adapters into the base weights (a plain model); default: export the run as saved."
        ),
    ] = False,
    dtype: Annotated[str, typer.Option("--dtype", help="Weights dtype: fp32, bf16 or fp16.")] = "fp32",
    max_shard_size: Annotated[
        str, typer.Option("--max-shard-size", help="Largest safetensors shard, e.g. 2GB or 500MB.")
    ] = "5GB",
    overwrite: c.Overwrite = False,
) -> None:
    """Export a run: merge adapters, cast, save safetensors shards with tokenizer, model card and config."""
    from llmtune.export import export_model

    export_model(model, output, merge=merge, dtype=dtype, max_shard_size=max_shard_size, overwrite=overwrite)
