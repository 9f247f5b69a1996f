"""What every command module shares: the error contract, the debug flag and option definitions.

Options used by several commands are defined once here as ``Annotated`` types, so ``finetune``,
``pretrain``, ``eval``, ``predict`` ... spell and document a flag the same way; blocks of options
that several commands take together are option groups (:class:`Sampling`, :class:`TrainOptions`;
see :func:`option_groups`).
Module level stays torch-free: ``llmtune --help`` must be instant.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import sys
import traceback
import typing
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from llmtune.errors import LlmtuneError, one_line

state = {"debug": os.environ.get("LLMTUNE_DEBUG", "") not in ("", "0")}


def debug_enabled() -> bool:
    return bool(state["debug"])


def enable_debug() -> None:
    state["debug"] = True
    os.environ["LLMTUNE_DEBUG"] = "1"  # launched workers inherit it


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """One line and exit code 2 for user errors; --debug re-raises with the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not state["debug"]:
            # Libraries that warn while being imported (before quiet_libraries can run): bitsandbytes,
            # pulled in by transformers/peft, logs a missing optional kernel on every CPU run.
            logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except LlmtuneError as exc:
            if state["debug"]:
                traceback.print_exc()
            from llmtune.launch import is_quiet_rank, report_exit_code

            report_exit_code(exc.exit_code, shown=not is_quiet_rank())
            if is_quiet_rank():  # in a launched run every worker hits the same error: rank 0 says it
                raise typer.Exit(exc.exit_code) from None
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except BrokenPipeError:
            # Output piped into e.g. `head`: stop quietly, like other Unix tools.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except Exception as exc:
            if state["debug"]:
                raise
            from llmtune.launch import is_quiet_rank, report_exit_code

            report_exit_code(1, shown=not is_quiet_rank())
            if is_quiet_rank():  # usually the echo of rank 0's failure (a closed connection)
                raise typer.Exit(1) from None
            text = one_line(exc)
            fail(f"{type(exc).__name__}: {text} (rerun with --debug for the traceback)", 1)

    return wrapper


# ---------------------------------------------------------------------------------------------
# shared option definitions

Sets = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override any config key: --set train.warmup_ratio=0.1 (repeatable)."),
]
Recipe = Annotated[
    Optional[str], typer.Option("--recipe", "-r", help="Recipe name (see `llmtune recipes list`) or YAML path.")
]
OutputDir = Annotated[
    Optional[str], typer.Option("--output-dir", "-o", help="Where model, config, metrics and card go.")
]
Resume = Annotated[
    Optional[str],
    typer.Option(
        "--resume", help="Continue a stopped run: 'auto' (newest complete checkpoint in --output-dir) or a checkpoint."
    ),
]
TrustRemoteCode = Annotated[
    bool,
    typer.Option("--trust-remote-code", help="Allow model/tokenizer code from the model folder or Hub repo to run."),
]
Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Hub id or local model folder.")]
ModelRequired = Annotated[str, typer.Option("--model", "-m", help="Saved model folder (or Hub id).")]
Task = Annotated[Optional[str], typer.Option("--task", "-t", help="Task, e.g. sentiment (see `recipes list`).")]
Dataset = Annotated[
    Optional[str], typer.Option("--dataset", "-d", help="Hub name, csv/tsv/jsonl/parquet/txt file or folder.")
]
Epochs = Annotated[Optional[float], typer.Option("--epochs", help="Training epochs (> 0).")]
MaxSteps = Annotated[
    Optional[int],
    typer.Option("--max-steps", help="Optimizer steps (> 0; overrides --epochs). Omit (or -1) to train for --epochs."),
]
LearningRate = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate (> 0).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Per-device training batch size (>= 1).")]
GradAccum = Annotated[Optional[int], typer.Option("--grad-accum", help="Gradient accumulation steps (>= 1).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed (0 .. 2**32-1).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output dir.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and exit.")]
Lora = Annotated[
    bool,
    typer.Option("--lora", help="Train LoRA adapters instead of all weights (peft.method=lora; see peft.* keys)."),
]
Quiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Show only the final metrics and errors (train.progress=quiet)."),
]
GgufFile = Annotated[
    Optional[str], typer.Option("--gguf-file", help="GGUF file inside the --model folder (de-quantized on load).")
]

# ---- inference: predict, generate, chat, serve
InferModel = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="llmtune output folder, Hugging Face model folder or Hub id (LoRA/GGUF too)."),
]
InferTask = Annotated[
    Optional[str],
    typer.Option("--task", "-t", help="Task; default: the one the model was trained for (required for other models)."),
]
MaxNewTokens = Annotated[Optional[int], typer.Option("--max-new-tokens", help="Most tokens to generate (>= 1).")]
Temperature = Annotated[float, typer.Option("--temperature", help="Sampling temperature (>= 0; 0 = greedy).")]
TopP = Annotated[
    float, typer.Option("--top-p", help="Nucleus sampling: keep the smallest token set with this mass, in (0, 1].")
]
TopK = Annotated[int, typer.Option("--top-k", help="Sample among the k most likely tokens (0 = off).")]
RepetitionPenalty = Annotated[
    float, typer.Option("--repetition-penalty", help="Penalise tokens already generated (> 0; 1 = off).")
]
GenSeed = Annotated[Optional[int], typer.Option("--seed", help="Random seed for sampling (0 .. 2**32-1).")]
Greedy = Annotated[bool, typer.Option("--greedy", help="Greedy decoding: always the most likely token.")]
Stop = Annotated[
    Optional[list[str]],
    typer.Option("--stop", help="Stop when this string is generated (repeatable); EOS always stops."),
]
System = Annotated[Optional[str], typer.Option("--system", help="System prompt (chat models).")]

