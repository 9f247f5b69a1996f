"""Config resolution: the task's declared defaults sit between the typed defaults and the recipe."""

from __future__ import annotations

import pytest
import yaml

from llmtune.errors import ConfigError
from llmtune.resolve import build_config, load_config, task_defaults
from llmtune.tasks import all_tasks, get_task
from llmtune.tasks.base import Task


def test_task_default_applies_only_where_nothing_sets_the_key():
    assert build_config({"task": "qa"}).data.max_length == 384
    assert build_config({"task": "qa"}).task_defaults == {"data.max_length": 384, "train.group_by_length": False}
    cfg = build_config({"task": "qa", "data": {"max_length": 256}})
    assert cfg.data.max_length == 256 and "data.max_length" not in cfg.task_defaults
    cfg = load_config(task="qa", sets=["data.max_length=200", "options.doc_stride=50"])
    assert cfg.data.max_length == 200
    # the default of another task is the typed one
    assert build_config({"task": "sentiment"}).data.max_length == 256


def test_conditional_defaults_follow_the_run():
    scratch = {"task": "clm", "model": {"config": "llama-tiny", "tokenizer": "builtin:tiny_chat_llama"}}
    assert build_config(scratch).train.learning_rate == 5e-4
    assert build_config({"task": "clm", "model": {"name_or_path": "m"}}).train.learning_rate == 5e-5
    stream = {**scratch, "data": {"dataset": "x.txt", "streaming": True}, "train": {"max_steps": 40}}
    cfg = build_config(stream)
    assert (cfg.train.eval_strategy, cfg.train.eval_steps) == ("steps", 10)
    # eval_steps follows eval_strategy: an explicit strategy keeps the typed eval_steps
    cfg = build_config({**stream, "train": {"max_steps": 40, "eval_strategy": "no"}})
    assert (cfg.train.eval_strategy, cfg.train.eval_steps) == ("no", None)
    assert build_config({"task": "sft", "options": {"packing": True}}).train.group_by_length is False
    assert build_config({"task": "sft"}).train.group_by_length is True


def test_a_problem_with_a_task_default_names_its_source():
    with pytest.raises(ConfigError) as err:
        load_config(task="qa", sets=["options.doc_stride=400"])
    assert "options.doc_stride must be < data.max_length (384)" in str(err.value)


def test_a_mistyped_value_is_reported_not_crashed_on_by_a_default_condition():
    with pytest.raises(ConfigError) as err:
        build_config({"task": "clm", "data": {"streaming": True}, "train": {"max_steps": "many"}})
    assert "train.max_steps must be an integer" in str(err.value)


def test_tasks_declare_defaults_as_data_and_never_edit_a_built_config():
    assert not hasattr(Task, "apply_defaults")
    for task in all_tasks():
        assert not hasattr(task, "apply_defaults"), task.name
        for default in task.defaults:
            section = default.key.split(".", 1)[0]
            assert section in ("model", "data", "train", "peft", "options") and default.why


def test_task_defaults_is_empty_where_the_recipe_sets_every_key():
    tree = {"task": "qa", "data": {"max_length": 256}, "train": {"group_by_length": True}}
    assert task_defaults(get_task("qa"), tree) == {}


def test_dry_run_and_recipes_show_name_the_task_defaults(cli):
    result = cli("finetune", "--task", "qa", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "# llmtune: task qa's own defaults: train.group_by_length=false" in result.output
    yaml.safe_load(result.output)  # still a valid recipe: the notes are comments
    shown = cli("recipes", "show", "qa")
    assert shown.exit_code == 0
    assert "#   data.max_length=384: the usual SQuAD window" in shown.output
    assert yaml.safe_load(shown.output)["task"] == "qa"
