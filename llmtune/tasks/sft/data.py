"""sft data: which columns hold the conversation, a row as chat messages, and a conversation as
token ids with labels on the assistant turns only.

Module level stays torch-free.
"""

from __future__ import annotations

from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.base import RunContext
from llmtune.tasks.common.chat import normalize_messages, render, segment_ids

PROMPT_COLUMNS = ("prompt", "instruction", "question", "query", "input")
INPUT_COLUMNS = ("input", "context")
RESPONSE_COLUMNS = ("response", "output", "answer", "completion")
MESSAGES_COLUMNS = ("messages", "conversations", "conversation")


def column_layout(ctx: RunContext, ds: Any) -> dict:
    """Which columns hold the conversation: {"messages": col} or prompt/input/response."""
    from llmtune.data import column_names, pick_column

    o, cols = ctx.cfg.options, column_names(ds)
    if o.messages_column or (not o.prompt_column and any(c in cols for c in MESSAGES_COLUMNS)):
        return {"messages": pick_column(ds, o.messages_column, MESSAGES_COLUMNS, "messages", "options.messages_column")}
    prompt = pick_column(ds, o.prompt_column, PROMPT_COLUMNS, "prompt", "options.prompt_column")
    response = pick_column(ds, o.response_column, RESPONSE_COLUMNS, "response", "options.response_column")
    extra = o.input_column or next(
        (c for c in INPUT_COLUMNS if c in cols and c != prompt and o.prompt_column is None), None
    )
    if o.input_column and o.input_column not in cols:
        raise LlmtuneError(
            f"input column '{o.input_column}' (options.input_column) not found; columns: {', '.join(cols)}"
        )
    return {"prompt": prompt, "input": extra, "response": response}


def inference_layout(ctx: RunContext, columns: list[str]) -> dict:
    """The columns ``predict`` reads (``ctx.columns``): a messages column (the conversation so far)
    or a prompt column (+ input); txt: the line."""
    from llmtune.data import pick_column

    o = ctx.cfg.options
    if o.messages_column or (not o.prompt_column and any(c in columns for c in MESSAGES_COLUMNS)):
        col = pick_column(columns, o.messages_column, MESSAGES_COLUMNS, "messages", "options.messages_column")
        return {"messages": col}
    prompt = pick_column(columns, o.prompt_column, (*PROMPT_COLUMNS, "text"), "prompt", "options.prompt_column")
    extra = o.input_column or next((c for c in INPUT_COLUMNS if c in columns and c != prompt), None)
    if o.input_column and o.input_column not in columns:
        raise LlmtuneError(
            f"input column '{o.input_column}' (options.input_column) not found; columns: {', '.join(columns)}"
        )
    return {"prompt": prompt, "input": extra}


def row_conversation(ctx: RunContext, row: dict) -> list[dict]:
    """One row as chat messages (system prompt first when configured)."""
    layout = ctx.columns
    if "messages" in layout:
        messages = normalize_messages(row[layout["messages"]], layout["messages"])
    else:
        prompt = str(row[layout["prompt"]] or "")
        extra = row.get(layout["input"]) if layout.get("input") else None
        if extra:
            prompt = f"{prompt}\n\n{extra}"
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": str(row[layout["response"]] or "")},
        ]
    system = ctx.cfg.options.system_prompt
    if system and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def batch_encoder(ctx: RunContext, max_length: int) -> Any:
    """The batched ``datasets.map`` function of ``SFTTask.prepare``: per row, the conversation's
    input_ids, attention_mask, labels (see :func:`encode_conversation`) and length."""
    tokenizer = ctx.tokenizer

    def encode(batch: dict) -> dict:
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "length": []}
        keys = list(batch)
        for i in range(len(batch[keys[0]])):
            row = {k: batch[k][i] for k in keys}
            ids, labels = encode_conversation(tokenizer, row_conversation(ctx, row), max_length)
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(labels)
            out["length"].append(len(ids))
        return out

    return encode


def encode_conversation(tokenizer: Any, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels for one conversation: labels are -100 except on assistant turns.

    Each assistant turn is the text between the conversation rendered up to it with a
    generation prompt and rendered with it; turns that do not contain EOS get one appended.
    Turns after the last assistant message are dropped (nothing to learn from them).
    """
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:k], add_generation_prompt=True)
        full = render(tokenizer, messages[: k + 1])
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise LlmtuneError(
                "the chat template does not render conversations prefix by prefix (earlier turns change when a "
                "turn is added), so answers cannot be located: set options.chat_template (chatml or plain)"
            )
        context = segment_ids(tokenizer, prompt[len(done) :])
        answer = segment_ids(tokenizer, full[len(prompt) :])
        if eos not in answer:
            answer.append(eos)
        ids += context + answer
        labels += [-100] * len(context) + answer
        done = full
    if not ids:
        raise LlmtuneError("a conversation has no assistant message to learn from: every row needs an answer")
    return ids[:max_length], labels[:max_length]
