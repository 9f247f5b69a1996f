"""Typed config: defaults, precedence, unknown keys, type checks, collected cross-field errors."""

from __future__ import annotations

import pytest
import yaml

from llmtune.config import CONFIG_FILENAME, RunConfig
from llmtune.errors import ConfigError
from llmtune.resolve import load_config


def write(tmp_path, data) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_defaults_come_from_dataclasses(tmp_path):
    cfg = load_config(recipe=write(tmp_path, {"task": "sentiment", "model": {"name_or_path": "m"}}))
    assert cfg.train.learning_rate == RunConfig().train.learning_rate
    assert cfg.data.validation_split == 0.1
    assert cfg.model.trust_remote_code is False


def test_precedence_yaml_then_set_then_flags(tmp_path):
    recipe = write(tmp_path, {"task": "sentiment", "train": {"epochs": 5, "learning_rate": 1e-3, "batch_size": 4}})
    cfg = load_config(
        recipe=recipe,
        sets=["train.epochs=7", "train.learning_rate=2e-4"],
        flags={"train.learning_rate": 3e-4, "train.batch_size": None},
    )
    assert cfg.train.epochs == 7.0  # --set beats YAML
    assert cfg.train.learning_rate == 3e-4  # flag beats --set
    assert cfg.train.batch_size == 4  # flag not given: YAML stays


def test_unknown_keys_list_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(recipe=write(tmp_path, {"task": "sentiment", "train": {"epoch": 3}, "modle": {}}))
    msg = str(err.value)
    assert "train.epoch" in msg and "epochs" in msg and "learning_rate" in msg
    assert "modle" in msg and "valid top-level keys" in msg
    assert len(err.value.problems) == 2


def test_type_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(recipe=write(tmp_path, {"task": "sentiment"}), sets=["train.batch_size=big"])
    assert "train.batch_size must be an integer" in str(err.value)


def test_cross_field_problems_collected(tmp_path):
    recipe = write(
        tmp_path,
        {"task": "sentiment", "train": {"eval_strategy": "steps", "learning_rate": -1, "precision": "fp8"}},
    )
    with pytest.raises(ConfigError) as err:
        load_config(recipe=recipe)
    problems = err.value.problems
    assert any("eval_steps" in p for p in problems)
    assert any("learning_rate" in p for p in problems)
    assert any("precision" in p for p in problems)


def test_unknown_task_lists_tasks():
    with pytest.raises(ConfigError) as err:
        load_config(task="sentimint")
    assert "unknown task 'sentimint'" in str(err.value) and "sentiment" in str(err.value)


def test_set_syntax_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(task="sentiment", sets=["train.epochs"])


def test_set_creates_nested_and_parses_yaml_values(tmp_path):
    cfg = load_config(
        recipe=write(tmp_path, {"task": "sentiment"}),
        sets=["options.label_names=[neg, pos]", "train.save_total_limit=null", "model.name_or_path=x/y"],
    )
    assert cfg.options.label_names == ["neg", "pos"]
    assert cfg.train.save_total_limit is None
    assert cfg.model.name_or_path == "x/y"


def test_task_recipe_conflict(tmp_path):
    recipe = write(tmp_path, {"task": "sentiment"})
    # same family: accepted, and --task wins
    assert load_config(recipe=recipe, task="text-classification").task == "text-classification"


def test_save_roundtrip(tmp_path):
    cfg = load_config(recipe=write(tmp_path, {"task": "sentiment", "train": {"epochs": 2}}))
    path = cfg.save(tmp_path / "out")
    assert path.name == CONFIG_FILENAME
    again = load_config(recipe=str(path))
    assert again.to_dict() == cfg.to_dict()


def test_invalid_yaml_reports_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: sentiment\ntrain:\n  epochs: [1\n")
    with pytest.raises(ConfigError) as err:
        load_config(recipe=str(path))
    assert "bad.yaml" in str(err.value) and "line" in str(err.value)


def test_task_default_recipe_values_are_reported_not_its_description():
    flags = {"model.name_or_path": "my-model", "data.dataset": "chats.jsonl", "train.max_steps": 30}
    cfg = load_config(task="sft", flags=flags)
    # the recipe's cost- and result-changing values are listed; cosmetic ones and defaults are not
    assert cfg.recipe_source == "sft.yaml"
    assert cfg.recipe_defaults["train.gradient_accumulation_steps"] == 4
    assert cfg.recipe_defaults["train.lr_scheduler"] == "cosine"
    assert cfg.recipe_defaults["options.packing"] is True
    assert "train.logging_steps" not in cfg.recipe_defaults and "train.epochs" not in cfg.recipe_defaults
    assert "model.name_or_path" not in cfg.recipe_defaults  # replaced by --model
    # the description names the recipe's model and data (No Robots...): not this run's
    assert cfg.description == "" and "No Robots" not in cfg.to_yaml()
    assert "recipe_defaults" not in cfg.to_yaml()


def test_explicit_batch_size_is_the_batch_trained_with():
    cfg = load_config(task="sft", flags={"model.name_or_path": "m", "train.batch_size": 2})
    assert cfg.train.gradient_accumulation_steps == 1 and cfg.train.batch_size == 2
    assert "not the recipe's 4" in cfg.recipe_defaults["train.gradient_accumulation_steps"]
    # asked for explicitly, accumulation stays
    cfg = load_config(task="sft", flags={"train.batch_size": 2, "train.gradient_accumulation_steps": 3})
    assert cfg.train.gradient_accumulation_steps == 3
    # an explicit recipe is taken as written, description included
    cfg = load_config(recipe="sft", flags={"train.batch_size": 2})
    assert cfg.train.gradient_accumulation_steps == 4 and cfg.recipe_defaults == {}
    assert "No Robots" in cfg.description


def test_recipe_description_kept_when_model_and_data_are_its_own():
    cfg = load_config(recipe="sentiment-demo")
    assert cfg.description.startswith("Offline demo")
    cfg = load_config(recipe="sentiment-demo", flags={"data.dataset": "mine.csv"})
    assert cfg.description == ""


def test_recipe_dataset_configuration_goes_with_its_dataset():
    cfg = load_config(task="sentiment", flags={"data.dataset": "reviews.csv"})
    assert cfg.data.config_name is None and "data.config_name" not in cfg.recipe_defaults
    assert load_config(task="sentiment").data.config_name == "sst2"


def test_with_values_derives_a_copy_and_leaves_the_config_alone():
    cfg = load_config(task="sentiment", sets=["train.epochs=2"])
    derived = cfg.with_values({"train.output_dir": "somewhere", "data.eval_split": "test"})
    assert (derived.train.output_dir, derived.data.eval_split, derived.train.epochs) == ("somewhere", "test", 2)
    assert (cfg.train.output_dir, cfg.data.eval_split) == (None, None)
    assert derived.model is cfg.model  # sections without a change are shared, not copied
    assert cfg.with_values({}) is cfg
    with pytest.raises(KeyError):
        cfg.with_values({"train.epoch": 3})
