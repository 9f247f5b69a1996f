"""``--launcher ray``: the same training run on Ray Train workers (``pip install 'llmtune[ray]'``).

``llmtune finetune ... --launcher ray --num-workers 4`` resolves the config once, here, then runs
:func:`llmtune.runner.run_train` in each of Ray Train's ``TorchTrainer`` workers:

- **Workers are accelerate workers.** Ray's ``TorchConfig`` sets ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` and
  ``ACCELERATE_TORCH_DEVICE`` in every worker and initialises the process group (gloo on CPU
  workers, nccl on GPU workers) before the training function starts. accelerate's
  ``PartialState`` reads the same variables and reuses an initialised process group, so each
  worker is, to llmtune, a launched worker like one of ``accelerate launch`` (rank 0 prints and
  writes; see :func:`llmtune.launch.distributed_state`). CPU workers get ``ACCELERATE_USE_CPU``.
- **Outputs** go where a plain run puts them (``--output-dir``: model, metrics, checkpoints).
  Ray's own storage only holds Ray's bookkeeping, in a temporary folder removed afterwards.
  Workers run in the driver's working directory, so relative paths mean the same; on several
  machines that folder, the data and the output folder must be on storage every node sees.
- **Restarts resume.** With ``--max-failures K`` Ray restarts the worker group after a worker
  dies (a killed process, a lost node); the new group resumes from the newest complete
  checkpoint this launch wrote (``--resume auto`` semantics, never a checkpoint of an earlier
  run that ``--overwrite`` is replacing), so the run ends as an uninterrupted one would.
- **Errors.** A user error in a worker (a bad column, ...) is recorded once and reported by the
  driver as the usual one ``error:`` line with exit code 2; it is not retried. Other worker
  failures end in one line too (the traceback with ``--debug``).

Module level stays free of torch and ray (``--help`` must be instant).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import signal
import socket
import subprocess
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from llmtune.distributed import LostConnection
from llmtune.errors import LlmtuneError, one_line

INSTALL_HINT = "pip install 'llmtune[ray]'"
LAUNCHERS = ("accelerate", "ray")
#: seconds to wait for a Ray cluster's GCS to answer before giving up on ``--ray-address``
CONNECT_TIMEOUT_S = 20
#: environment variables handed to the workers (HF caches and tokens, llmtune's own, trackers)
PROPAGATED_ENV_PREFIXES = ("HF_", "HUGGING_FACE_", "TRANSFORMERS_", "TOKENIZERS_", "LLMTUNE_", "WANDB_", "MLFLOW_")


@dataclass
class RayOptions:
    launcher: Optional[str] = None
    ray_address: Optional[str] = None
    num_workers: Optional[int] = None
    resources_per_worker: Optional[str] = None
    max_failures: Optional[int] = None

    @property
    def requested(self) -> bool:
        return self.launcher == "ray"


# option name -> (CLI flag, help)
_OPTIONS = {
    "launcher": ("--launcher", "accelerate (default: --num-processes & co.) or ray (Ray Train workers)."),
    "ray_address": (
        "--ray-address",
        "Ray cluster to run on: auto (the one started with `ray start` here) or HOST:PORT of its head; "
        "default: RAY_ADDRESS, else a new local Ray instance.",
    ),
    "num_workers": ("--num-workers", "Ray workers (training processes) in total, e.g. one per GPU."),
    "resources_per_worker": (
        "--resources-per-worker",
        'Resources of each Ray worker as JSON, e.g. \'{"CPU": 4, "GPU": 1}\'; '
        'default: {"CPU": 1, "GPU": 1} on a cluster with GPUs, else {"CPU": 1}.',
    ),
    "max_failures": (
        "--max-failures",
        "Restarts of the worker group after a worker fails, each resuming from the newest checkpoint "
        "(-1: no limit; default 0).",
    ),
}
_TYPES: dict[str, Any] = {
    "launcher": Optional[str],
    "ray_address": Optional[str],
    "num_workers": Optional[int],
    "resources_per_worker": Optional[str],
    "max_failures": Optional[int],
}
# accelerate's launch flags (llmtune.launch.LaunchOptions field -> flag): Ray replaces them
_ACCELERATE_FLAGS = {
    "num_processes": "--num-processes",
    "num_machines": "--num-machines",
    "machine_rank": "--machine-rank",
    "main_process_ip": "--main-process-ip",
    "main_process_port": "--main-process-port",
    "accelerate_config": "--accelerate-config",
}


# ---------------------------------------------------------------------------------------------
# flags


def parse_resources(text: str) -> dict[str, float]:
    """``--resources-per-worker`` JSON -> ``{"CPU": 2.0, "GPU": 1.0}``."""
    example = '\'{"CPU": 2, "GPU": 1}\''
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LlmtuneError(
            f"--resources-per-worker is not valid JSON ({exc.msg} at character {exc.pos + 1}): "
            f"pass an object of resource amounts, e.g. {example}"
        ) from None
    if not isinstance(value, dict) or not value:
        raise LlmtuneError(
            f"--resources-per-worker must be a JSON object of resource amounts, e.g. {example}; got {text!r}"
        )
    out: dict[str, float] = {}
    for name, amount in value.items():
        if not name.strip():
            raise LlmtuneError(f"--resources-per-worker: a resource needs a name (CPU, GPU, memory, ...): {text!r}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount) or amount < 0:
            raise LlmtuneError(
                f"--resources-per-worker: {name} must be a number >= 0, got {json.dumps(amount)}; e.g. {example}"
            )
        out[name] = float(amount)
    if name_clash := next((n for n in out if n.upper() in ("CPU", "GPU") and n not in ("CPU", "GPU")), None):
        raise LlmtuneError(f"--resources-per-worker: resource names are case-sensitive: write {name_clash.upper()}")
    return out


def check_address(address: str) -> None:
    if address == "auto":
        return
    if address.startswith("ray://"):
        raise LlmtuneError(
            f"--ray-address {address}: Ray Client (ray://) addresses are not supported: run llmtune on a node of "
            "the cluster with --ray-address auto, or pass the head's HOST:PORT (e.g. 10.0.0.1:6379)"
        )
    host, _, port = address.rpartition(":")
    if not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise LlmtuneError(
            f"--ray-address must be auto or HOST:PORT of the cluster's head (e.g. 10.0.0.1:6379), got {address!r}"
        )


def check_options(opts: RayOptions, launch: Any = None) -> dict[str, float] | None:
    """Refuse bad or conflicting launcher flags; returns the parsed ``--resources-per-worker``."""
    if opts.launcher is not None and opts.launcher not in LAUNCHERS:
        raise LlmtuneError(f"--launcher must be accelerate or ray, got {opts.launcher!r}")
    given = [_OPTIONS[name][0] for name in _OPTIONS if name != "launcher" and getattr(opts, name) is not None]
    if not opts.requested:
        if given:
            raise LlmtuneError(f"{given[0]} is a Ray launcher flag: add --launcher ray, or drop {given[0]}")
        return None
    clashing = [flag for name, flag in _ACCELERATE_FLAGS.items() if getattr(launch, name, None) is not None]
    if clashing:
        raise LlmtuneError(
            f"--launcher ray and {clashing[0]} do not go together: Ray starts the processes "
            f"(--num-workers N, on the machines of the Ray cluster); drop {', '.join(clashing)}"
        )
    if opts.num_workers is None:
        raise LlmtuneError("--launcher ray needs --num-workers N (training processes in total, e.g. one per GPU)")
    if opts.num_workers < 1:
        raise LlmtuneError(f"--num-workers must be >= 1, got {opts.num_workers}")
    if opts.max_failures is not None and opts.max_failures < -1:
        raise LlmtuneError(f"--max-failures must be >= 0 (or -1: no limit), got {opts.max_failures}")
    if opts.ray_address is not None:
        check_address(opts.ray_address)
    from llmtune.launch import under_launcher

    if under_launcher():
        raise LlmtuneError(
            "--launcher ray given inside a launched run: drop it, or run llmtune without accelerate launch / torchrun"
        )
    return parse_resources(opts.resources_per_worker) if opts.resources_per_worker is not None else None


# ---------------------------------------------------------------------------------------------
# which checkpoint an attempt starts from


def _stamp(checkpoint: Path) -> int:
    from llmtune.checkpoint import MARKER

    return (checkpoint / MARKER).stat().st_mtime_ns


def checkpoints_before(output_dir: Path) -> dict[str, int]:
    """The complete checkpoints in ``output_dir`` before the launch (name -> marker time)."""
    from llmtune.checkpoint import complete_checkpoints

    return {p.name: _stamp(p) for p in complete_checkpoints(output_dir)}


def attempt_values(cfg: Any, before: dict[str, int]) -> dict[str, Any]:
    """Config values for one attempt of the worker group (``{}``: run ``cfg`` as given).

    The first attempt runs the config as given. After a restart, the newest complete checkpoint
    this launch wrote (one not among ``before``, the checkpoints there at launch) is resumed, and
    ``--overwrite`` is off (it already happened, and would delete that checkpoint). Without such a
    checkpoint the attempt starts over as the first did; the files an earlier attempt left in a
    folder that was empty at launch are allowed (``--resume auto`` finds nothing there to resume).
    """
    from llmtune.checkpoint import complete_checkpoints

    output_dir = Path(cfg.train.output_dir)
    ours = [p for p in complete_checkpoints(output_dir) if before.get(p.name) != _stamp(p)]
    if ours:
        return {"train.resume": str(ours[-1]), "train.overwrite": False}
    left = output_dir.is_dir() and any(output_dir.iterdir())
    if left and cfg.train.resume is None and not cfg.train.overwrite and not before:
        return {"train.resume": "auto"}
    return {}


# ---------------------------------------------------------------------------------------------
# the driver


class _Hub:
    """A small Ray actor shared by the driver and the workers of every attempt: counts attempts,
    keeps the first user error per rank (so a restart does not retry it), and carries rank 0's
    terminal output to the driver (Ray's own log forwarding would mix in every Ray process's)."""

    def __init__(self) -> None:
        self.attempts = 0
        self.errors: dict[int, tuple[str, int]] = {}
        self.output: list[tuple[str, str]] = []

    def begin_attempt(self) -> tuple[int, bool]:
        self.attempts += 1
        return self.attempts, bool(self.errors)

    def record(self, rank: int, message: str, exit_code: int) -> None:
        self.errors.setdefault(rank, (message, exit_code))

    def summary(self) -> tuple[int, tuple[str, int] | None]:
        if not self.errors:
            return self.attempts, None
        return self.attempts, self.errors.get(0) or self.errors[min(self.errors)]

    def write(self, stream: str, text: str) -> None:
        self.output.append((stream, text))

    def drain(self) -> list[tuple[str, str]]:
        out, self.output = self.output, []
        return out


class _Relay:
    """``sys.stdout`` / ``sys.stderr`` of rank 0: whole lines go to the hub, in order."""

    encoding = "utf-8"
    errors = "strict"

    def __init__(self, hub: Any, stream: str) -> None:
        self.hub, self.stream, self.pending = hub, stream, ""

    def write(self, text: str) -> int:
        self.pending += text
        if "\n" in self.pending:
            done, _, self.pending = self.pending.rpartition("\n")
            self.hub.write.remote(self.stream, done + "\n")
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.hub.write.remote(self.stream, self.pending)
            self.pending = ""

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


class _Pump:
    """On the driver: prints what rank 0 wrote, while the run goes on."""

    def __init__(self, ray: Any, hub: Any) -> None:
        import threading

        self.ray, self.hub = ray, hub
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="llmtune-ray-output", daemon=True)
        self.thread.start()

    def _emit(self) -> None:
        for stream, text in self.ray.get(self.hub.drain.remote()):
            out = sys.stderr if stream == "stderr" else sys.stdout
            out.write(text)
            out.flush()

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self._emit()
            except Exception:  # the cluster went away: the main thread reports it
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        try:
            self._emit()
        except Exception:
            pass


def _import_ray() -> Any:
    # Read by ray at import: rank 0's lines reach the terminal as they are (no "(RayTrainWorker
    # pid=...)" prefix), prints stay prints (not Ray Train log records), no usage reporting.
    os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_TRAIN_V2_ENABLED", "1").strip().lower() in ("0", "false", "no", "off"):
        raise LlmtuneError("--launcher ray runs on Ray Train V2: unset RAY_TRAIN_V2_ENABLED (it is 0 here)")
    try:
        import ray
        import ray.train.torch  # ray[train]: the torch integration, pandas, pyarrow
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "ray"
        raise LlmtuneError(
            f"--launcher ray needs Ray Train, which is not installed here (no module {missing!r}): {INSTALL_HINT}"
        ) from None
    return ray


_PROBE = """
import logging, sys
import ray
try:
    ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(3)
