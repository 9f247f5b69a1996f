"""Resolve a run's configuration: recipe lookup, task defaults, overrides, validation.

:mod:`llmtune.config` is the task-free schema (the dataclasses that hold every generic default,
the value checks and the YAML/override parsing). This module sits above the task registry and the
recipes: it picks the task, layers typed defaults < the task's declared defaults < the recipe <
``--set`` < explicit flags, builds the :class:`~llmtune.config.RunConfig` once and validates it.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from llmtune.config import (
    MOVED_KEYS,
    SECTIONS,
    TOP_LEVEL_KEYS,
    RunConfig,
    apply_override,
    build_dataclass,
    file_origins,
    merge_overrides,
    parse_set_overrides,
    read_yaml,
    rename_keys,
    validate_config,
)
from llmtune.errors import ConfigError
from llmtune.recipes import find_recipe, task_default_recipe
from llmtune.tasks import get_task


def build_config(
    tree: dict, source: str | None = None, validate: bool = True, origins: dict[str, tuple[str, str]] | None = None
) -> RunConfig:
    """Turn a merged dict (recipe + overrides) into a validated :class:`RunConfig`.

    ``origins`` maps dotted keys to where their value came from (see :func:`merge_overrides`);
    problems are reported against that source. Without it, ``source`` names the file.
    """
    problems: list[str] = []
    ranges: list[str] = []  # reported with the cross-field problems: all at once
    tree = copy.deepcopy(tree)
    rename_keys(tree, problems)
    for key in tree:
        if key not in TOP_LEVEL_KEYS:
            problems.append(f"unknown key '{key}'; valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}")
    cfg = RunConfig()
    task_name = tree.get("task", cfg.task)
    if not isinstance(task_name, str):
        problems.append(f"task must be a string, got {task_name!r}")
        task_name = cfg.task
    task = None
    try:
        task = get_task(task_name)
        cfg.task = task.name
    except ConfigError as exc:
        problems.extend(exc.problems)
    if "description" in tree:
        cfg.description = str(tree["description"] or "")
    options = _options_tree(task, tree.get("options"), problems) if task is not None else None
    # The task's declared defaults go under the recipe: a layer of the tree, not edits of the config.
    applied = task_defaults(task, tree, options) if task is not None else {}
    layered = copy.deepcopy(tree)
    for key, value in applied.items():
        if isinstance(layered.get(key.split(".", 1)[0], {}), dict):  # else reported by the build below
            apply_override(layered, key, value)
    option_defaults = {k.split(".", 1)[1]: v for k, v in applied.items() if k.startswith("options.")}
    if option_defaults and (options is None or isinstance(options, dict)):
        options = {**option_defaults, **(options or {})}
    for name, cls in SECTIONS.items():
        setattr(cfg, name, build_dataclass(cls, layered.get(name), name, problems, ranges))
    if task is not None:
        cfg.options = build_dataclass(task.Options, options, "options", problems, ranges)
        cfg.task_defaults = applied
        if origins is not None:
            origins = {**{key: ("default", task.name) for key in applied}, **origins}
    if problems:
        raise ConfigError(problems + ranges, source, origins)
    if validate:
        validate_config(cfg, task, source, origins, ranges)
    elif ranges:
        raise ConfigError(ranges, source, origins)
    return cfg


def _options_tree(task: Any, options: Any, problems: list[str]) -> Any:
    """The recipe's ``options:`` without sft's old LoRA keys (each reported with its new home)."""
    if not isinstance(options, dict):
        return options
    known = {f.name for f in dataclasses.fields(task.Options)}
    moved = [k for k in options if f"options.{k}" in MOVED_KEYS and k not in known]
    for key in moved:
        problems.append(f"options.{key} moved to the peft section: use {MOVED_KEYS[f'options.{key}']}")
    return {k: v for k, v in options.items() if k not in moved}


def given_keys(tree: dict) -> set[str]:
    """The dotted keys a merged tree sets (``train.learning_rate``, ``options.packing``...)."""
    keys = set()
    for section, values in tree.items():
        keys.add(str(section))
        if isinstance(values, dict):
            keys.update(f"{section}.{key}" for key in values)
    return keys


def task_defaults(task: Any, tree: dict, options: Any = None) -> dict[str, Any]:
    """The values of ``task.defaults`` that apply to this run (dotted key -> value): those whose
    key the tree (recipe, ``--set``, flags) does not set, on runs their ``when`` holds for.

    ``when`` and callable values see the config as built without task defaults (a throw-away
    build: problems in it are reported by the real build)."""
    if not task.defaults:
        return {}
    draft = RunConfig()
    for name, cls in SECTIONS.items():
        setattr(draft, name, build_dataclass(cls, tree.get(name), name, [], []))
    draft.options = build_dataclass(task.Options, options if isinstance(options, dict) else None, "options", [], [])
    given = given_keys(tree)
    applied: dict[str, Any] = {}
    for default in task.defaults:
        try:
            if default.applies(draft, given):
                applied[default.key] = default.value_for(draft)
        except (TypeError, ValueError):  # a mistyped value the real build reports in one line
            continue
    return applied


def load_config(
    recipe: str | Path | None = None,
    task: str | None = None,
    sets: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    validate: bool = True,
    flag_names: dict[str, str] | None = None,
    task_flag: str = "--task",
) -> RunConfig:
    """Merge defaults < recipe YAML < ``--set`` overrides < explicit flags, then validate.

    ``recipe`` is a recipe name or a YAML path; with no recipe, the task's default recipe (the
    one named after the task, if shipped) is used. ``flags`` maps dotted keys to values; None
    values (flags not given) are ignored. ``flag_names`` maps dotted keys to the flag that set
    them (``train.learning_rate`` -> ``--lr``), for messages.
    """
    tree: dict = {}
    source = None
    implicit = False
    if recipe is not None:
        path = find_recipe(str(recipe))
        tree = read_yaml(path)
        source = str(path)
    elif task is not None:
        path = task_default_recipe(task)
        if path is not None:
            tree = read_yaml(path)
            source = str(path)
            implicit = True
    recipe_tree = copy.deepcopy(tree)
    origins = file_origins(tree, source) if source else {}
    if task is not None:
        recipe_task = tree.get("task")
        wanted = get_task(task)
        # Tasks of one family (e.g. sentiment / text-classification) accept each other's recipes.
        if recipe is not None and recipe_task is not None and get_task(str(recipe_task)).family != wanted.family:
            raise ConfigError(
                [
                    f"{task_flag} {task} conflicts with the recipe's task '{recipe_task}': drop --task or pick another recipe"
                ],
                source,
            )
        tree["task"] = task
        origins["task"] = ("flag", task_flag)
    merge_overrides(tree, origins, sets, flags, flag_names)
    given = {key for key, _ in parse_set_overrides(sets)} | {k for k, v in (flags or {}).items() if v is not None}
    skipped = {}
    if implicit and "train.batch_size" in given and "train.gradient_accumulation_steps" not in given:
        # The batch asked for is the batch trained with: the recipe's accumulation would multiply it.
        accumulation = (tree.get("train") or {}).pop("gradient_accumulation_steps", None)
        if accumulation not in (None, 1):
            skipped["train.gradient_accumulation_steps"] = f"1 (not the recipe's {accumulation}: --batch-size given)"
    recipe_data = recipe_tree.get("data") or {}
    if recipe_data.get("config_name") and "data.dataset" in given and "data.config_name" not in given:
        (tree.get("data") or {}).pop("config_name", None)  # a configuration of the recipe's dataset
    if "description" in tree and _replaces_model_or_data(recipe_tree, tree):
        tree.pop("description")  # it describes the recipe's model and data, not this run's
    cfg = build_config(tree, source, validate=validate, origins=origins)
    if implicit:
        cfg.recipe_defaults = {**_recipe_values(recipe_tree, tree, cfg), **skipped}
        cfg.recipe_source = Path(source).name if source else ""
    return cfg


#: Recipe keys that change neither cost nor results: not listed when a default recipe is used.
_COSMETIC_KEYS = {"description", "task", "train.logging_steps", "train.save_total_limit", "train.output_dir"}


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted.count(".") == 0 and key != "config_overrides":
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _replaces_model_or_data(recipe_tree: dict, tree: dict) -> bool:
    before, after = _flatten(recipe_tree), _flatten(tree)
    keys = ("model.name_or_path", "model.config", "model.gguf_file", "data.dataset", "data.config_name")
    return any(k in before and after.get(k) != before[k] for k in keys) or any(
        k not in before and after.get(k) is not None for k in ("model.name_or_path", "data.dataset")
    )


def _recipe_values(recipe_tree: dict, tree: dict, cfg: RunConfig) -> dict:
    """The recipe's values this run kept that differ from the typed defaults (the ones worth
    telling a user who did not pick the recipe)."""
    defaults = {**_flatten(RunConfig().to_dict())}
    if cfg.options is not None and dataclasses.is_dataclass(cfg.options):
        defaults.update(_flatten({"options": dataclasses.asdict(type(cfg.options)())}))
    final = _flatten(tree)
    out = {}
    for key, value in _flatten(recipe_tree).items():
        if key in _COSMETIC_KEYS or final.get(key) != value or defaults.get(key, object()) == value:
            continue
        if key == "train.epochs" and cfg.train.max_steps > 0:
            continue  # max_steps decides
        out[key] = value
    return out
