"""Preference pairs shared by ``dpo`` and ``reward``: which columns hold a pair, and a row as
(prompt messages, chosen answer, rejected answer) from message lists, Anthropic HH text or plain
strings (whole conversations are split at their last assistant turn).

Module level stays torch-free.
"""

from __future__ import annotations

import re
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.base import RunContext
from llmtune.tasks.common.chat import normalize_messages

PROMPT_COLUMNS = ("prompt", "question", "instruction", "query")
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}

SKIP_REASONS = {
    "identical": "whose chosen and rejected answers are identical (no preference to learn)",
    "empty": "with an empty answer",
    "unseparable": "whose prompt cannot be separated from the answers",
}


#: why pair tasks refuse data.streaming (for chat_data_problems)
PAIRS_UP_FRONT = " (pairs are checked and counted up front)"


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


def drop_bad_pairs(ctx: RunContext, encoded: Any, split: str, task: str, cut_note: str) -> Any:
    """A tokenized split without its bad pairs (``problem``: ``kind:message`` per row, empty when
    the pair is usable). A bad pair stops the run with one line naming the split and row, unless
    ``options.skip_invalid_pairs``; pairs with identical answers are always skipped. Skipped and
    truncated (``truncated`` per row; ``cut_note`` says how) pairs are counted in a printed line;
    the ``problem`` and ``truncated`` columns are dropped."""
    from collections import Counter

    from llmtune.console import echo

    cfg = ctx.cfg
    counts: Counter = Counter()
    for row, problem in zip(encoded["row"], encoded["problem"], strict=True):
        if not problem:
            continue
        kind, message = problem.split(":", 1)
        if kind != "identical" and not cfg.options.skip_invalid_pairs:
            raise LlmtuneError(
                f"{cfg.data.dataset}: split '{split}' row {row + 1}: {message}; fix the data or set "
                f"options.skip_invalid_pairs=true to skip such pairs"
            )
        counts[kind] += 1
    truncated = sum(encoded["truncated"])
    encoded = encoded.filter(lambda b: [not p for p in b["problem"]], batched=True, desc="dropping bad pairs")
    encoded = encoded.remove_columns(["problem", "truncated"])
    notes = [f"{n} pair{'s' * (n != 1)} {SKIP_REASONS[k]}" for k, n in sorted(counts.items())]
    if notes:
        echo(f"{task}: split '{split}': skipped " + "; ".join(notes))
    if truncated:
        echo(f"{task}: split '{split}': {truncated} pairs {cut_note}")
    if len(encoded) == 0:
        raise LlmtuneError(f"split '{split}' of {cfg.data.dataset} has no usable preference pair left")
    return encoded
