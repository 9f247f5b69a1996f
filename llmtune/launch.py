"""Multi-process / multi-machine runs through accelerate's launcher.

``llmtune finetune ... --num-processes 4`` re-runs the same command line (minus the launch flags)
as ``accelerate launch [--config_file F] --num_processes 4 ... -m llmtune finetune ...``; each
worker then finds itself under a launcher (``WORLD_SIZE`` & co., set by accelerate / torchrun /
mpirun) and trains its shard. Starting llmtune directly under ``accelerate launch`` or
``torchrun`` works the same way. Which process is the main one, barriers and the backend all come
from accelerate's ``PartialState`` (see :func:`distributed_state`).

Shipped accelerate configs (DDP, FSDP, DeepSpeed ZeRO-2/3) live in ``recipes/accelerate/`` and can
be named: ``--accelerate-config fsdp``.

Several machines: the same command on each, with ``--num-machines``, ``--machine-rank`` and the
address of machine rank 0 (``--main-process-ip/--main-process-port``). The machines meet through
torch elastic's rendezvous (``--rdzv-backend static``: ranks follow ``--machine-rank``; ``c10d``:
ranks are given out as machines join), bounded by ``--rdzv-timeout``: a machine that cannot reach
the main process, or a main process that waits for machines that never come, fails in one
``error:`` line instead of hanging. Workers die with their launcher (:func:`tie_to_launcher`), so
a machine whose llmtune is killed really stops, and the others then fail fast on the lost
connection instead of waiting on it.

Module level stays torch-free (``--help`` must be instant).
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from llmtune.errors import LlmtuneError

#: env vars through which a worker reports its exit code to the launching llmtune process
STATUS_ENV = "LLMTUNE_LAUNCH_STATUS"
#: the launcher's pid, for its workers (see tie_to_launcher)
LAUNCHER_PID_ENV = "LLMTUNE_LAUNCHER_PID"
#: ``--machine-rank`` as given, for the workers' messages (c10d numbers machines itself)
MACHINE_RANK_ENV = "LLMTUNE_MACHINE_RANK"
_WORLD_SIZE_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_ENV = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_LOCAL_RANK_ENV = ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")
RDZV_BACKENDS = ("static", "c10d")
#: seconds a machine waits to reach the main process, and the main process for all machines
DEFAULT_RDZV_TIMEOUT = 120


@dataclass
class LaunchOptions:
    num_processes: Optional[int] = None
    num_machines: Optional[int] = None
    machine_rank: Optional[int] = None
    main_process_ip: Optional[str] = None
    main_process_port: Optional[int] = None
    accelerate_config: Optional[str] = None
    rdzv_backend: Optional[str] = None
    rdzv_timeout: Optional[int] = None

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
    "rdzv_backend": (
        "--rdzv-backend",
        "--rdzv_backend",
        "How machines meet: static (default; ranks follow --machine-rank) or c10d (ranks given out as machines "
        "join; --machine-rank optional).",
    ),
    "rdzv_timeout": (
        "--rdzv-timeout",
        "--rdzv_conf",  # passed as timeout settings, see rdzv_conf
        f"Seconds a machine waits to reach the main process, and the main process for all machines "
        f"(default {DEFAULT_RDZV_TIMEOUT}).",
    ),
}
_TYPES: dict[str, Any] = {
    "num_processes": Optional[int],
    "num_machines": Optional[int],
    "machine_rank": Optional[int],
    "main_process_ip": Optional[str],
    "main_process_port": Optional[int],
    "accelerate_config": Optional[str],
    "rdzv_backend": Optional[str],
    "rdzv_timeout": Optional[int],
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


def local_rank() -> int:
    return _env_int(_LOCAL_RANK_ENV, 0)


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
    if opts.rdzv_backend is not None and opts.rdzv_backend not in RDZV_BACKENDS:
        raise LlmtuneError(f"--rdzv-backend must be one of {', '.join(RDZV_BACKENDS)}, got '{opts.rdzv_backend}'")
    if opts.rdzv_timeout is not None and opts.rdzv_timeout < 1:
        raise LlmtuneError(f"--rdzv-timeout must be >= 1 (seconds), got {opts.rdzv_timeout}")
    if machines == 1 and (opts.rdzv_backend is not None or opts.rdzv_timeout is not None):
        raise LlmtuneError(
            "--rdzv-backend and --rdzv-timeout are for runs over several machines: add --num-machines N "
            "(with --machine-rank, --main-process-ip, --main-process-port), or drop them"
        )
    if machines > 1:
        needed = ("main_process_ip", "main_process_port")
        if (opts.rdzv_backend or "static") == "static":
            needed = ("machine_rank", *needed)  # c10d gives out ranks as machines join
        missing = [_OPTIONS[k][0] for k in needed if getattr(opts, k) is None]
        if missing:
            raise LlmtuneError(f"--num-machines {machines} needs {', '.join(missing)} (the same on every machine)")
        if opts.num_processes is None:
            raise LlmtuneError(
                f"--num-machines {machines} needs --num-processes: the total over all machines "
                f"(e.g. {machines} x the GPUs of one machine)"
            )
        if opts.num_processes % machines:
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


def rdzv_timeout(opts: LaunchOptions) -> int:
    return opts.rdzv_timeout if opts.rdzv_timeout is not None else DEFAULT_RDZV_TIMEOUT


def rdzv_conf(timeout: int) -> str:
    """torch elastic's rendezvous settings for ``timeout`` seconds: ``timeout`` bounds the static
    rendezvous (the main machine's wait for the others, their connection to it), ``join_timeout``
    and ``read_timeout`` the c10d one (all machines joined; reaching its store)."""
    return f"timeout={timeout},join_timeout={timeout},read_timeout={timeout}"


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
        if name in ("accelerate_config", "rdzv_timeout") or value is None:
            continue
        if opts.accelerate_config is None and name in ("num_processes", "num_machines"):
            continue  # already added
        cmd += [flag, str(value)]
    if (opts.num_machines or 1) > 1:
        if opts.machine_rank is None:  # c10d: accelerate still wants a number (ranks come from the rendezvous)
            cmd += ["--machine_rank", "0"]
        if opts.rdzv_backend is None:
            cmd += ["--rdzv_backend", "static"]
        cmd += ["--rdzv_conf", rdzv_conf(rdzv_timeout(opts))]
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


def wait_for_main(host: str, port: int, timeout: float, machine_rank: int) -> None:
    """Wait until the main process (machine rank 0) accepts connections at ``host:port``.

    Machines start at slightly different times, so refused connections are retried; after
    ``timeout`` seconds the run is refused in one line naming the flags to check. (torch's own
    connection timeout would apply twice, with its retry, and end in a C++ stack trace.)
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(remaining, 5.0))):
                return
        except OSError as exc:  # refused, unreachable, unknown host, timed out
            reason = exc.strerror or str(exc) or type(exc).__name__
        if time.monotonic() + 0.5 >= deadline:
            break
        time.sleep(0.5)
    raise LlmtuneError(
        f"machine rank {machine_rank} could not reach the main process at {host}:{port} within {timeout:g} s "
        f"(--rdzv-timeout; last error: {reason}): check --main-process-ip/--main-process-port (the address of "
        f"machine rank 0 as this machine reaches it, and a free port there) and that llmtune runs there"
    )


