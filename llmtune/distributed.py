"""Inside a run over several processes or machines: what the processes agree on.

- which machine a process is on (:func:`machine_rank`, :func:`machine_name`), for messages;
- the order of data preparation (:func:`machine_first`): the main process first, then the first
  process of every other machine, then the others. The tokenized ``datasets`` cache is then built
  once on each machine that has a cache of its own, and once in all when machines share one;
- problems found by some processes stop all of them, with the same message on every machine
  (:func:`stop_together`), instead of one process leaving and the others waiting for it at the
  next collective;
- a lost connection to another process (its machine died or was killed) is recognised
  (:func:`lost_connection`) and reported as such (:class:`LostConnection`).

Module level stays torch-free.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from llmtune.errors import LlmtuneError
from llmtune.launch import MACHINE_RANK_ENV

T = TypeVar("T")

# What gloo, NCCL and the TCP store say when the process at the other end is gone.
_LOST = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "ncclRemoteError",
    "remote process exited",
    "NCCL communicator was aborted",
)


class LostConnection(LlmtuneError):
    """Another process of the run is gone (its machine stopped, was killed or lost its network)."""

    exit_code = 1


def machine_rank() -> int:
    """This machine's rank: ``--machine-rank`` as given, else torch elastic's node rank."""
    for name in (MACHINE_RANK_ENV, "GROUP_RANK"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def machine_name() -> str:
    """``machine rank R (host H)``: which machine a message is about."""
    return f"machine rank {machine_rank()} (host {socket.gethostname()})"


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather(value: Any) -> list[Any]:
    """Every process's ``value`` (picklable), in rank order; a collective: all processes call it."""
    if not _initialized():
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (a collective)."""
    return any(gather(bool(flag)))


def stop_together(problem: str | None, error: BaseException | None = None) -> None:
    """Every process passes its problem (None: none); if any has one, every process stops.

    The process whose problem it is raises ``error`` (its own exception, when given); the others
    raise :class:`LlmtuneError` with the first problem in rank order, so every machine says the
    same thing.
    """
    problems = [p for p in gather(problem) if p is not None]
    if not problems:
        return
    if error is not None:
        raise error
    raise LlmtuneError(problems[0])


def _phase(state: Any) -> int:
    if state.is_main_process:
        return 0
    return 1 if state.is_local_main_process else 2


def machine_first(state: Any, work: Callable[[], T]) -> T:
    """``work()`` on the main process, then on the first process of each other machine, then on
    the rest (``state``: accelerate's ``PartialState``).

    accelerate's ``main_process_first`` runs the main process first and then every other process
    at once: on a machine that does not share the main's ``datasets`` cache, all of its processes
    would then tokenize at the same time. Here each machine's first process fills that machine's
    cache (or finds the shared one filled) before its other processes read it. A user error in a
    phase stops every process with that message (:func:`stop_together`), instead of leaving the
    others waiting at the next phase.
    """
    if state.num_processes == 1:
        return work()
    result: Any = None
    mine = _phase(state)
    for phase in (0, 1, 2):
        problem, error = None, None
        if phase == mine:
            try:
                result = work()
            except LlmtuneError as exc:
                problem, error = str(exc), exc
        stop_together(problem, error)
    return result


def lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` says that another process of the run is gone."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistNetworkError", ())):
        return True
    text = str(exc)
    return any(marker in text for marker in _LOST)
