"""Multi-process / multi-machine runs through accelerate's launcher.

``llmtune finetune ... --num-processes 4`` re-runs the same command line (minus the launch flags)
as ``accelerate launch [--config_file F] --num_processes 4 ... -m llmtune finetune ...``; each
worker then finds itself under a launcher (``WORLD_SIZE`` & co., set by accelerate / torchrun /
mpirun) and trains its shard. Starting llmtune directly under ``accelerate launch`` or
``torchrun`` works the same way. Which process is the main one, barriers and the backend all come
from accelerate's ``PartialState`` (see :func:`distributed_state`).

Shipped accelerate configs (DDP, FSDP, DeepSpeed ZeRO-2/3) live in ``recipes/accelerate/`` and can
be named: ``--accelerate-config fsdp``.

Module level stays torch-free (``--help`` must be instant).
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import subprocess
import sys
import tempfile
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from llmtune.errors import LlmtuneError

#: env vars through which a worker reports its exit code to the launching llmtune process
STATUS_ENV = "LLMTUNE_LAUNCH_STATUS"
_WORLD_SIZE_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_ENV = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


@dataclass
class LaunchOptions:
    num_processes: Optional[int] = None
    num_machines: Optional[int] = None
    machine_rank: Optional[int] = None
    main_process_ip: Optional[str] = None
    main_process_port: Optional[int] = None
    accelerate_config: Optional[str] = None

    @property
    def requested(self) -> bool:
        """Whether these flags ask for a launch (one process on one machine needs none)."""
        return bool((self.num_processes or 1) > 1 or (self.num_machines or 1) > 1 or self.accelerate_config is not None)


# option name -> (CLI flag, accelerate launch flag, help)
_OPTIONS = {
    "num_processes": ("--num-processes", "--num_processes", "Processes in total over all machines (e.g. GPUs)."),
    "num_machines": ("--num-machines", "--num_machines", "Machines taking part (multi-node)."),
    "machine_rank": ("--machine-rank", "--machine_rank", "Rank of this machine, 0 .. num-machines-1."),
    "main_process_ip": ("--main-process-ip", "--main_process_ip", "Address of the machine of rank 0."),
    "main_process_port": ("--main-process-port", "--main_process_port", "Free port on the machine of rank 0."),
    "accelerate_config": (
        "--accelerate-config",
        "--config_file",
        "accelerate config YAML, or a shipped one: ddp, fsdp, deepspeed-zero2, deepspeed-zero3.",
    ),
}
_TYPES: dict[str, Any] = {
    "num_processes": Optional[int],
    "num_machines": Optional[int],
    "machine_rank": Optional[int],
    "main_process_ip": Optional[str],
    "main_process_port": Optional[int],
    "accelerate_config": Optional[str],
}


# ---------------------------------------------------------------------------------------------
# where are we


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "")
        if value.strip().lstrip("-").isdigit() and int(value) >= 0:
            return int(value)
    return default


def under_launcher() -> bool:
    """Whether this process is one of several started by accelerate, torchrun or mpirun.

    The same variables accelerate's ``PartialState`` reads; this is the one place llmtune checks.
    """
    return _env_int(_WORLD_SIZE_ENV, 1) > 1


def global_rank() -> int:
    return _env_int(_RANK_ENV, 0)


def _has_accelerator() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    for name in ("xpu", "npu", "mlu", "hpu", "musa"):
        backend = getattr(torch, name, None)
        if backend is not None and getattr(backend, "is_available", lambda: False)():
            return True
    return False


def distributed_state() -> Any:
    """accelerate's ``PartialState`` for this process, created consistently everywhere.

    Without a GPU accelerate only builds a multi-process (gloo) state when asked for CPU, and
    ``TrainingArguments`` re-creates the state reading ``ACCELERATE_USE_CPU``; so workers on a
    CPU-only machine set that variable before the first ``PartialState`` exists.
    """
    if under_launcher() and "ACCELERATE_USE_CPU" not in os.environ and not _has_accelerator():
        os.environ["ACCELERATE_USE_CPU"] = "true"
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


# ---------------------------------------------------------------------------------------------
# relaunching


def accelerate_configs_dir() -> Path:
    from llmtune.paths import recipes_dir

    return recipes_dir() / "accelerate"


def shipped_accelerate_configs() -> list[str]:
    folder = accelerate_configs_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def resolve_accelerate_config(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.suffix not in (".yaml", ".yml", ".json") and "/" not in spec:
        shipped = accelerate_configs_dir() / f"{spec}.yaml"
        if shipped.is_file():
            return shipped
    raise LlmtuneError(
        f"--accelerate-config {spec}: no such file; shipped configs: {', '.join(shipped_accelerate_configs())}"
    )


def check_options(opts: LaunchOptions) -> None:
    if opts.num_processes is not None and opts.num_processes < 1:
        raise LlmtuneError(f"--num-processes must be >= 1, got {opts.num_processes}")
    machines = opts.num_machines if opts.num_machines is not None else 1
    if machines < 1:
        raise LlmtuneError(f"--num-machines must be >= 1, got {opts.num_machines}")
    if opts.machine_rank is not None and not 0 <= opts.machine_rank < machines:
        raise LlmtuneError(f"--machine-rank must be in 0..{machines - 1}, got {opts.machine_rank}")
    if machines > 1:
        missing = [
            _OPTIONS[k][0] for k in ("machine_rank", "main_process_ip", "main_process_port") if getattr(opts, k) is None
        ]
        if missing:
            raise LlmtuneError(f"--num-machines {machines} needs {', '.join(missing)} (the same on every machine)")
        if opts.num_processes is not None and opts.num_processes % machines:
            raise LlmtuneError(
                f"--num-processes {opts.num_processes} (the total) must be a multiple of --num-machines {machines}"
            )
    if opts.main_process_port is not None and not 0 < opts.main_process_port < 65536:
        raise LlmtuneError(f"--main-process-port must be a port number, got {opts.main_process_port}")
    if opts.requested and under_launcher():
        raise LlmtuneError(
            "launch flags (--num-processes, --accelerate-config, ...) given inside a launched run: "
            "drop them, or run llmtune without accelerate launch / torchrun"
        )


def launch_command(argv: list[str], opts: LaunchOptions) -> list[str]:
    """The ``accelerate launch`` command line that re-runs ``argv`` (llmtune's args, launch flags removed)."""
    cmd = [sys.executable, "-m", "llmtune.launch"]  # accelerate's launcher, see launcher_main
    if opts.accelerate_config is not None:
        cmd += ["--config_file", str(resolve_accelerate_config(opts.accelerate_config))]
    else:
        # Without a config: plain DDP over torch's elastic launcher (also on CPU-only machines,
        # where the workers use gloo, see distributed_state).
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        total = opts.num_processes or 1
        if total > 1 or (opts.num_machines or 1) > 1:
            cmd.append("--multi_gpu")
        cmd += ["--num_processes", str(total), "--num_machines", str(opts.num_machines or 1)]
    for name, (_, flag, _) in _OPTIONS.items():
        value = getattr(opts, name)
        if name == "accelerate_config" or value is None:
            continue
        if opts.accelerate_config is None and name in ("num_processes", "num_machines"):
            continue  # already added
        cmd += [flag, str(value)]
    return [*cmd, "-m", "llmtune", *argv]


def strip_launch_flags(argv: list[str]) -> list[str]:
    """``argv`` without the launch flags (``--flag value`` and ``--flag=value`` forms)."""
    flags = {spec[0] for spec in _OPTIONS.values()}
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in flags:
            skip = True
            continue
        if arg.split("=", 1)[0] in flags and "=" in arg:
            continue
        out.append(arg)
    return out


def relaunch(opts: LaunchOptions, argv: list[str] | None = None) -> int:
    """Run the current llmtune command under ``accelerate launch``; returns the exit code.

    SIGTERM sent to this process is passed on to the launcher (which passes it to the workers:
    they save a checkpoint and stop). Ctrl-C reaches the workers through the terminal's process
    group, so it is not forwarded again here. A worker that fails with a user error reports its
    exit code through a status file, so ``llmtune`` exits with that code (e.g. 2), not the
    launcher's generic 1.
    """
    argv = strip_launch_flags(list(sys.argv[1:] if argv is None else argv))
    cmd = launch_command(argv, opts)
    fd, status = tempfile.mkstemp(prefix="llmtune-status-")
    os.close(fd)
    env = {**os.environ, STATUS_ENV: status}
    env.setdefault("PYTHONUNBUFFERED", "1")
    if os.environ.get("LLMTUNE_DEBUG", "") in ("", "0"):
        env.setdefault("LOGLEVEL", "ERROR")  # torch elastic's own warnings ("Sending process closing signal")
    proc = subprocess.Popen(cmd, env=env)
    previous_term = signal.signal(signal.SIGTERM, lambda s, f: proc.send_signal(signal.SIGTERM))
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        rc = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
    try:
        reported = Path(status).read_text().strip()
    finally:
        os.unlink(status)
    if rc != 0 and reported.isdigit():
        return int(reported)
    return rc


def report_exit_code(code: int) -> None:
    """In a launched worker: record the exit code for the launching llmtune (first one wins)."""
    path = os.environ.get(STATUS_ENV)
    if not path:
        return
    try:
        with open(path, "r+", encoding="utf-8") as fh:
            if not fh.read().strip():
                fh.seek(0)
                fh.write(str(code))
    except OSError:
        pass


def is_quiet_rank() -> bool:
    """Workers other than the global main one keep user-error lines to themselves."""
    return under_launcher() and global_rank() != 0


# ---------------------------------------------------------------------------------------------
# CLI glue


def launchable(fn: Callable) -> Callable:
    """Add the launch options to a Typer command; the command receives them as ``launch=``.

    Used by ``finetune`` and ``pretrain`` so both accept ``--num-processes`` & co. the same way.
    """
    import typer

    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)  # keep Annotated option metadata
    kept = [
        p.replace(annotation=hints.get(name, p.annotation)) for name, p in sig.parameters.items() if name != "launch"
    ]
    added = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, flag, help=text, rich_help_panel="Multi-process / multi-machine"),
            annotation=_TYPES[name],
        )
        for name, (flag, _, text) in _OPTIONS.items()
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opts = LaunchOptions(**{name: kwargs.pop(name, None) for name in _OPTIONS})
        return fn(*args, launch=opts, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*kept, *added])  # type: ignore[attr-defined]
    annotations = {k: v for k, v in hints.items() if k != "launch"}
    annotations.update({name: _TYPES[name] for name in _OPTIONS})
    wrapper.__annotations__ = annotations
    del wrapper.__wrapped__  # Typer must read our signature, not the wrapped function's
    return wrapper


def launcher_main(argv: list[str]) -> int:
    """``accelerate launch`` with llmtune's error contract (run as ``python -m llmtune.launch``).

    When a worker fails it has already printed its one ``error:`` line and recorded its exit
    code; the launcher would then add torch elastic's traceback and failure report. Here that
    report is dropped unless ``--debug`` (LLMTUNE_DEBUG=1) is set.
    """
    import logging

    from accelerate.commands.launch import launch_command as accelerate_launch
    from accelerate.commands.launch import launch_command_parser

    args = launch_command_parser().parse_args(argv)
    debug = os.environ.get("LLMTUNE_DEBUG", "") not in ("", "0")
    if not debug:
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        accelerate_launch(args)
    except Exception as exc:
        if debug:
            raise
        # ChildFailedError (torchrun) or CalledProcessError (single process): workers reported.
        return int(getattr(exc, "returncode", 1) or 1)
    return 0


if __name__ == "__main__":
    sys.exit(launcher_main(sys.argv[1:]))
