"""Load a model for inference: the task's own hooks and :mod:`llmtune.modeling`, as ``eval`` does.

The model is an llmtune output folder (its ``llmtune_config.yaml`` names the task, columns and
options), any compatible Hugging Face folder or Hub id (``--task`` then required), a GGUF file
inside a folder (``--gguf-file``/``model.gguf_file``), or a LoRA output folder (merged: an
ordinary model; adapters only: loaded on the base model by the task). ``--set model.*`` /
``data.*`` / ``options.*`` override what was saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf", "adapter_config.json", "*.safetensors.index.json")
#: a generative model without llmtune_config.yaml: plain causal LM (adapters: sft loads them)
DEFAULT_GENERATIVE_TASK = "clm"


def saved_tree(model_path: str) -> dict[str, Any]:
    """task/data/options of the run that trained ``model_path`` (empty for other models)."""
    from llmtune.config import CONFIG_FILENAME, read_yaml

    saved = Path(model_path) / CONFIG_FILENAME
    if not saved.is_file():
        return {}
    old = read_yaml(saved)
    tree = {k: old[k] for k in ("task", "data", "options") if k in old}
    for key in ("dataset", "config_name", "eval_split", "test_split", "max_train_samples", "max_eval_samples"):
        tree.get("data", {}).pop(key, None)
    return tree


def check_weights(model_path: str, gguf_file: str | None) -> None:
    """A local folder must hold weights: one line naming the folder otherwise."""
    path = Path(model_path)
    if not path.is_dir():
        return  # a Hub id: transformers reports what is missing
    if gguf_file:
        if not (path / gguf_file).is_file():
            found = ", ".join(sorted(p.name for p in path.glob("*.gguf"))) or "none"
            raise LlmtuneError(f"GGUF file '{gguf_file}' (--gguf-file) not found in {path}; GGUF files there: {found}")
        return
    if any(next(path.glob(p), None) is not None for p in WEIGHT_PATTERNS if p != "*.gguf"):
        return
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if ggufs:
        raise LlmtuneError(f"model folder {path} holds GGUF weights: pass --gguf-file {ggufs[0]}")
    raise LlmtuneError(
        f"model folder {path} has no weights (model.safetensors, pytorch_model.bin, adapter_model.safetensors "
        f"or a .gguf file): point --model at a trained output folder"
    )


def inference_config(
    model: str,
    task: str | None = None,
    sets: list[str] | None = None,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    generative: bool = False,
) -> tuple[Any, str]:
    """The run config for inference with ``model``, and the model's location.

    ``generative``: a model without llmtune_config.yaml and without ``--task`` is a causal LM
    (otherwise ``--task`` is required)."""
    from llmtune.config import CONFIG_FILENAME, apply_override, parse_set_overrides
    from llmtune.modeling import model_location
    from llmtune.resolve import build_config

    path = model_location(model)
    tree = saved_tree(path)
    if task is not None:
        if tree.get("task") and tree["task"] != task:
            tree.pop("options", None)
        tree["task"] = task
    if "task" not in tree:
        if not generative:
            raise LlmtuneError(f"cannot tell which task {model} was trained for: pass --task")
        tree["task"] = "sft" if (Path(path) / "adapter_config.json").is_file() else DEFAULT_GENERATIVE_TASK
    for key, value in parse_set_overrides(sets):
        apply_override(tree, key, value)
    if gguf_file is not None:
        apply_override(tree, "model.gguf_file", gguf_file)
    if trust_remote_code:
        apply_override(tree, "model.trust_remote_code", True)
    saved = Path(path) / CONFIG_FILENAME
    cfg = build_config(tree, source=str(saved) if saved.is_file() else None)
    return cfg, path


def inference_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_for_inference(
    model: str,
    task: str | None = None,
    sets: list[str] | None = None,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    generative: bool = False,
    debug: bool = False,
    require_generative: bool | None = None,
) -> Any:
    """A ready :class:`~llmtune.tasks.base.RunContext` (``training=False``): tokenizer, model in
    eval mode on the GPU when there is one, ``ctx.state["task"]`` the task object.

    ``generative``: default to a causal LM when the task is unknown; ``require_generative``
    (default: the same) refuses models of other tasks."""
    from llmtune.console import quiet_libraries
    from llmtune.modeling import prepare_hub_access
    from llmtune.tasks import get_task
    from llmtune.tasks.base import RunContext

    cfg, path = inference_config(model, task, sets, gguf_file, trust_remote_code, generative)
    task_obj = get_task(cfg.task)
    if (generative if require_generative is None else require_generative) and not task_obj.generative:
        raise LlmtuneError(
            f"{model} is a {task_obj.name} model, not a text generator: use `llmtune predict` "
            f"(generate, chat and serve's completions need a causal LM: sft or clm)"
        )
    check_weights(path, cfg.model.gguf_file)
    prepare_hub_access(path)
    quiet_libraries(debug)
    ctx = RunContext(cfg=cfg, training=False, model_path=path)
    ctx.tokenizer = task_obj.load_tokenizer(ctx)
    ctx.model = task_obj.load_trained_model(ctx)
    ctx.model.eval()
    device = inference_device()
    if device != "cpu":
        ctx.model.to(device)
    ctx.state["task"] = task_obj
    return ctx
