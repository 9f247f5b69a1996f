"""Recipes: YAML files that override the typed defaults in :mod:`llmtune.config`.

Shipped recipes live in the top-level ``recipes/`` folder of the source tree; the wheel copies
them into ``llmtune/recipes`` so an installed tool finds them too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from llmtune.config import read_yaml
from llmtune.errors import ConfigError, LlmtuneError
from llmtune.paths import recipes_dir
from llmtune.tasks import get_task


def list_recipes() -> list[tuple[str, Path]]:
    return sorted((p.stem, p) for p in recipes_dir().glob("*.yaml"))


def recipe_names() -> list[str]:
    return [name for name, _ in list_recipes()]


def find_recipe(name_or_path: str) -> Path:
    """A shipped recipe by name (``sentiment-demo``) or a path to a YAML file."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = recipes_dir() / f"{name_or_path}.yaml"
    if "/" not in name_or_path and shipped.is_file():  # a folder of that name in cwd does not shadow it
        return shipped
    if path.suffix in (".yaml", ".yml") or path.exists():
        raise ConfigError([f"recipe file not found: {path} (shipped recipes: {', '.join(recipe_names())})"])
    raise ConfigError(
        [f"unknown recipe '{name_or_path}'; shipped recipes: {', '.join(recipe_names())} (or pass a .yaml path)"]
    )


def task_default_recipe(task: str) -> Path | None:
    """The recipe named after a task (``recipes/<task>.yaml``), used when no --recipe is given."""
    name = get_task(task).name
    path = recipes_dir() / f"{name}.yaml"
    return path if path.is_file() else None


def recipe_description(path: Path) -> str:
    try:
        data = read_yaml(path)
    except ConfigError:
        return "(invalid YAML)"
    return str(data.get("description") or "").strip().splitlines()[0] if data.get("description") else ""


def recipe_defaults_note(cfg: object) -> str | None:
    """One line naming the values a task's default recipe set (no --recipe given), or None."""
    values = getattr(cfg, "recipe_defaults", None)
    if not values:
        return None
    shown = ", ".join(f"{k}={v}" for k, v in values.items())
    source = getattr(cfg, "recipe_source", "")
    return f"llmtune: no --recipe given, so the task's default recipe {source} set: {shown} (change any with --set KEY=VALUE)"


def task_defaults_note(cfg: object) -> str | None:
    """One line naming the defaults the task declares (``Task.defaults``) that this run took, with
    why, or None."""
    values = getattr(cfg, "task_defaults", None)
    if not values:
        return None
    why = {d.key: d.why for d in get_task(str(getattr(cfg, "task", ""))).defaults}
    shown = "; ".join(f"{k}={_scalar(v)} ({why.get(k, '')})" for k, v in values.items())
    return f"llmtune: task {cfg.task}'s own defaults: {shown} (change any with --set KEY=VALUE)"


def task_defaults_comment(task_name: str) -> str:
    """The defaults a task declares, as YAML comment lines (``recipes show``)."""
    task = get_task(task_name)
    if not task.defaults:
        return ""
    lines = [f"# task {task.name}'s own defaults, used where the recipe does not set the key:"]
    for d in task.defaults:
        value = "computed" if callable(d.value) else _scalar(d.value)
        when = " (some runs)" if d.when is not None else ""
        lines.append(f"#   {d.key}={value}{when}: {d.why}")
    return "\n".join(lines)


def _scalar(value: object) -> str:
    return "true" if value is True else "false" if value is False else str(value)


def copy_recipe(name: str, dest: str) -> Path:
    src = find_recipe(name)
    target = Path(dest).expanduser()
    if target.is_dir():
        target = target / src.name
    if target.exists():
        raise LlmtuneError(f"{target} already exists: choose another destination or delete it first")
    if not target.parent.is_dir():
        raise LlmtuneError(f"destination folder {target.parent} does not exist")
    shutil.copyfile(src, target)
    return target
