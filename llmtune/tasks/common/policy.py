"""What the preference and RL tasks (dpo, grpo) do to a causal LM they train as a policy."""

from __future__ import annotations

from typing import Any


def disable_dropout(model: Any) -> None:
    """Dropout off in every layer: the policy and its reference (or sampling, scoring and the
    update) must score a sequence the same way, as TRL does."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def prepare_policy(model: Any, tokenizer: Any) -> Any:
    """The tokenizer's pad id on the model when the config has none, and dropout off."""
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)
    return model
