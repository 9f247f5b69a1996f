"""``llmtune predict``: batch inference for every task, one JSON line per input row."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmtune.cli import _common as c
from llmtune.cli.app import app


@app.command()
@c.handle_errors
def predict(
    model: c.InferModel = None,
    input_: Annotated[
        Optional[str],
        typer.Option(
            "--input", "-i", help="csv/tsv/jsonl/json/parquet/txt file (txt: one example per line), or - for stdin."
        ),
    ] = None,
    output: Annotated[
        Optional[str], typer.Option("--output", "-o", help="JSON-lines file to write (default: stdout).")
    ] = None,
    input_format: Annotated[
        Optional[str],
        typer.Option(
            "--input-format",
            help="csv, tsv, jsonl, json, parquet or txt (default: from the extension; stdin: jsonl or txt).",
        ),
    ] = None,
    task: c.InferTask = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per forward pass (sorted by length).")] = 32,
    all_scores: Annotated[bool, typer.Option("--all-scores", help="Classification: every label's score.")] = False,
    threshold: Annotated[
        Optional[float],
        typer.Option("--threshold", help="Multi-label classification: probability threshold in (0, 1)."),
    ] = None,
    max_new_tokens: c.MaxNewTokens = None,
    gguf_file: c.GgufFile = None,
    trust_remote_code: c.TrustRemoteCode = False,
    sets: c.Sets = None,
) -> None:
    """Predict on new rows: labels + scores, entities, answers or generated text per row."""
    import json
    import os
    import sys
    import time
    from pathlib import Path

    from llmtune.inference.inputs import columns_of, read_rows
    from llmtune.inference.loader import check_weights, load_for_inference
    from llmtune.inference.predict import PredictSettings, predict_rows, prepare
    from llmtune.modeling import model_location

    if not model:
        c.fail("no model given: pass --model (an llmtune output folder, a model folder or a Hub id)")
    if batch_size < 1:
        c.fail(f"--batch-size must be >= 1, got {batch_size}")
    if threshold is not None and not 0 < threshold < 1:
        c.fail(f"--threshold must be between 0 and 1, got {threshold}")
    if max_new_tokens is not None and max_new_tokens < 1:
        c.fail(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    check_weights(model_location(model), gguf_file)  # a missing model fails before the input is read
    rows, source = read_rows(input_, input_format)
    ctx = load_for_inference(model, task, sets, gguf_file, trust_remote_code, debug=c.debug_enabled())
    prepare(ctx, columns_of(rows))
    settings = PredictSettings(
        batch_size=batch_size, all_scores=all_scores, threshold=threshold, max_new_tokens=max_new_tokens
    )

    from tqdm.auto import tqdm

    started = time.perf_counter()
    with tqdm(total=len(rows), desc="predicting", unit="row", file=sys.stderr, disable=None, leave=False) as bar:
        records = predict_rows(ctx, rows, settings, progress=bar.update)
    seconds = time.perf_counter() - started
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if output:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(lines, encoding="utf-8")
        os.replace(tmp, path)  # an earlier file is replaced only by a complete one
    else:
        sys.stdout.write(lines)
        sys.stdout.flush()
    where = f" -> {output}" if output else ""
    typer.echo(
        f"predicted {len(records)} rows from {source} in {seconds:.1f}s ({len(records) / max(seconds, 1e-9):.1f} rows/s){where}",
        err=True,
    )
