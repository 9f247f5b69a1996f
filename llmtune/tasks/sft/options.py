"""Options of the sft task.

Module level stays torch-free (config validation imports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmtune.config import bounded


@dataclass
class SFTOptions:
    # Columns; None = auto-detect. messages_column wins when present.
    prompt_column: str | None = None
    # Optional extra input appended to the prompt (Alpaca's "input"), after a blank line.
    input_column: str | None = None
    response_column: str | None = None
    messages_column: str | None = None
    # A system message put first in every conversation that has none.
    system_prompt: str | None = None
    # Chat template: a name (chatml, plain), a Jinja template string, or None = the tokenizer's
    # own, falling back to chatml when it has none.
    chat_template: str | None = None
    # Padding-free packing of each batch (no cross-example attention; see the module doc).
    packing: bool = False
    # Validation prompts whose greedy generations are exported (predictions.jsonl), and their
    # length limit. None = 16 on a GPU, 0 on CPU, where generating dominates evaluation time.
    num_samples: int | None = bounded(None, ge=0)
    max_new_tokens: int = bounded(128, ge=1)
    # Generation quality at evaluation (end of training and `llmtune eval`): greedy answers to
    # this many eval rows (-1 = all, 0 = off) scored against the reference answers with
    # eval_generation_metrics (rouge1/rouge2/rougeL/rougeLsum, bleu, chrf, exact_match).
    eval_generation_rows: int = 0
    eval_generation_metrics: list[str] = field(default_factory=lambda: ["rougeL", "bleu", "exact_match"])
