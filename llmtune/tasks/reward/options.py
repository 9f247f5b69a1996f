"""Options of the reward task.

Module level stays torch-free (config validation imports it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RewardOptions:
    # Columns; None = auto-detect, as dpo (prompt: prompt/question/instruction/query, else none:
    # chosen and rejected are whole conversations split at their last assistant turn).
    prompt_column: str | None = None
    chosen_column: str | None = None
    rejected_column: str | None = None
    # A column with a margin per pair (how much better chosen is): the loss becomes
    # -log σ(r_chosen - r_rejected - margin), as in Llama 2's reward models. None: no margin.
    margin_column: str | None = None
    # A system message put first in every conversation that has none.
    system_prompt: str | None = None
    # Chat template: a name (chatml, plain), a Jinja template string, or None = the tokenizer's own
    # (chatml when it has none), as in sft and dpo.
    chat_template: str | None = None
    # Skip pairs with an empty answer or an unseparable prompt (printed count) instead of stopping.
    skip_invalid_pairs: bool = False
