"""dpo data: which columns hold a pair, a row as (prompt messages, chosen, rejected) (message
lists, Anthropic HH text or plain strings), and a pair as token ids.

Module level stays torch-free.
"""

from __future__ import annotations

from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.base import RunContext
from llmtune.tasks.common.chat import render, segment_ids
from llmtune.tasks.common.pairs import (  # noqa: F401  (re-exported: the dpo API)
    PROMPT_COLUMNS,
    SKIP_REASONS,
    BadPair,
    column_layout,
    is_hh,
    parse_hh,
    row_pair,
    split_pair,
)

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def batch_encoder(ctx: RunContext, max_length: int, max_prompt: int) -> Any:
    """The batched ``datasets.map`` function (``with_indices``) of ``DPOTask.prepare``: per row, the
    pair's token ids (:func:`encode_pair`), its length, its row index, precomputed reference
    log-probs when the data has them, and ``problem`` (``kind:message`` of a :class:`BadPair`, or
    empty) and ``truncated`` for prepare to count and drop."""
    tokenizer = ctx.tokenizer

    def encode(batch: dict, indices: list[int]) -> dict:
        out: dict[str, list] = {k: [] for k in ("prompt_ids", "chosen_ids", "rejected_ids", "length", "row")}
        out.update(problem=[], truncated=[])
        keys = list(batch)
        for col in REF_COLUMNS if REF_COLUMNS[0] in keys else ():
            out[col] = [_logp(v, col, index) for v, index in zip(batch[col], indices, strict=True)]
        for i, index in enumerate(indices):
            row = {k: batch[k][i] for k in keys}
            try:
                enc = encode_pair(tokenizer, *row_pair(ctx, row), max_length, max_prompt)
                problem = ""
            except BadPair as bad:
                enc, problem = (
                    {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "truncated": False},
                    (f"{bad.kind}:{bad}"),
                )
            for key in ("prompt_ids", "chosen_ids", "rejected_ids", "truncated"):
                out[key].append(enc[key])
            out["length"].append(len(enc["prompt_ids"]) + max(len(enc["chosen_ids"]), len(enc["rejected_ids"])))
            out["row"].append(index)
            out["problem"].append(problem)
        return out

    return encode


def _logp(value: Any, column: str, index: int) -> float:
    import math

    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise LlmtuneError(f"column '{column}' row {index + 1}: expected a finite log-probability, got {value!r:.40}")
    return number


def encode_pair(
    tokenizer: Any, prompt: list[dict], chosen: str, rejected: str, max_length: int, max_prompt: int
) -> dict:
    """Token ids of the prompt (rendered with a generation prompt) and of each answer (the text the
    chat template adds for it, EOS appended when missing), cut to ``max_length`` per sequence."""
    eos = tokenizer.eos_token_id
    prompt_text = render(tokenizer, prompt, add_generation_prompt=True)
    answers = []
    for text in (chosen, rejected):
        full = render(tokenizer, [*prompt, {"role": "assistant", "content": text}])
        if not full.startswith(prompt_text):
            raise LlmtuneError(
                "the chat template renders the prompt differently once an answer follows, so the answer cannot be "
                "located: set options.chat_template (chatml or plain)"
            )
        ids = segment_ids(tokenizer, full[len(prompt_text) :])
        if eos not in ids:
            ids.append(eos)
        answers.append(ids)
    prompt_ids = segment_ids(tokenizer, prompt_text)
    longest = max(len(a) for a in answers)
    truncated = len(prompt_ids) + longest > max_length
    if truncated:
        keep = min(len(prompt_ids), max(max_length - longest, max_prompt))
        prompt_ids = prompt_ids[len(prompt_ids) - keep :]
        answers = [a[: max_length - keep] for a in answers]
    return {"prompt_ids": prompt_ids, "chosen_ids": answers[0], "rejected_ids": answers[1], "truncated": truncated}