ray.shutdown()
"""


def _resolve(address: str) -> str | None:
    """The GCS address ``ray.init`` will dial for ``address`` (Ray replaces a loopback host with
    the machine's own address, and looks ``auto`` up); None: ``auto`` found no cluster."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # moved in another Ray version: dial what was given
        return None if address == "auto" else address
    try:
        return canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError):
        return None if address == "auto" else address


def _probe(address: str, flag: str) -> None:
    """Connect once in a subprocess, within :data:`CONNECT_TIMEOUT_S`: ``ray.init`` waits minutes
    where nothing (or something else) listens, printing gRPC warnings all along."""
    host, _, port = address.rpartition(":")
    fix = f"start one with `ray start --head --port {port}`, or pass another --ray-address"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else exc.strerror or type(exc).__name__
        raise LlmtuneError(f"{flag}: no Ray cluster at {address} ({reason}): {fix}") from None
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, address],
            capture_output=True,
            text=True,
            timeout=CONNECT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LlmtuneError(
            f"{flag}: the port accepts connections but no Ray cluster answered within {CONNECT_TIMEOUT_S} s "
            f"(is it the head's GCS port, 6379 by default, not the dashboard's?): {fix}"
        ) from None
    if proc.returncode != 0:
        reason = one_line(proc.stdout.strip() or proc.stderr.strip() or f"exit code {proc.returncode}", limit=300)
        raise LlmtuneError(f"{flag}: connecting to the Ray cluster at {address} failed: {reason}")


