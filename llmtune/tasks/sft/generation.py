"""sft generation: greedy answers to validation prompts (exported and scored at evaluation) and
to ``predict`` rows.

Module level stays torch-free.
"""

from __future__ import annotations

from typing import Any

from llmtune.tasks.base import RunContext
from llmtune.tasks.common.chat import normalize_messages, render
from llmtune.tasks.sft.data import row_conversation


def num_samples(ctx: RunContext) -> int:
    """Generated answers to export: options.num_samples, else 16 on a GPU and none on CPU."""
    chosen = ctx.cfg.options.num_samples
    if chosen is not None:
        return chosen
    import torch

    return 16 if torch.cuda.is_available() else 0


def generate_samples(ctx: RunContext, model: Any, rows: list[dict], batch_size: int) -> tuple[list, Any]:
    """Greedy answers to the last user turn of each row: records {input, reference, prediction}
    and the :class:`~llmtune.inference.generation.GenerationRun` (token counts, seconds)."""
    from llmtune.inference.generation import generate_texts
    from llmtune.inference.predict import greedy_settings

    prompts, records = [], []
    for row in rows:
        messages = row_conversation(ctx, row)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        history = messages[:last] if last is not None else messages
        prompts.append(render(ctx.tokenizer, history, add_generation_prompt=True))
        shown = history[-1]["content"] if "messages" not in ctx.columns else history
        reference = messages[last]["content"] if last is not None else None
        records.append({"input": shown, "reference": reference})
    run = generate_texts(model, ctx.tokenizer, prompts, greedy_settings(ctx.cfg.options.max_new_tokens), batch_size)
    for record, out in zip(records, run.outputs, strict=True):
        record["prediction"] = out.text
    return records, run


def answer_rows(ctx: RunContext, rows: list[dict], settings: Any) -> list[dict]:
    """``predict`` records: each row's prompt (the conversation up to its last user turn) and the
    generated answer (``settings.generation``, else greedy)."""
    from llmtune.inference.generation import generate_texts
    from llmtune.inference.predict import greedy_settings

    prompts, shown = [], []
    for row in rows:
        if "messages" in ctx.columns:
            messages = normalize_messages(row.get(ctx.columns["messages"]), ctx.columns["messages"])
            while messages and messages[-1]["role"] == "assistant":
                messages = messages[:-1]  # answer the last user turn
            shown.append({"messages": messages})
        else:
            prompt = str(row.get(ctx.columns["prompt"]) or "")
            extra = row.get(ctx.columns["input"]) if ctx.columns.get("input") else None
            shown.append({"prompt": prompt, **({"input": extra} if extra else {})})
            messages = [{"role": "user", "content": f"{prompt}\n\n{extra}" if extra else prompt}]
        system = ctx.cfg.options.system_prompt
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
        prompts.append(render(ctx.tokenizer, messages, add_generation_prompt=True))
    gen = settings.generation or greedy_settings(settings.max_new_tokens or ctx.cfg.options.max_new_tokens)
    run = generate_texts(ctx.model, ctx.tokenizer, prompts, gen, batch_size=len(prompts))
    return [{**s, "generated_text": g.text} for s, g in zip(shown, run.outputs, strict=True)]
