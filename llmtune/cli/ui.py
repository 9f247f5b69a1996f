"""``llmtune ui``: the local web page to launch, watch, compare, inspect and try runs (``ui`` extra)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmtune.cli import _common as c
from llmtune.cli.app import app
from llmtune.cli.serve import LOOPBACK, check_port, run_server


@app.command()
@c.handle_errors
def ui(
    runs_dir: Annotated[
        str, typer.Option("--runs-dir", help="Folder holding the run folders; launched runs go here too.")
    ] = "outputs",
    host: c.Host = "127.0.0.1",
    port: c.Port = 7860,
    token: Annotated[
        Optional[str],
        typer.Option(
            "--token",
            envvar="LLMTUNE_UI_TOKEN",
            help="Require this token (open the page as /?token=TOKEN); needed off loopback (env LLMTUNE_UI_TOKEN).",
        ),
    ] = None,
) -> None:
    """Web page: runs (live status, curves, compare), a run's config, metrics, card and predictions, launch/stop/resume, chat and predict."""
    from pathlib import Path

    try:
        import uvicorn  # noqa: F401  (run_server's)

        from llmtune.ui.server import LOOPBACK_NAMES, create_app
    except ImportError:
        c.fail("llmtune ui needs FastAPI and uvicorn: pip install 'llmtune[ui]'")
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        c.fail(
            f"--runs-dir {runs_dir} is not a folder: create it (mkdir -p {runs_dir}) or pass the folder your runs are in"
        )
    if not 0 < port < 65536:
        c.fail(f"--port must be in 1..65535, got {port}")
    if host not in LOOPBACK and not token:
        c.fail(f"--host {host} is not loopback: pass --token TOKEN so only people with it can use the page")
    if token is not None and len(token) < 8:
        c.fail("--token must be at least 8 characters")
    check_port(host, port)
    application = create_app(root, token, LOOPBACK_NAMES if host in LOOPBACK else None)
    shown = "localhost" if host in LOOPBACK else host
    suffix = "/?token=<your token>" if token else "/"
    typer.echo(f"llmtune ui: runs in {root.resolve()} on http://{shown}:{port}{suffix}  (Ctrl-C stops)", err=True)
    run_server(application, host, port)