def _connect(ray: Any, opts: RayOptions, debug: bool) -> str:
    """``ray.init`` on the cluster ``--ray-address`` names; returns a description of it."""
    import logging

    env_vars = {k: v for k, v in os.environ.items() if k.startswith(PROPAGATED_ENV_PREFIXES)}
    common = {
        "runtime_env": {"env_vars": env_vars},
        "logging_level": logging.INFO if debug else logging.ERROR,
        "log_to_driver": debug,  # --debug: every Ray process's output, else rank 0's (see _Hub)
    }
    address, flag = opts.ray_address, f"--ray-address {opts.ray_address}"
    if address is None and os.environ.get("RAY_ADDRESS"):
        address, flag = os.environ["RAY_ADDRESS"], f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
        check_address(address)
    if address is None:
        ray.init(address="local", include_dashboard=False, **common)
        return "the local Ray instance"
    resolved = _resolve(address)
    if resolved is None:
        raise LlmtuneError(
            f"{flag}: no running Ray cluster found on this machine: start one with `ray start --head`, "
            "or pass the head's HOST:PORT"
        )
    if resolved != address:
        flag += f" (Ray dials {resolved})"
    _probe(resolved, flag)
    ray.init(address=resolved, **common)
    return f"the Ray cluster at {resolved}"


