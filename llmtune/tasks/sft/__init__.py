"""Supervised fine-tuning (instruction tuning) of a causal LM: ``sft``.

Data: prompt/response columns (``prompt``/``instruction`` [+ ``input``]/``question`` ->
``response``/``output``/``answer``/``completion``) or a ``messages`` column of chat turns
(``[{"role": ..., "content": ...}]``; ShareGPT's ``conversations`` with ``from``/``value`` too).
A prompt/response row is a one-turn conversation, so both go through one path: the tokenizer's
chat template renders the conversation (a named fallback, ChatML by default, when the tokenizer
has none; the template used is saved with the tokenizer so inference renders the same way).

Loss only on assistant tokens: each assistant turn's span is found by rendering the
conversation up to that turn with ``add_generation_prompt=True`` and with the turn itself; the
text in between is the turn's tokens (labels kept), everything else gets label -100. Segments
are tokenized one by one without special tokens (as ``apply_chat_template`` does), so the
prompt's tokens are exactly what inference feeds the model. An EOS is appended to each
assistant turn that lacks one, so the model learns to stop.

``options.packing``: padding-free batches (:mod:`llmtune.packing`): each batch's examples are
laid end to end in a few rows, ``position_ids`` restart at 0 for each example and attention
stays within an example (block-diagonal on sdpa/eager/flex, varlen on FlashAttention-2), so the
loss equals that of padded batches of the same examples, for less compute. Used for the eval
loop too.

LoRA/DoRA/IA3 and QLoRA: the shared ``peft:`` section (:mod:`llmtune.adapters`), as for every task.

Evaluation: token-weighted loss and perplexity over the assistant tokens, plus greedy
generations for the first ``options.num_samples`` validation prompts (predictions.jsonl).

Modules: :mod:`.options`, :mod:`.task` (the hooks), :mod:`.data` (columns, rows as chat messages,
conversations as token ids and labels), :mod:`.generation` (greedy answers at evaluation and for
predict); chat templates and rendering in :mod:`llmtune.tasks.common.chat`, perplexity in
:mod:`llmtune.tasks.common.lm_eval`.
"""

from __future__ import annotations

from llmtune.inference.generation import END_OF_TURN, cut_at_end_of_turn, stop_token_ids  # noqa: F401 (re-exported)
from llmtune.tasks.sft.task import SFTTask

TASKS = [SFTTask()]
