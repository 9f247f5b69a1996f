"""reward data: a pair as two token sequences (the whole conversation with each answer), and the
collator.

Module level stays torch-free.
"""

from __future__ import annotations

import math
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.base import RunContext
from llmtune.tasks.common.chat import render, segment_ids
from llmtune.tasks.common.pairs import BadPair, row_pair


def conversation_ids(tokenizer: Any, prompt: list[dict], answer: str, max_length: int) -> tuple[list[int], bool]:
    """Token ids of ``prompt`` followed by the assistant ``answer``, rendered with the chat
    template; a conversation longer than ``max_length`` keeps its end (the score is read at the
    last token, so the answer must stay whole)."""
    ids = segment_ids(tokenizer, render(tokenizer, [*prompt, {"role": "assistant", "content": answer}]))
    return (ids[-max_length:], True) if len(ids) > max_length else (ids, False)


def batch_encoder(ctx: RunContext, max_length: int) -> Any:
    """The batched ``datasets.map`` function (``with_indices``): per row the token ids of both
    conversations, the margin (0 without ``options.margin_column``), the row index, and
    ``problem`` / ``truncated`` for prepare to count and drop."""
    tokenizer, margin_column = ctx.tokenizer, ctx.cfg.options.margin_column

    def encode(batch: dict, indices: list[int]) -> dict:
        out: dict[str, list] = {k: [] for k in ("chosen_ids", "rejected_ids", "margin", "length", "row")}
        out.update(problem=[], truncated=[])
        keys = list(batch)
        for i, index in enumerate(indices):
            row = {k: batch[k][i] for k in keys}
            chosen, rejected, problem, cut = [], [], "", False
            try:
                prompt, c, r = row_pair(ctx, row)
                chosen, cut_c = conversation_ids(tokenizer, prompt, c, max_length)
                rejected, cut_r = conversation_ids(tokenizer, prompt, r, max_length)
                cut = cut_c or cut_r
            except BadPair as bad:
                problem = f"{bad.kind}:{bad}"
            out["chosen_ids"].append(chosen)
            out["rejected_ids"].append(rejected)
            out["margin"].append(_margin(row.get(margin_column), margin_column, index) if margin_column else 0.0)
            out["length"].append(max(len(chosen), len(rejected)))
            out["row"].append(index)
            out["problem"].append(problem)
            out["truncated"].append(cut)
        return out

    return encode


def _margin(value: Any, column: str, index: int) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise LlmtuneError(
            f"column '{column}' (options.margin_column) row {index + 1}: expected a finite number, got {value!r:.40}"
        )
    return number


class RewardCollator:
    """B pairs as 2B right-padded rows, chosen first then rejected: ``input_ids``,
    ``attention_mask``, ``margin`` [B] and ``row`` [B] (the pair's row in its split)."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        seqs = [list(f["chosen_ids"]) for f in features] + [list(f["rejected_ids"]) for f in features]
        width = max(len(s) for s in seqs)
        return {
            "input_ids": torch.tensor([s + [self.pad] * (width - len(s)) for s in seqs]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
            "margin": torch.tensor([float(f.get("margin", 0.0)) for f in features], dtype=torch.float32),
            "row": torch.tensor([f.get("row", i) for i, f in enumerate(features)]),
        }


def sequence_scores(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """One score per row [N] (float32): the model's single output, which transformers' sequence-
    classification heads read at the last token that is not the pad token (right padding)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.logits[:, 0].float()
