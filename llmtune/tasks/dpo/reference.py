"""The dpo reference model: which one a run scores against, loading one, freezing it.

Module level stays torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtune.tasks.base import RunContext
from llmtune.tasks.common.policy import disable_dropout
from llmtune.tasks.dpo.options import REFERENCE_FREE


def freeze(model: Any) -> Any:
    model.eval()
    model.requires_grad_(False)
    return model


def load_reference(ctx: RunContext, spec: str, gguf_file: str | None, auto_model: str) -> Any:
    """A frozen ``AutoModelForCausalLM`` from a folder or Hub id (GGUF de-quantized)."""
    import dataclasses

    from llmtune.loading import load_model

    model_args = dataclasses.replace(ctx.cfg.model, name_or_path=spec, gguf_file=gguf_file, config_overrides={})
    ref_ctx = RunContext(cfg=dataclasses.replace(ctx.cfg, model=model_args), training=True, model_path=spec)
    ref_ctx.tokenizer = ctx.tokenizer
    model = load_model(ref_ctx, auto_model)
    disable_dropout(model)
    return freeze(model)


def training_reference(ctx: RunContext, model: Any, auto_model: str) -> Any:
    """The reference of a training run (``ctx.state["reference"]``): None (reference-free loss, or
    the data holds reference log-probs), a loaded ``options.reference_model``, "precompute",
    "adapters" (the policy with its adapters disabled) or a frozen copy of ``model``."""
    import copy

    from llmtune.adapters import enabled as adapters_enabled
    from llmtune.adapters import is_peft_model

    o = ctx.cfg.options
    if o.loss_type in REFERENCE_FREE or ctx.state.get("ref_columns"):
        return None
    if o.reference_model:
        return load_reference(ctx, o.reference_model, None, auto_model)
    if o.precompute_reference:
        return "precompute"
    if is_peft_model(model) or adapters_enabled(ctx.cfg):
        # the runner wraps the model in adapters after build_model: disabling them is the reference
        return "adapters"
    return freeze(copy.deepcopy(model))


def eval_reference(ctx: RunContext, task_name: str) -> Any:
    """The reference ``llmtune eval`` scores with (``ctx.state["reference"]``): None (reference-free),
    or ("load", spec, gguf_file): ``options.reference_model``, else the base model a dpo run
    started from, loaded by the Trainer unless the data holds reference log-probs."""
    from llmtune.config import CONFIG_FILENAME, read_yaml

    o = ctx.cfg.options
    if o.loss_type in REFERENCE_FREE:
        return None
    if o.reference_model:
        return ("load", o.reference_model, None)
    # A dpo run's reference was the model it started from (recorded in its config).
    saved = Path(ctx.model_path) / CONFIG_FILENAME
    run = read_yaml(saved) if saved.is_file() else {}
    base = run.get("model") or {}
    if run.get("task") == task_name and base.get("name_or_path"):
        # loaded by the Trainer, unless the data holds reference log-probs
        return ("load", base["name_or_path"], base.get("gguf_file"))
    return None
