"""``llmtune predict`` and ``serve``'s /v1/predict: records for rows, through the task's hooks.

The task picks its columns (``Task.prepare_inference``) and turns a batch of rows into records
(``Task.predict_batch``); this module batches by length and restores the input order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmtune.inference.batching import sorted_batches
from llmtune.inference.generation import GenerationSettings


def greedy_settings(max_new_tokens: int = 128) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=max_new_tokens, greedy=True, temperature=0.0)


@dataclass
class PredictSettings:
    batch_size: int = 32
    # classification: every label's score, not only the best one
    all_scores: bool = False
    # multi-label classification: override the trained options.threshold
    threshold: float | None = None
    # generative tasks (greedy unless a serve request asks otherwise); None = the task's default
    generation: GenerationSettings | None = None
    max_new_tokens: int | None = None
    extra: dict = field(default_factory=dict)


def prepare(ctx: Any, columns: list[str]) -> None:
    ctx.state["task"].prepare_inference(ctx, columns)


def predict_rows(
    ctx: Any, rows: list[dict], settings: PredictSettings, progress: Callable[[int], None] | None = None
) -> list[dict]:
    """One record per row, in input order (``prepare`` must have been called for these columns)."""
    import torch

    task = ctx.state["task"]
    lengths = [task.input_length(ctx, row) for row in rows]
    out: list[Any] = [None] * len(rows)
    with torch.inference_mode():
        for indices in sorted_batches(lengths, settings.batch_size):
            records = task.predict_batch(ctx, [rows[i] for i in indices], settings)
            for i, record in zip(indices, records, strict=True):
                out[i] = record
            if progress is not None:
                progress(len(indices))
    return out


def encode_device(ctx: Any, enc: Any) -> Any:
    """A tokenizer batch on the model's device, without keys the model does not take."""
    import inspect

    from llmtune.inference.generation import model_device

    enc = enc.to(model_device(ctx.model))
    if "token_type_ids" in enc and "token_type_ids" not in inspect.signature(ctx.model.forward).parameters:
        enc.pop("token_type_ids")
    return enc
