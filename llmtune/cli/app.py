"""The root Typer application; command modules register themselves on it."""

from __future__ import annotations

import typer

from llmtune import __version__
from llmtune.cli._common import enable_debug

app = typer.Typer(
    name="llmtune",
    help="Pretrain, fine-tune and evaluate transformer language models on the Hugging Face stack.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
        enable_debug()
