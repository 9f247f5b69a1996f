"""grpo data: the prompt column, a prompt cell as chat messages, prompts as token ids (the other
columns kept for the reward functions), and the collator.

Module level stays torch-free.
"""

from __future__ import annotations

from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.base import RunContext
from llmtune.tasks.common.chat import normalize_messages, render, segment_ids

PROMPT_COLUMNS = ("prompt", "question", "problem", "instruction", "query", "messages")


def prompt_column(ctx: RunContext, ds: Any) -> str:
    from llmtune.data import column_names, pick_column

    return pick_column(
        column_names(ds), ctx.cfg.options.prompt_column, PROMPT_COLUMNS, "prompt", "options.prompt_column"
    )


def prompt_messages(value: Any, column: str, system: str | None) -> list[dict]:
    """A prompt cell as chat messages: a string is one user turn; a message list is kept up to its
    last user turn (a chat with its reference answer is a prompt for a new one)."""
    if isinstance(value, list):
        messages = normalize_messages(value, column)
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last_user is None:
            raise LlmtuneError(f"column '{column}': a prompt conversation has no user turn: {value!r:.80}")
        messages = messages[: last_user + 1]
    elif isinstance(value, str) and value.strip():
        messages = [{"role": "user", "content": value}]
    else:
        raise LlmtuneError(f"column '{column}' must hold a non-empty prompt (text or chat messages), got {value!r:.60}")
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def batch_encoder(ctx: RunContext, max_prompt: int) -> Any:
    """The batched ``datasets.map`` function (``with_indices``): per row the prompt's token ids
    (rendered with a generation prompt, keeping its last ``max_prompt`` tokens), its length, its
    row index, and every raw column unchanged (the reward functions read them)."""
    tokenizer, column, system = ctx.tokenizer, ctx.columns["prompt"], ctx.cfg.options.system_prompt

    def encode(batch: dict, indices: list[int]) -> dict:
        out: dict[str, list] = {k: list(v) for k, v in batch.items()}
        out.update(prompt_ids=[], length=[], row=[])
        for value, index in zip(batch[column], indices, strict=True):
            try:
                messages = prompt_messages(value, column, system)
            except LlmtuneError as exc:
                raise LlmtuneError(f"row {index + 1}: {exc}") from None
            ids = segment_ids(tokenizer, render(tokenizer, messages, add_generation_prompt=True))[-max_prompt:]
            out["prompt_ids"].append(ids)
            out["length"].append(len(ids))
            out["row"].append(index)
        return out

    return encode


class PromptCollator:
    """A batch of prompts: ``row`` [B] (tensor), ``prompt_ids`` (lists) and ``columns`` (the rows'
    other columns, dicts of lists, read by the reward functions)."""

    def __init__(self, skip: tuple[str, ...] = ("prompt_ids", "length", "row")):
        self.skip = skip

    def __call__(self, features: list[dict]) -> dict:
        import torch

        keys = [k for k in features[0] if k not in self.skip]
        return {
            "row": torch.tensor([f["row"] for f in features]),
            "prompt_ids": [list(f["prompt_ids"]) for f in features],
            "columns": {k: [f[k] for f in features] for k in keys},
        }
