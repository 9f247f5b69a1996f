"""Task registry.

Every module or package here that defines ``TASKS = [...]`` contributes tasks: adding a task is
one new module or package (plus its recipes). ``base`` (the contract) and ``common`` (code shared
by task packages) hold no tasks. Task modules must not import torch/transformers at module level,
so that ``llmtune recipes validate`` and ``--help`` stay instant.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from llmtune.errors import ConfigError
from llmtune.tasks.base import Task

__all__ = ["Task", "all_tasks", "get_task", "task_names"]


@lru_cache(maxsize=1)
def _registry() -> dict[str, Task]:
    table: dict[str, Task] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in ("base", "common"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for task in getattr(module, "TASKS", ()):
            for key in (task.name, *task.aliases):
                if key in table:
                    raise RuntimeError(f"task name {key!r} registered twice")
                table[key] = task
    return table


def all_tasks() -> list[Task]:
    seen: dict[str, Task] = {}
    for task in _registry().values():
        seen.setdefault(task.name, task)
    return list(seen.values())


def task_names() -> list[str]:
    return sorted(_registry())


def get_task(name: str) -> Task:
    table = _registry()
    key = name.strip().lower().replace("_", "-")
    if key not in table:
        raise ConfigError([f"unknown task '{name}'; available tasks: {', '.join(task_names())}"])
    return table[key]
