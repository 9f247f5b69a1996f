"""The ``llmtune`` command line: parse, resolve the config, dispatch.

One module per command group, all registering on :data:`llmtune.cli.app.app`; shared option
definitions and the error contract live in :mod:`llmtune.cli._common`. Kept thin and lazy: torch,
transformers and datasets are imported inside command bodies, so ``llmtune --help`` is instant.
"""

from __future__ import annotations

import sys

from llmtune.cli import (  # noqa: F401  (register their commands)
    estimate,
    evaluate,
    export,
    generate,
    predict,
    recipes,
    report,
    serve,
    train,
    ui,
)
from llmtune.cli._common import enable_debug, fail, handle_errors
from llmtune.cli.app import app

__all__ = ["app", "fail", "handle_errors", "run"]


def run() -> None:
    """Console-script entry point: ``--debug`` may appear anywhere on the command line."""
    from llmtune.launch import tie_to_launcher

    tie_to_launcher()  # a worker of llmtune's launcher: gone with it
    if "--debug" in sys.argv[1:]:
        sys.argv.remove("--debug")
        enable_debug()
    app()
