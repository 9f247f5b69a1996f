"""Options of the dpo task and the losses it offers.

Module level stays torch-free (config validation imports it).
"""

from __future__ import annotations

from dataclasses import dataclass

LOSS_TYPES = ("sigmoid", "ipo", "simpo")
REFERENCE_FREE = ("simpo",)


@dataclass
class DPOOptions:
    # Columns; None = auto-detect (prompt: prompt/question/instruction/query, else none: chosen
    # and rejected are whole conversations).
    prompt_column: str | None = None
    chosen_column: str | None = None
    rejected_column: str | None = None
    # A system message put first in every conversation that has none.
    system_prompt: str | None = None
    # Chat template: a name (chatml, plain), a Jinja template string, or None = the tokenizer's
    # own, falling back to chatml when it has none (as in sft).
    chat_template: str | None = None
    # sigmoid (DPO) | ipo | simpo (reference-free); beta: the KL strength (DPO/IPO; SimPO's
    # reward scale, typically 2.0); simpo_gamma: SimPO's target reward margin.
    loss_type: str = "sigmoid"
    beta: float = 0.1
    simpo_gamma: float = 0.5
    # Prompt tokens always kept (its last ones) when a pair exceeds data.max_length: the prompt
    # gives way to the answers down to this length, then the answers are cut. None = half.
    max_prompt_length: int | None = None
    # Reference model: None = the starting model (a frozen copy, or adapters disabled with LoRA);
    # a folder or Hub id to load another one. `llmtune eval` uses the run's base model.
    reference_model: str | None = None
    # Score the data with the starting model once before training; no reference kept in memory.
    precompute_reference: bool = False
    # Skip pairs with an empty answer or an unseparable prompt (with a count) instead of stopping.
    skip_invalid_pairs: bool = False
