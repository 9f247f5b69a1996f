"""``llmtune serve``: an OpenAI-compatible HTTP endpoint for a model (FastAPI + uvicorn)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmtune.cli import _common as c
from llmtune.cli.app import app

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_port(host: str, port: int) -> None:
    """One line instead of uvicorn's traceback when the address is taken."""
    import socket

    from llmtune.errors import LlmtuneError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise LlmtuneError(
                f"cannot listen on {host}:{port} (--port): {exc.strerror or exc}; stop the other server or pick another --port"
            ) from None


@app.command()
@c.handle_errors
@c.option_groups
def serve(
    model: c.InferModel = None,
    task: c.InferTask = None,
    host: c.Host = "127.0.0.1",
    port: c.Port = 8000,
    api_key: Annotated[
        Optional[str],
        typer.Option(
            "--api-key", envvar="LLMTUNE_API_KEY", help="Require 'Authorization: Bearer KEY' (env LLMTUNE_API_KEY)."
        ),
    ] = None,
    served_name: Annotated[
        Optional[str], typer.Option("--served-name", help="Model id clients send (default: the --model folder's name).")
    ] = None,
    max_tokens_limit: Annotated[
        int, typer.Option("--max-tokens-limit", help="Most new tokens a request may ask for.")
    ] = 2048,
    max_new_tokens: c.MaxNewTokens = None,  # a Sampling option, declared here for its place in --help
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", help="Largest request body accepted (413 above).")
    ] = 1_000_000,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Batch size for /v1/predict and multi-prompt completions.")
    ] = 8,
    max_batch_size: Annotated[
        int,
        typer.Option(
            "--max-batch-size",
            help="Requests generated together (continuous batching; 1 = one request at a time) "
            "and /v1/predict requests run together.",
        ),
    ] = 8,
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="Requests that may wait for a slot; more get HTTP 429.")
    ] = 64,
    log_requests: Annotated[
        bool,
        typer.Option("--log-requests", help="One line per request on stderr: status, tokens, time to first token."),
    ] = False,
    sampling: c.Sampling = c.Sampling(),
    gguf_file: c.GgufFile = None,
    trust_remote_code: c.TrustRemoteCode = False,
    sets: c.Sets = None,
) -> None:
    """Serve a model over HTTP: /v1/chat/completions, /v1/completions, /v1/models, /v1/predict, /metrics."""
    try:
        import uvicorn  # noqa: F401  (run_server's; checked here for the one-line message)

        from llmtune.inference.server import ServeOptions, create_app
    except ImportError:
        c.fail("llmtune serve needs FastAPI and uvicorn: pip install 'llmtune[serve]'")
    from pathlib import Path

    from llmtune.inference.loader import load_for_inference

    if not model:
        c.fail("no model given: pass --model (an llmtune output folder, a model folder or a Hub id)")
    if not 0 < port < 65536:
        c.fail(f"--port must be in 1..65535, got {port}")
    for flag, value in (
        ("--max-tokens-limit", max_tokens_limit),
        ("--max-body-bytes", max_body_bytes),
        ("--batch-size", batch_size),
        ("--max-batch-size", max_batch_size),
        ("--max-queue", max_queue),
    ):
        if value < 1:
            c.fail(f"{flag} must be >= 1, got {value}")
    defaults = sampling.settings(min(256, max_tokens_limit))
    if defaults.max_new_tokens > max_tokens_limit:
        c.fail(f"--max-new-tokens {defaults.max_new_tokens} exceeds --max-tokens-limit {max_tokens_limit}")
    check_port(host, port)  # before the (slow) model load
    ctx = load_for_inference(
        model,
        task,
        sets,
        gguf_file,
        trust_remote_code,
        generative=True,
        require_generative=False,
        debug=c.debug_enabled(),
    )
    name = served_name or Path(ctx.model_path).name or model
    opts = ServeOptions(
        model_name=name,
        api_key=api_key,
        max_tokens_limit=max_tokens_limit,
        default_max_tokens=defaults.max_new_tokens,
        max_body_bytes=max_body_bytes,
        defaults=defaults,
        batch_size=batch_size,
        max_batch_size=max_batch_size,
        max_queue=max_queue,
        log_requests=log_requests,
    )
    application = create_app(ctx, opts)
    if host not in LOOPBACK and not api_key:
        typer.echo(
            f"warning: serving on {host} without --api-key: anyone who can reach this address can use the model",
            err=True,
        )
    kind = "chat/completions, completions, predict" if ctx.state["task"].generative else "predict"
    typer.echo(
        f"serving '{name}' ({ctx.state['task'].name}: {kind}) on http://{host}:{port}/v1  (Ctrl-C stops)", err=True
    )
    run_server(application, host, port)


def run_server(application: object, host: str, port: int) -> None:
    """uvicorn, quiet unless --debug (then its debug log and access log)."""
    import uvicorn

    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level="debug" if c.debug_enabled() else "warning",
        access_log=c.debug_enabled(),
    )
