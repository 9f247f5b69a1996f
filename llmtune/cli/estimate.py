"""``llmtune estimate``: parameters, memory per GPU and compute of a run, before it starts."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmtune.cli import _common as c
from llmtune.cli.app import app


@app.command()
@c.handle_errors
def estimate(
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="Hub id or model folder (reads config.json only).")
    ] = None,
    model_config: Annotated[
        Optional[str],
        typer.Option("--model-config", help="Size preset (gpt2-small, llama-tiny...), config.json or Hub config."),
    ] = None,
    recipe: c.Recipe = None,
    task: c.Task = None,
    objective: Annotated[Optional[str], typer.Option("--objective", help="clm or mlm (same as --task).")] = None,
    seq_len: Annotated[
        Optional[int], typer.Option("--seq-len", help="Tokens per sequence (default: recipe's, else 2048).")
    ] = None,
    batch_size: Annotated[
        Optional[int], typer.Option("--batch-size", help="Per-GPU micro-batch (default: recipe's, else 8).")
    ] = None,
    precision: Annotated[
        Optional[str],
        typer.Option("--precision", help="fp32, bf16 / fp16 / mixed (fp32 weights, autocast), pure-bf16."),
    ] = None,
    gpu: Annotated[
        str, typer.Option("--gpu", help="GPU type: h100, h200, a100, a10g, l4, rtx4090, mi300x, ...")
    ] = "h100",
    gpus: Annotated[int, typer.Option("--gpus", help="Number of GPUs.")] = 1,
    sharding: Annotated[str, typer.Option("--sharding", help="ddp, zero2, zero3 or fsdp (full shard).")] = "ddp",
    gradient_checkpointing: Annotated[
        Optional[bool],
        typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Default: recipe's, else off."),
    ] = None,
    tokens: Annotated[Optional[float], typer.Option("--tokens", help="Training tokens, e.g. 2e9.")] = None,
    mfu: Annotated[float, typer.Option("--mfu", help="Model FLOPs utilisation assumed for the time estimate.")] = 0.4,
    gpu_hours: Annotated[
        Optional[float], typer.Option("--gpu-hours", help="Budget: which model size it trains compute-optimally.")
    ] = None,
    lora_r: Annotated[Optional[int], typer.Option("--lora-r", help="LoRA rank: base frozen, adapters trained.")] = None,
    lora_targets: Annotated[
        Optional[str], typer.Option("--lora-targets", help="Comma-separated module names (default: all linear layers).")
    ] = None,
    vocab_size: Annotated[
        Optional[int], typer.Option("--vocab-size", help="Vocabulary size (from-scratch configs).")
    ] = None,
    trust_remote_code: c.TrustRemoteCode = False,
    sets: c.Sets = None,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure",
            help="Also run it for a few optimizer steps on this machine (CPU, or its GPU) and print the measured "
            "peak memory next to the estimate.",
        ),
    ] = False,
    measure_steps: Annotated[
        Optional[int], typer.Option("--measure-steps", help="Optimizer steps --measure runs (default 3).")
    ] = None,
) -> None:
    """What a run costs before it starts: parameters, memory per GPU (fits or not), FLOPs and time."""
    from llmtune.estimate import Request, estimate_sections

    if objective is not None:
        if objective not in ("clm", "mlm"):
            c.fail(f"--objective must be clm or mlm, got '{objective}'")
        if task is not None and task != objective:
            c.fail("pass --task or --objective, not both")
        task = objective
    request = Request(
        model=model,
        model_config=model_config,
        recipe=recipe,
        sets=sets,
        task=task,
        seq_len=seq_len,
        batch_size=batch_size,
        precision=precision,
        gpu=gpu,
        gpus=gpus,
        sharding=sharding.lower(),
        gradient_checkpointing=gradient_checkpointing,
        tokens=tokens,
        mfu=mfu,
        gpu_hours=gpu_hours,
        lora_r=lora_r,
        lora_targets=[t.strip() for t in lora_targets.split(",") if t.strip()] if lora_targets else None,
        vocab_size=vocab_size,
        trust_remote_code=trust_remote_code,
        measure=measure,
        measure_steps=measure_steps,
    )
    for section in estimate_sections(request):  # --measure: the estimate first, while the run measures
        typer.echo(section)
