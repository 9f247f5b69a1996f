"""``llmtune generate`` (one prompt, streamed) and ``llmtune chat`` (interactive, multi-turn)."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer

from llmtune.cli import _common as c
from llmtune.cli.app import app

CHAT_HELP = "commands: /reset (start over), /exit (or Ctrl-D) to quit; Ctrl-C stops a reply"


def _load(model: str | None, task: str | None, sets: Any, gguf_file: str | None, trust_remote_code: bool) -> Any:
    from llmtune.inference.loader import load_for_inference

    if not model:
        c.fail("no model given: pass --model (an llmtune sft/clm output folder, a model folder, a Hub id or GGUF)")
    return load_for_inference(model, task, sets, gguf_file, trust_remote_code, generative=True, debug=c.debug_enabled())


def _stream(ctx: Any, prompt: str, settings: Any, templated: bool) -> tuple[str, Any]:
    """Print the reply as it is generated; Ctrl-C stops it (the text so far is kept)."""
    from llmtune.inference.generation import TextStream, max_prompt_tokens

    limit = max_prompt_tokens(ctx.model, ctx.tokenizer, settings.max_new_tokens)
    reply, stream = "", None
    try:  # Ctrl-C may come before the first token too
        stream = TextStream(
            ctx.model, ctx.tokenizer, prompt, settings, add_special_tokens=not templated, max_input_tokens=limit
        )
        for piece in stream:
            if not reply:
                piece = piece.lstrip()  # the answer starts at its first visible character
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        if stream is not None:
            stream.close()
            stream.finish_reason = "interrupted"
        sys.stdout.write(" [stopped]")
    sys.stdout.write("\n")
    sys.stdout.flush()
    return reply, stream


@app.command()
@c.handle_errors
@c.option_groups
def generate(
    prompt: Annotated[Optional[str], typer.Argument(help="The prompt (- reads it from stdin).")] = None,
    model: c.InferModel = None,
    task: c.InferTask = None,
    system: c.System = None,
    raw: Annotated[bool, typer.Option("--raw", help="Plain continuation of the prompt even for chat models.")] = False,
    sampling: c.Sampling = c.Sampling(),
    gguf_file: c.GgufFile = None,
    trust_remote_code: c.TrustRemoteCode = False,
    sets: c.Sets = None,
) -> None:
    """Generate text for one prompt, streamed to the terminal as it is produced."""
    from llmtune.inference.generation import chat_prompt, has_chat_template

    settings = sampling.settings()
    if prompt is None:
        c.fail('no prompt given: llmtune generate --model DIR "your prompt" (or - to read it from stdin)')
    if prompt == "-":
        prompt = sys.stdin.read()
    ctx = _load(model, task, sets, gguf_file, trust_remote_code)
    templated = has_chat_template(ctx.tokenizer) and not raw
    if templated:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = chat_prompt(ctx.tokenizer, messages)
    else:
        if system:
            typer.echo("note: --system needs a chat template; this is a plain continuation, so it is ignored", err=True)
        text = prompt
    _, stream = _stream(ctx, text, settings, templated)
    if stream is not None:
        typer.echo(f"[{stream.new_tokens} tokens, finish: {stream.finish_reason}]", err=True)


@app.command()
@c.handle_errors
@c.option_groups
def chat(
    model: c.InferModel = None,
    task: c.InferTask = None,
    system: c.System = None,
    sampling: c.Sampling = c.Sampling(),
    gguf_file: c.GgufFile = None,
    trust_remote_code: c.TrustRemoteCode = False,
    sets: c.Sets = None,
) -> None:
    """Chat with a model in the terminal: multi-turn, streamed replies, /reset and /exit."""
    from llmtune.inference.generation import chat_prompt, fit_conversation, has_chat_template, max_prompt_tokens

    settings = sampling.settings()
    ctx = _load(model, task, sets, gguf_file, trust_remote_code)
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    templated = has_chat_template(ctx.tokenizer)
    if not templated:
        typer.echo(
            f"note: {model} has no chat template: falling back to plain continuation of the conversation text", err=True
        )
        if system:
            typer.echo("note: --system needs a chat template: ignored", err=True)
    start = [{"role": "system", "content": system}] if system and templated else []
    messages, transcript = list(start), ""
    limit = max_prompt_tokens(ctx.model, ctx.tokenizer, settings.max_new_tokens)
    typer.echo(f"chatting with {model} ({CHAT_HELP})", err=True)
    while True:
        try:
            line = input(">>> ")
        except (EOFError, KeyboardInterrupt):  # Ctrl-D / Ctrl-C at the prompt: leave quietly
            sys.stdout.write("\n")
            break
        command = line.strip()
        if not command:
            continue
        if command in ("/exit", "/quit", "/bye"):
            break
        if command == "/reset":
            messages, transcript = list(start), ""
            typer.echo("(conversation cleared)", err=True)
            continue
        if command.startswith("/") and command.split()[0] in ("/help", "/?"):
            typer.echo(CHAT_HELP, err=True)
            continue
        if templated:
            messages = fit_conversation(ctx.tokenizer, [*messages, {"role": "user", "content": line}], limit)
            prompt = chat_prompt(ctx.tokenizer, messages)
        else:
            transcript = f"{transcript}\n{line}" if transcript else line
            prompt = transcript
        reply, _ = _stream(ctx, prompt, settings, templated)
        if templated:
            messages.append({"role": "assistant", "content": reply})
        else:
            transcript += reply
    typer.echo("bye", err=True)
