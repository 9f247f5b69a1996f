"""Preference tuning of a causal LM on pairwise data: ``dpo`` (DPO, IPO, SimPO).

Data, one pair per row (``options.prompt_column`` / ``chosen_column`` / ``rejected_column``):

- ``prompt`` / ``chosen`` / ``rejected``: strings (a one-turn prompt and two answers) or chat
  message lists (``[{"role": ..., "content": ...}]``, ShareGPT's ``from``/``value`` too): the
  prompt is the conversation so far, each answer one assistant turn (or turns ending in one);
- no prompt column: ``chosen`` and ``rejected`` are whole conversations sharing their history,
  either message lists or Anthropic HH text (``"\\n\\nHuman: ... \\n\\nAssistant: ..."``); they
  are split at their last assistant turn, and what precedes it must be the same in both.

Both answers are rendered after the prompt with the tokenizer's chat template exactly as in
``sft`` (same named fallbacks, EOS appended, segment-wise tokenization: the prompt tokens are
what inference feeds the model). A pair longer than ``data.max_length`` drops the start of its
prompt to make room for the answers, but keeps at least ``options.max_prompt_length`` prompt
tokens (default half of ``data.max_length``); answers still too long lose their end.

Bad pairs: an empty answer, or a prompt that cannot be separated from the answers, stops the run
with one line naming the split, row and column (``options.skip_invalid_pairs=true`` skips them
with a printed count instead); pairs whose two answers are identical carry no preference and are
always skipped with a printed count.

Losses (``options.loss_type``, ``options.beta``), with log-probabilities summed over answer
tokens, ``pi`` the policy, ``ref`` the frozen reference, ``|y|`` the answer's token count:

- ``sigmoid`` (DPO): ``-log σ(β·[(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))])``
- ``ipo``: ``((log-ratio_w / |y_w| - log-ratio_l / |y_l|) - 1 / (2β))²`` (per-token log ratios,
  as TRL does, after the IPO authors)
- ``simpo`` (reference-free): ``-log σ(β·(log pi(y_w)/|y_w| - log pi(y_l)/|y_l|) - γ)``,
  ``γ = options.simpo_gamma``.

Rewards are ``β·(log pi - log ref)`` (SimPO: ``β·log pi/|y|``); metrics in the training log, in
evaluation and in ``llmtune eval``: ``reward_accuracy`` (chosen reward > rejected reward),
``reward_margin``, mean chosen/rejected rewards and log-probabilities, and ``logp_accuracy``
(the policy alone gives the chosen answer the higher log-probability: the implicit preference).

The reference model: a frozen copy of the starting model; with LoRA adapters the same model with
its adapters disabled (no second copy); ``options.reference_model`` loads another one;
``options.precompute_reference`` scores the data once with the starting model before training
and keeps no reference in memory; data with ``ref_chosen_logps`` / ``ref_rejected_logps`` columns
(summed answer log-probs from the same tokenization, e.g. the ``chosen_logps`` / ``rejected_logps``
of an earlier ``llmtune eval`` of the reference's predictions.jsonl) needs no reference model at
all. ``llmtune eval`` of a trained run loads the run's base model as reference (or
``options.reference_model``); a model with no known base is scored reference-free (rewards are
the policy's log-probabilities: its implicit preference).

The loss is computed here on ``transformers.Trainer`` (``compute_loss``), not with TRL's
``DPOTrainer``: TRL 1.16 tokenizes the strings itself (no llmtune chat-template spans, no HH split
at the last assistant turn), builds its reference by reloading the policy from its config path
(GGUF and ``package:`` models fail), patches the model's forward, and reports evaluation metrics
only through ``log`` as means of per-batch means gathered with duplicates, so ``llmtune eval``
could not return exact ones. The loss formulas are TRL's (tested against hand-computed values).

Modules: :mod:`.options`, :mod:`.task` (the hooks), :mod:`.data` (columns, HH parsing, rows as
pairs, pair encoding), :mod:`.collator`, :mod:`.loss` (log-probs, losses, rewards, metrics),
:mod:`.reference` (the reference model), :mod:`.trainer` (the Trainer, imported at run time);
chat templates and rendering in :mod:`llmtune.tasks.common.chat`.
"""

from __future__ import annotations

from llmtune.tasks.dpo.task import DPOTask

TASKS = [DPOTask()]