def _worker_resources(ray: Any, opts: RayOptions, resources: dict[str, float] | None, where: str) -> dict[str, float]:
    cluster = ray.cluster_resources()
    if resources is None:
        resources = {"CPU": 1.0, "GPU": 1.0} if cluster.get("GPU", 0) >= 1 else {"CPU": 1.0}
    n = opts.num_workers or 1
    for name, amount in resources.items():
        need, have = amount * n, cluster.get(name, 0.0)
        if need > have + 1e-9:
            raise LlmtuneError(
                f"--num-workers {n} with {_show(resources)} each needs {need:g} {name}; {where} has {have:g}: "
                "lower --num-workers, or set --resources-per-worker"
            )
    return resources


def _show(resources: dict[str, float]) -> str:
    return json.dumps({k: int(v) if float(v).is_integer() else v for k, v in resources.items()})


class RayRunFailed(LlmtuneError):
    """Training failed in a Ray worker for a reason other than a user error (exit code 1)."""

    exit_code = 1


class RayRunInterrupted(LlmtuneError):
    """Ctrl-C: Ray stopped the workers (exit code 130, as for an interrupted plain run)."""

    exit_code = 130


def run_on_ray(cfg: Any, opts: RayOptions, resources: dict[str, float] | None, debug: bool = False) -> None:
    """Run ``cfg`` (a resolved RunConfig) on Ray Train workers; raises LlmtuneError on failure."""
    from llmtune.checkpoint import resolve_resume
    from llmtune.outputs import check_output_dir, default_output_dir
    from llmtune.runner import command_line

    # The checks a plain run makes first (check_runtime, the hardware's, run in the workers: the
    # driver may have no GPU where the workers have).
    output_dir = default_output_dir(cfg)
    cfg = cfg.with_values({"train.output_dir": str(output_dir)})
    check_output_dir(output_dir, cfg.train.overwrite, allow_existing=cfg.train.resume is not None)
    resolve_resume(cfg.train.resume, output_dir)
    ray = _import_ray()
    where = _connect(ray, opts, debug)
    import shutil
    import tempfile

    storage = tempfile.mkdtemp(prefix="llmtune-ray-")
    try:
        resources = _worker_resources(ray, opts, resources, where)
        _fit(ray, cfg, opts, resources, storage, command_line(), debug)
    finally:
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)