def relaunch(opts: LaunchOptions, argv: list[str] | None = None) -> int:
    """Run the current llmtune command under ``accelerate launch``; returns the exit code.

    SIGTERM sent to this process is passed on to the launcher, whose torch elastic agent passes it
    to the workers (they save a checkpoint and stop). Ctrl-C (SIGINT from the terminal) reaches the
    launcher through the terminal's process group, and its agent passes it on the same way, so it
    is not forwarded again here. A worker that fails with a user error reports its exit code
    through a status file, so ``llmtune`` exits with that code (e.g. 2), not the launcher's
    generic 1. On machines other than rank 0, the main process must be reachable first
    (:func:`wait_for_main`).
    """
    argv = strip_launch_flags(list(sys.argv[1:] if argv is None else argv))
    cmd = launch_command(argv, opts)
    if (opts.num_machines or 1) > 1 and opts.machine_rank:
        assert opts.main_process_ip is not None and opts.main_process_port is not None  # check_options
        wait_for_main(opts.main_process_ip, opts.main_process_port, rdzv_timeout(opts), opts.machine_rank)
    fd, status = tempfile.mkstemp(prefix="llmtune-status-")
    os.close(fd)
    env = {**os.environ, STATUS_ENV: status}
    env.setdefault("PYTHONUNBUFFERED", "1")
    if opts.machine_rank is not None:
        env[MACHINE_RANK_ENV] = str(opts.machine_rank)
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
        reports = _reports(status)
    finally:
        os.unlink(status)
    if rc != 0 and reports:
        return reports[0][0]
    return rc


