"""dpo data: which columns hold a pair, a row as (prompt messages, chosen, rejected) (message
lists, Anthropic HH text or plain strings), and a pair as token ids.

Module level stays torch-free.
"""

from __future__ import annotations

import re
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.base import RunContext
from llmtune.tasks.common.chat import normalize_messages, render, segment_ids

PROMPT_COLUMNS = ("prompt", "question", "instruction", "query")
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}

SKIP_REASONS = {
    "identical": "whose chosen and rejected answers are identical (no preference to learn)",
    "empty": "with an empty answer",
    "unseparable": "whose prompt cannot be separated from the answers",
}


def column_layout(ctx: RunContext, ds: Any) -> dict:
    """Which columns hold the pair: prompt (None: chosen/rejected are whole conversations), chosen, rejected."""
    from llmtune.data import column_names, pick_column

    o, cols = ctx.cfg.options, column_names(ds)
    chosen = pick_column(ds, o.chosen_column, ("chosen",), "chosen", "options.chosen_column")
    rejected = pick_column(ds, o.rejected_column, ("rejected",), "rejected", "options.rejected_column")
    prompt = o.prompt_column
    if prompt is not None and prompt not in cols:
        raise LlmtuneError(f"prompt column '{prompt}' (options.prompt_column) not found; columns: {', '.join(cols)}")
    if prompt is None:
        prompt = next((c for c in PROMPT_COLUMNS if c in cols), None)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def row_pair(ctx: RunContext, row: dict) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen answer, rejected answer) of one row; raises :class:`BadPair`."""
    cols = ctx.columns
    prompt, chosen, rejected = split_pair(
        row.get(cols["prompt"]) if cols.get("prompt") else None,
        row[cols["chosen"]],
        row[cols["rejected"]],
        cols,
    )
    system = ctx.cfg.options.system_prompt
    if system and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system}, *prompt]
    return prompt, chosen, rejected


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


class BadPair(ValueError):
    """A row that is not a usable preference pair; ``kind`` is a key of ``SKIP_REASONS``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def parse_hh(text: str) -> list[dict]:
    """Anthropic HH text (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) as chat messages."""
    parts = _HH_TURN.split(text)
    messages = [{"role": "user", "content": parts[0].strip()}] if parts[0].strip() else []
    for role, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": _HH_ROLES[role], "content": content.strip()})
    return messages


def is_hh(text: str) -> bool:
    return bool(re.search(r"(?:^|\n\n)Human:", text)) and bool(re.search(r"(?:^|\n\n)Assistant:", text))


def _messages(value: Any, column: str, plain_role: str | None) -> list[dict]:
    """A cell as messages: a message list, HH text, or (with ``plain_role``) one plain turn."""
    if isinstance(value, list):
        try:
            return normalize_messages(value, column)
        except LlmtuneError as exc:
            raise BadPair("unseparable", str(exc)) from None
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise BadPair("unseparable", f"column '{column}' must hold text or a list of messages, got {value!r:.60}")
    if plain_role != "assistant" and is_hh(value):  # an answer after a prompt column is taken as is
        messages = parse_hh(value)
        if plain_role == "user" and messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
            messages = messages[:-1]  # an HH prompt ending in "Assistant:" awaits the answer
        return messages
    if plain_role is None:
        raise BadPair(
            "unseparable",
            f"there is no prompt column and '{column}' is neither a list of messages nor Human:/Assistant: text, "
            f"so the prompt cannot be told apart from the answer (add a prompt column or set options.prompt_column)",
        )
    return [{"role": plain_role, "content": value}]


def split_pair(prompt: Any, chosen: Any, rejected: Any, columns: dict) -> tuple[list[dict], str, str]:
    """Split one row into its prompt messages and the two answers (see the module doc)."""
    has_prompt = columns.get("prompt") is not None
    history = _messages(prompt, columns.get("prompt") or "prompt", "user") if has_prompt else []
    if has_prompt and not any(m["content"].strip() for m in history):
        raise BadPair("unseparable", f"the prompt ('{columns['prompt']}') is empty")
    sides = []
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        column = columns[key]
        conversation = history + _messages(value, column, "assistant" if has_prompt else None)
        last = max((i for i, m in enumerate(conversation) if m["role"] == "assistant"), default=None)
        if last is None or last < len(history):
            raise BadPair("unseparable", f"'{column}' has no assistant answer")
        if last != len(conversation) - 1:
            raise BadPair(
                "unseparable", f"'{column}' ends with a {conversation[-1]['role']} turn after its last assistant answer"
            )
        sides.append((conversation[:last], conversation[last]["content"]))
    (prefix, chosen_text), (other, rejected_text) = sides
    if prefix != other:
        raise BadPair(
            "unseparable",
            f"'{columns['chosen']}' and '{columns['rejected']}' differ before their last assistant turn, so they do "
            f"not answer the same prompt",
        )
    if not any(m["role"] != "system" and m["content"].strip() for m in prefix):
        raise BadPair("unseparable", f"'{columns['chosen']}' has no prompt before its answer")
    for column, text in ((columns["chosen"], chosen_text), (columns["rejected"], rejected_text)):
        if not text.strip():
            raise BadPair("empty", f"'{column}' answer is empty")
    if chosen_text.strip() == rejected_text.strip():
        raise BadPair("identical", f"'{columns['chosen']}' and '{columns['rejected']}' are the same answer")
    return prefix, chosen_text, rejected_text


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
