"""Load whatever a run or a command points at: full weights, adapters-only folders, GGUF files.

The one place where model loading and adapters meet, so the dependency goes one way:
:mod:`llmtune.modeling` loads full weights and knows no adapters; :mod:`llmtune.adapters` loads an
adapters-only folder on top of its base through :mod:`llmtune.modeling`; this module picks
between them for every task and command (``finetune`` from an adapter folder, ``eval``,
``predict``, ``export --merge``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtune import adapters
from llmtune.config import ModelArgs
from llmtune.modeling import (
    apply_config_overrides,
    load_config,
    load_pretrained,
    model_architecture,
    model_location,
)
from llmtune.paths import resolve_location


def load_model(ctx: Any, auto_class: str, **kwargs: Any) -> Any:
    """The model at ``ctx.model_path`` as ``transformers.<auto_class>``, with the run's model
    options (``ctx.cfg.model``) and, when training with ``peft.load_in_4bit``, a 4-bit base.

    An adapters-only folder loads its base with the adapters on top (merged when training).
    ``kwargs`` go to ``from_pretrained`` (e.g. ``num_labels``)."""
    location = model_location(ctx.model_path)
    if adapters.is_adapter_folder(location):
        return adapters.load_trained(location, auto_class, training=ctx.training, **kwargs)
    return load_pretrained(
        ctx.model_path,
        ctx.cfg.model,
        auto_class,
        training=ctx.training,
        quantization=adapters.quantization_kwargs(ctx),
        state=ctx.state,
        **kwargs,
    )


def merged_model(location: str | Path, auto_class: str) -> Any:
    """A plain model from a saved folder: the merged weights, or adapters merged into their base."""
    if adapters.is_adapter_folder(location):
        return adapters.load_trained(location, auto_class, merge=True)
    return load_pretrained(str(location), ModelArgs(), auto_class)


def run_model_config(ctx: Any) -> Any:
    """The run's model architecture without loading weights: the loaded model's, the one a task
    already resolved, ``model.config`` (from scratch), or the checkpoint's config.json (an
    adapters-only folder's base model's), with ``model.config_overrides`` when training, as
    :func:`load_model` applies them; None when it cannot be read here."""
    if getattr(ctx, "model", None) is not None:
        return ctx.model.config
    if ctx.state.get("model_config") is not None:
        return ctx.state["model_config"]
    m = ctx.cfg.model
    spec = ctx.model_path or m.name_or_path
    try:
        if m.config and not m.name_or_path:
            return model_architecture(m)
        if not spec:
            return None
        location = resolve_location(spec)
        if adapters.is_adapter_folder(location):
            base = adapters.base_model_args(Path(location))
            options = ModelArgs(**{k: base[k] for k in ("revision", "gguf_file", "trust_remote_code") if base.get(k)})
            config = load_config(base["name_or_path"], options)
        else:
            config = load_config(spec, m)
        if ctx.training and m.config_overrides:
            apply_config_overrides(config, m.config_overrides)
        return config
    except Exception:  # the model step reports a bad model or config in its own words
        return None