def report_exit_code(code: int, shown: bool = True) -> None:
    """In a launched worker: record the exit code for the launching llmtune (the first one wins),
    and whether an ``error:`` line was printed for it (quiet ranks print none)."""
    path = os.environ.get(STATUS_ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as fh:  # one short append per worker: no interleaving
            fh.write(f"{code} {int(shown)}\n")
    except OSError:
        pass


def _reports(path: str | None) -> list[tuple[int, bool]]:
    """The (exit code, line printed) reports in a status file, first first."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines() if path else []
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0].lstrip("-").isdigit():
            out.append((int(parts[0]), parts[1] == "1"))
    return out


def is_quiet_rank() -> bool:
    """Workers other than the first of each machine keep error lines to themselves.

    Every worker usually hits the same error (or the echo of another's: a closed connection), so
    one line per machine is enough, and each machine's log says why it stopped.
    """
    return under_launcher() and local_rank() != 0


def tie_to_launcher() -> None:
    """In a worker started by llmtune's launcher: die (SIGKILL) when the launcher dies (Linux).

    torch elastic starts each worker in a session of its own, so a SIGKILL of the launcher, or of
    llmtune's process group (a job manager, ``kill -9 -PGID``), would leave the workers running:
    still holding their devices, and on the other machines nobody would learn that this one is
    gone. A launcher that stops normally (signals, failures) stops its workers itself first.
    """
    value = os.environ.get(LAUNCHER_PID_ENV, "")
    if not value.isdigit() or not sys.platform.startswith("linux"):
        return
    launcher = int(value)
    if os.getppid() != launcher:
        # Started through another layer (DeepSpeed's multi-node runner): that one is in charge,
        # unless the launcher is gone already.
        try:
            os.kill(launcher, 0)
        except ProcessLookupError:
            os.kill(os.getpid(), signal.SIGKILL)
        except OSError:
            pass
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != launcher:  # the launcher died just before prctl
        os.kill(os.getpid(), signal.SIGKILL)


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


def rendezvous_problem(exc: BaseException, args: Any) -> str | None:
    """What went wrong when the machines did not meet (None: not a rendezvous failure).

    ``args`` are the parsed ``accelerate launch`` arguments: the message names llmtune's flags.
    """
    from torch.distributed import DistError
    from torch.distributed.elastic.rendezvous.api import (
        RendezvousConnectionError,
        RendezvousError,
        RendezvousTimeoutError,
    )

    from llmtune.errors import one_line

    machines = int(args.num_machines or 1)
    where = f"{args.main_process_ip}:{args.main_process_port}"
    match = re.search(r"(?:^|,)timeout=(\d+)", args.rdzv_conf or "")
    timeout = f"{match.group(1)} s" if match else "the timeout"
    own_rank = ", its own --machine-rank" if args.rdzv_backend == "static" else ""
    start = (
        f"start llmtune on every machine with --num-machines {machines}{own_rank} and the same "
        f"--main-process-ip/--main-process-port"
    )
    text = str(exc)
    if isinstance(exc, ConnectionError) and "is utilizing it" in text:  # accelerate's check on machine rank 0
        return f"--main-process-port {args.main_process_port} is in use on this machine: pick a free port, the same on every machine"
    joined = re.search(r"(\d+)/(\d+) clients joined", text)
    if joined:  # static: the main machine waited for the others
        return (
            f"only {joined.group(1)} of {machines} machines joined the main process at {where} within {timeout} "
            f"(--rdzv-timeout): {start}"
        )
    if isinstance(exc, RendezvousTimeoutError):  # c10d: not everybody joined
        return f"not all {machines} machines joined the c10d rendezvous at {where} within {timeout} (--rdzv-timeout): {start}"
    if isinstance(exc, (RendezvousConnectionError, DistError, TimeoutError)) or (
        isinstance(exc, RuntimeError) and "TCPStore" in text
    ):
        return (
            f"could not reach the main process at {where} within {timeout} (--rdzv-timeout): check "
            f"--main-process-ip/--main-process-port (the address of machine rank 0 as every machine reaches it, "
            f"and a free port there) and that llmtune runs there ({one_line(text, 200)})"
        )
    if isinstance(exc, RendezvousError):
        return f"the machines could not meet at {where}: {one_line(text, 300)}"
    return None


def launcher_main(argv: list[str]) -> int:
    """``accelerate launch`` with llmtune's error contract (run as ``python -m llmtune.launch``).

    When a worker fails it has already printed its one ``error:`` line and recorded its exit
    code; the launcher would then add torch elastic's traceback and failure report. Here that
    report is dropped unless ``--debug`` (LLMTUNE_DEBUG=1) is set. Failures before any worker
    runs (the machines did not meet, see :func:`rendezvous_problem`) are reported here, in one
    line, with exit code 2.
    """
    import logging

    from accelerate.commands.launch import launch_command as accelerate_launch
    from accelerate.commands.launch import launch_command_parser

    args = launch_command_parser().parse_args(argv)
    debug = os.environ.get("LLMTUNE_DEBUG", "") not in ("", "0")
    if not debug:
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())  # inherited by the workers: tie_to_launcher
    try:
        accelerate_launch(args)
    except Exception as exc:
        if debug:
            raise
        problem = rendezvous_problem(exc, args) if (args.num_machines or 1) > 1 else None
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr, flush=True)
            report_exit_code(LlmtuneError.exit_code)
            return LlmtuneError.exit_code
        if not any(shown for _, shown in _reports(os.environ.get(STATUS_ENV))):
            # No worker said why: none ran (accelerate refused), or one died of a signal.
            print(f"error: {launch_failure(exc)}", file=sys.stderr, flush=True)
            report_exit_code(1)
        # ChildFailedError (torchrun) or CalledProcessError (single process)
        return int(getattr(exc, "returncode", 1) or 1)
    return 0


def launch_failure(exc: BaseException) -> str:
    """One line for a launch that failed with no worker's message: the worker that died and how,
    or accelerate's own complaint."""
    from llmtune.errors import one_line

    failures = getattr(exc, "failures", None)  # torch elastic's ChildFailedError
    if failures:
        rank, failure = min(failures.items())
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        hint = " (killed: out of memory?)" if failure.exitcode == -signal.SIGKILL else ""
        return f"worker process rank {rank} died with {how}{hint}; rerun with --debug for torch's report"
    return f"accelerate launch failed: {type(exc).__name__}: {one_line(str(exc), 300)}"


if __name__ == "__main__":
    sys.exit(launcher_main(sys.argv[1:]))
