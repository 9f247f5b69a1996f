"""``llmtune report``: compare runs (finished, running or killed) in a table and one PNG."""

from __future__ import annotations

from typing import Annotated

import typer

from llmtune.cli import _common as c
from llmtune.cli.app import app


@app.command()
@c.handle_errors
def report(
    run_dirs: Annotated[list[str], typer.Argument(help="Run output folders (each holds llmtune_config.yaml).")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="PNG overlaying the runs' curves.")
    ] = "llmtune_report.png",
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Print the table only.")] = False,
) -> None:
    """Runs side by side: task, model, data, hyperparameters, best and final metrics, wall time, throughput."""
    from llmtune.report import load_runs, plot, render_table

    if not no_plot and not output.lower().endswith(".png"):
        c.fail(f"--output {output}: the curves are a PNG file, e.g. --output runs.png")
    runs = load_runs(run_dirs)
    typer.echo(render_table(runs))
    if not no_plot:
        path = plot(runs, output)
        typer.echo(f"\ncurves of {len(runs)} run{'s' if len(runs) != 1 else ''}: {path}")
