"""A reward model on preference pairs: ``reward``.

A sequence-classification model with one output (``AutoModelForSequenceClassification``,
``num_labels=1``) scores a whole conversation; it is trained on ``chosen``/``rejected`` pairs with
the Bradley-Terry loss ``-log σ(r(chosen) - r(rejected) - margin)`` (``options.margin_column``:
an optional per-pair margin, else 0). The pairs are read exactly as ``dpo`` reads them
(:mod:`llmtune.tasks.common.pairs`: prompt/chosen/rejected strings or message lists, or whole
conversations, Anthropic HH text included, split at the last assistant turn); each side is the
prompt plus its answer rendered with the chat template, and a conversation longer than
``data.max_length`` keeps its end (the score is read at the last token).

Metrics (training log, evaluation, ``llmtune eval``): ``accuracy`` (the chosen answer scores
higher), ``margin`` (mean chosen minus rejected score), mean chosen/rejected scores, the mean
pair loss; ``predictions.jsonl`` has both scores per pair. ``llmtune predict`` and ``serve``'s
``/v1/predict`` score conversations (``messages``, HH ``text``, or a prompt with an answer); a
``--task grpo`` run takes the saved folder as a reward function.

Built on ``transformers.Trainer``, not TRL's ``RewardTrainer``: TRL 1.16 tokenizes the pairs
itself (its own chat handling, no HH split at the last assistant turn, which dpo and this task
share), and reports evaluation metrics only through ``log``, so ``llmtune eval`` could not write
exact per-pair records. The loss is TRL's (``-logsigmoid(chosen - rejected - margin)``).

Modules: :mod:`.options`, :mod:`.data` (pairs as token ids, collator, scores), :mod:`.trainer`
(loss, metrics, the Trainer mixin, imported at run time), :mod:`.task` (the hooks).
"""

from __future__ import annotations

from llmtune.tasks.reward.task import RewardTask

TASKS = [RewardTask()]
