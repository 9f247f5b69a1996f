"""Every shipped recipe stays runnable, so none rots unnoticed.

Each recipe in ``recipes/`` (found at collection time: recipes other people add are covered too)
falls in exactly one class, and each class is checked:

- **offline**: model/tokenizer/data all local (``builtin:``, ``package:``, presets): trained end to
  end for two steps through the real CLI, metrics and model written;
- **hub**: needs the Hugging Face Hub (a model id or a Hub dataset): its model is built from a
  tiny config of the same architecture (``HUB_MODEL_TYPES`` maps each Hub model id to its
  ``model_type``; a recipe with an id missing there fails until the id is added) or from its own
  preset/config, with the task's auto class, and run forward once, with the Hub blocked;
- **settings**: no model at all (the defaults ``llmtune pretrain --objective clm`` starts from):
  must be the default recipe of its task and validate.
"""

from __future__ import annotations

import json

import pytest

from llmtune.config import read_yaml
from llmtune.data import is_local_spec
from llmtune.presets import get_preset
from llmtune.recipes import list_recipes
from llmtune.resolve import load_config

# Hub model id -> model_type of its config.json (what AutoConfig would read from the Hub).
HUB_MODEL_TYPES = {
    "distilbert-base-uncased": "distilbert",
    "bert-base-uncased": "bert",
    "bert-base-cased": "bert",
    "google-t5/t5-small": "t5",
    "Helsinki-NLP/opus-mt-en-de": "marian",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "llama",
    "facebook/wav2vec2-base": "wav2vec2",
}
# Size keys shrunk to a tiny model, whichever of them an architecture has.
TINY = {
    **dict.fromkeys(("num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers", "n_layers"), 2),
    **dict.fromkeys(("encoder_layers", "decoder_layers"), 2),
    **dict.fromkeys(("hidden_size", "d_model", "n_embd", "dim"), 32),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_heads", "n_heads", "num_key_value_heads"), 2),
    **dict.fromkeys(("encoder_attention_heads", "decoder_attention_heads"), 2),
    **dict.fromkeys(("intermediate_size", "d_ff", "encoder_ffn_dim", "decoder_ffn_dim", "hidden_dim", "n_inner"), 64),
    "d_kv": 16,
    "head_dim": 16,
}
OFFLINE_RUN = ["--max-steps", "2", "--set", "data.max_train_samples=64", "--set", "data.max_eval_samples=8"]


def recipe_class(tree: dict) -> str:
    model, data = tree.get("model") or {}, tree.get("data") or {}
    if not model.get("name_or_path") and not model.get("config"):
        return "settings"
    local_model = all(
        spec is None or is_local_spec(spec) or get_preset(spec) is not None
        for spec in (model.get("name_or_path"), model.get("tokenizer"), model.get("config"))
    )
    tokenizer = model.get("tokenizer")
    local_tokenizer = tokenizer is None or tokenizer.startswith(("builtin:", "package:"))
    dataset = data.get("dataset")
    local_data = dataset is not None and dataset.startswith(("builtin:", "package:"))
    return "offline" if local_model and local_tokenizer and local_data else "hub"


RECIPES = {name: (path, recipe_class(read_yaml(path))) for name, path in list_recipes()}


def test_every_recipe_has_a_class():
    assert RECIPES, "no recipes found"
    assert {cls for _, cls in RECIPES.values()} <= {"offline", "hub", "settings"}
    # The shipped offline recipes the README advertises are among them.
    offline = {name for name, (_, cls) in RECIPES.items() if cls == "offline"}
    assert {"sentiment-demo", "clm-smoke", "mlm-smoke", "ner-smoke", "qa-smoke", "sft-smoke"} <= offline


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n, (_, cls) in RECIPES.items() if cls == "offline"))
def test_offline_recipe_runs_end_to_end(name, cli, tmp_path):
    path, _ = RECIPES[name]
    cfg = load_config(recipe=str(path))
    from llmtune.tasks import get_task

    command = "pretrain" if get_task(cfg.task).family == "lm" else "finetune"
    out = tmp_path / "out"
    result = cli(command, "--recipe", name, "-o", out, *OFFLINE_RUN)
    assert result.exit_code == 0, (result.output, result.stderr)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["train_loss"] is not None
    assert (out / "llmtune_config.yaml").is_file() and (out / "config.json").is_file()
    assert any(out.glob("*.safetensors")), sorted(p.name for p in out.iterdir())


def tiny_config(model_type: str):
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type)
    config = AutoConfig.for_model(model_type, **{k: v for k, v in TINY.items() if hasattr(default, k)})
    if getattr(config, "vocab_size", 0) is None:  # CTC heads: the vocabulary comes from the data
        config.vocab_size = 32
    return config


@pytest.mark.parametrize("name", sorted(n for n, (_, cls) in RECIPES.items() if cls == "hub"))
def test_hub_recipe_builds_its_model_offline(name, monkeypatch):
    import torch
    import transformers

    from llmtune.modeling import model_architecture
    from llmtune.tasks import get_task

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, _ = RECIPES[name]
    cfg = load_config(recipe=str(path))
    task = get_task(cfg.task)
    model_id = cfg.model.name_or_path
    if model_id is not None:
        assert model_id in HUB_MODEL_TYPES, (
            f"recipe {name}: add its Hub model '{model_id}' with its model_type to HUB_MODEL_TYPES in this test"
        )
        config = tiny_config(HUB_MODEL_TYPES[model_id])
    else:  # a preset or config file: llmtune's own path, then shrunk
        config = tiny_config(model_architecture(cfg.model).model_type)
    for key, value in cfg.model.config_overrides.items():
        setattr(config, key, value)
    model = getattr(transformers, task.auto_model).from_config(config)
    ids = torch.tensor([[3, 4, 5, 6]])
    inputs = {"input_ids": ids}
    if model.main_input_name == "input_values":  # raw audio (wav2vec2-style CTC)
        inputs = {"input_values": torch.randn(1, 16000)}
    elif hasattr(config, "num_mel_bins"):  # log-mel features (Whisper-style encoder-decoder)
        inputs = {"input_features": torch.randn(1, config.num_mel_bins, 3000)}
    elif model.main_input_name == "input_features":  # stacked filterbank frames (w2v-BERT)
        inputs = {"input_features": torch.randn(1, 50, config.feature_projection_input_dim)}
    if task.seq2seq or getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids
    with torch.no_grad():
        out = model(**inputs)
    assert any(v is not None for v in out.values())


@pytest.mark.parametrize("name", sorted(n for n, (_, cls) in RECIPES.items() if cls == "settings"))
def test_settings_recipe_is_a_task_default(name):
    from llmtune.recipes import task_default_recipe

    path, _ = RECIPES[name]
    cfg = load_config(recipe=str(path))
    assert task_default_recipe(cfg.task) == path, f"recipe {name} has no model: it must be the default of a task"