# ---- HTTP servers: serve, ui
Host = Annotated[str, typer.Option("--host", help="Address to bind (loopback by default: only this machine).")]
Port = Annotated[int, typer.Option("--port", help="TCP port.")]


# ---------------------------------------------------------------------------------------------
# option groups: a block of options several commands take, defined once


class OptionGroup:
    """Base of the option groups: frozen dataclasses whose fields are options (see :func:`option_groups`)."""


def option_groups(fn: Callable) -> Callable:
    """Spread each option-group parameter of a Typer command into the group's options.

    A command takes a group as one parameter whose default is an instance of it, e.g.
    ``sampling: Sampling = Sampling()``. Typer sees the group's options in its place, in field order,
    their defaults taken from that instance (so a command can change one: ``Sampling(temperature=1.0)``);
    the command receives the values as one object. A group option that the command declares itself
    (same parameter name) keeps the command's place in ``--help``, help text and default, and its value
    goes both to that parameter and into the group.
    """
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)  # keep Annotated option metadata
    groups: dict[str, type] = {}
    params: list[inspect.Parameter] = []
    for name, p in sig.parameters.items():
        group = hints.get(name)
        if not (isinstance(group, type) and issubclass(group, OptionGroup)):
            params.append(p.replace(annotation=hints.get(name, p.annotation)))
            continue
        if not isinstance(p.default, group):
            raise TypeError(f"{fn.__name__}: parameter {name} needs a {group.__name__}(...) default")
        groups[name] = group
        types = typing.get_type_hints(group, include_extras=True)
        params += [
            inspect.Parameter(f.name, p.kind, default=getattr(p.default, f.name), annotation=types[f.name])
            for f in dataclasses.fields(group)
            if f.name not in sig.parameters
        ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name, group in groups.items():
            values = {
                f.name: kwargs[f.name] if f.name in sig.parameters else kwargs.pop(f.name)
                for f in dataclasses.fields(group)
            }
            kwargs[name] = group(**values)
        return fn(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    if "return" in hints:
        wrapper.__annotations__["return"] = hints["return"]
    del wrapper.__wrapped__  # Typer must read our signature, not the wrapped function's
    return wrapper


@dataclasses.dataclass(frozen=True)
class Sampling(OptionGroup):
    """The sampling options of ``generate``, ``chat`` and ``serve``; fields are named as in
    :class:`~llmtune.inference.generation.GenerationSettings`."""

    max_new_tokens: MaxNewTokens = None
    temperature: Temperature = 0.7
    top_p: TopP = 1.0
    top_k: TopK = 0
    repetition_penalty: RepetitionPenalty = 1.0
    seed: GenSeed = None
    greedy: Greedy = False
    stop: Stop = None

    def settings(self, default_max_new_tokens: int = 256) -> Any:
        """The checked :class:`~llmtune.inference.generation.GenerationSettings` of these flags."""
        from llmtune.inference.generation import GenerationSettings

        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["max_new_tokens"] = default_max_new_tokens if self.max_new_tokens is None else self.max_new_tokens
        values["stop"] = list(self.stop or [])
        return GenerationSettings(**values).check()


@dataclasses.dataclass(frozen=True)
class TrainOptions(OptionGroup):
    """The training options of ``finetune`` and ``pretrain``, and the config keys they set."""

    model: Model = None
    dataset: Dataset = None
    output_dir: OutputDir = None
    epochs: Epochs = None
    max_steps: MaxSteps = None
    lr: LearningRate = None
    batch_size: BatchSize = None
    grad_accum: GradAccum = None
    seed: Seed = None
    overwrite: Overwrite = False
    resume: Resume = None
    trust_remote_code: TrustRemoteCode = False
    lora: Lora = False
    quiet: Quiet = False

    def flags(self) -> dict[str, Any]:
        """Dotted config keys for these flags (None: flag not given); the dotted key doubles as
        the name of the flag in error messages (see ``llmtune.config.FLAG_NAMES``)."""
        return {
            "train.resume": self.resume,
            "model.trust_remote_code": True if self.trust_remote_code else None,
            "model.name_or_path": self.model,
            "data.dataset": self.dataset,
            "train.output_dir": self.output_dir,
            "train.epochs": self.epochs,
            "train.max_steps": self.max_steps,
            "train.learning_rate": self.lr,
            "train.batch_size": self.batch_size,
            "train.gradient_accumulation_steps": self.grad_accum,
            "train.seed": self.seed,
            "train.overwrite": True if self.overwrite else None,
            "peft.method": "lora" if self.lora else None,
            "train.progress": "quiet" if self.quiet else None,
        }