def _fit(ray: Any, cfg: Any, opts: RayOptions, resources: dict, storage: str, command: str, debug: bool) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.config import LoggingConfig
    from ray.train.v2.api.exceptions import TrainingFailedError

    hub = ray.remote(num_cpus=0)(_Hub).remote()
    use_gpu = resources.get("GPU", 0) > 0
    config = {
        "cfg": cfg,
        "before": checkpoints_before(Path(cfg.train.output_dir)),
        "cwd": os.getcwd(),
        "command": command,
        "debug": debug,
        "use_gpu": use_gpu,
        "resources": _show(resources),
        "hub": hub,
        "max_failures": opts.max_failures or 0,
    }
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=opts.num_workers or 1, use_gpu=use_gpu, resources_per_worker=dict(resources)
        ),
        run_config=RunConfig(
            name=f"llmtune-{cfg.task}-{os.getpid()}",
            storage_path=storage,
            failure_config=FailureConfig(max_failures=opts.max_failures or 0),
            logging_config=LoggingConfig(log_level="INFO" if debug else "ERROR"),
        ),
    )
    failure: Exception | None = None
    pump = _Pump(ray, hub)
    previous_int = signal.getsignal(signal.SIGINT)  # fit() installs Ray's own, for the run
    try:
        trainer.fit()
    except TrainingFailedError as exc:
        failure = exc
    except SystemExit as exc:
        # Ray's Ctrl-C handler: it aborted the run (workers stopped, no checkpoint saved) and exits.
        raise RayRunInterrupted(
            f"interrupted: the Ray workers were stopped; continue from the newest checkpoint in "
            f"{cfg.train.output_dir} with the same command and --resume auto"
        ) from exc
    finally:
        signal.signal(signal.SIGINT, previous_int)
        pump.close()
    attempts, user_error = ray.get(hub.summary.remote())
    if user_error is not None:
        message, code = user_error
        error = LlmtuneError(message)
        error.exit_code = code
        raise error
    if failure is None:
        return
    if debug:
        raise failure
    raise RayRunFailed(_failure_line(failure, attempts))


def _failure_line(failure: Exception, attempts: int) -> str:
    failures = getattr(failure, "worker_failures", None) or {}
    if failures:
        # A worker process that died is the cause; the others' errors (a collective that lost a
        # peer) are its echo.
        died = [
            r for r, exc in failures.items() if "ActorDied" in type(exc).__name__ or "ActorError" in type(exc).__name__
        ]
        rank = min(died or failures)
        exc = failures[rank]
        what = f"Ray worker rank {rank} failed: {type(exc).__name__}: {one_line(exc, limit=300)}"
    else:
        cause = getattr(failure, "controller_failure", failure)
        what = f"Ray Train failed: {type(cause).__name__}: {one_line(cause, limit=300)}"
    tries = f" (after {attempts - 1} restart{'s' if attempts != 2 else ''})" if attempts > 1 else ""
    return f"{what}{tries} (rerun with --debug for the traceback)"


# ---------------------------------------------------------------------------------------------
# the workers


def _train_worker(config: dict) -> None:
    """Ray Train's training function: one llmtune worker (runs in every Ray worker, each attempt)."""
    import ray
    import ray.train

    context = ray.train.get_context()
    rank = context.get_world_rank()
    hub = config["hub"]
    relay = rank == 0 and not config["debug"]  # with --debug Ray forwards every process's output
    saved = sys.stdout, sys.stderr
    if relay:
        sys.stdout, sys.stderr = _Relay(hub, "stdout"), _Relay(hub, "stderr")  # type: ignore[assignment]
    try:
        _run_worker(config, rank, context.get_world_size())
    except LostConnection:
        raise  # another worker died: a failure Ray restarts the group for, not a user error
    except LlmtuneError as exc:
        # Recorded for the driver (one error line) and for a restart (which then does nothing);
        # raised so Ray stops the other workers, which may wait for this one in a collective.
        if config["debug"]:
            import traceback

            traceback.print_exc()
        ray.get(hub.record.remote(rank, str(exc), exc.exit_code))
        raise WorkerUserError(str(exc)) from None
    finally:
        if relay:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            sys.stdout, sys.stderr = saved
            ray.get(hub.summary.remote())  # runs after this worker's writes: all of them arrived


class WorkerUserError(Exception):
    """What a worker raises after recording a user error (a plain exception: Ray pickles it)."""


def _run_worker(config: dict, rank: int, world: int) -> None:
    import ray
    import torch.distributed as dist

    host = ray.util.get_node_ip_address()
    cfg = config["cfg"]
    if os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])  # relative paths (data, --output-dir) mean what they meant to the driver
    elif not os.path.isabs(cfg.train.output_dir):
        raise LlmtuneError(
            f"the working directory {config['cwd']} does not exist on Ray node {host}: run llmtune from a folder "
            "every node sees (shared storage)"
        )
    if not config["use_gpu"]:
        os.environ["ACCELERATE_USE_CPU"] = "true"  # gloo workers on CPU, even on a machine with GPUs
    collective = dist.is_available() and dist.is_initialized() and world > 1
    workers: list[Any] = [(rank, os.getpid(), host)]
    if collective:
        workers = [None] * world
        dist.all_gather_object(workers, (rank, os.getpid(), host))
    decision: list[Any] = [None]
    if rank == 0:
        attempt, failed = ray.get(config["hub"].begin_attempt.remote())
        decision = [(attempt, None if failed else attempt_values(cfg, config["before"]))]
    if collective:
        dist.broadcast_object_list(decision, src=0)
    attempt, values = decision[0]
    if values is None:
        return  # a user error ended an earlier attempt: the driver reports it, nothing to retry
    cfg = cfg.with_values(values)
    if rank == 0 and cfg.train.progress != "quiet":
        shown = ", ".join(f"rank {r} pid {pid} on {ip}" for r, pid, ip in workers)
        if attempt == 1:
            print(f"llmtune: Ray Train: {world} worker(s), {config['resources']} each: {shown}", flush=True)
        else:
            limit = ", no limit" if config["max_failures"] < 0 else f" of {config['max_failures']}"
            print(
                f"llmtune: Ray restarted the workers after a failure (restart {attempt - 1}{limit}): {shown}",
                flush=True,
            )
    from llmtune.runner import run_train

    run_train(cfg, command=config["command"], debug=config["debug"])


# ---------------------------------------------------------------------------------------------
# CLI glue


def ray_launchable(fn: Callable) -> Callable:
    """Add ``--launcher`` and the Ray flags to a Typer command; it receives them as ``ray_launch=``."""
    import typer

    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    kept = [
        p.replace(annotation=hints.get(name, p.annotation))
        for name, p in sig.parameters.items()
        if name != "ray_launch"
    ]
    added = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, flag, help=text, rich_help_panel="Ray"),
            annotation=_TYPES[name],
        )
        for name, (flag, text) in _OPTIONS.items()
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opts = RayOptions(**{name: kwargs.pop(name, None) for name in _OPTIONS})
        return fn(*args, ray_launch=opts, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*kept, *added])  # type: ignore[attr-defined]
    annotations = {k: v for k, v in hints.items() if k != "ray_launch"}
    annotations.update(_TYPES)
    wrapper.__annotations__ = annotations
    del wrapper.__wrapped__  # Typer must read our signature, not the wrapped function's
    return wrapper
