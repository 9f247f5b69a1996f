"""Language-model pretraining: causal (``clm``, GPT-style) and masked (``mlm``, BERT-style).

Data: texts are tokenized and packed into fixed ``block_size`` blocks by one batched
``datasets.map`` (Arrow-cached for a ``Dataset``, lazy for a streamed ``IterableDataset``: the
same function, so both yield the same blocks in the same order). Packing never drops text: the
partial last block of each map batch is kept and padded by the collator.

- clm: every document is followed by EOS (after the tokenizer's own template, e.g. Llama's BOS),
  documents are concatenated and cut into blocks; labels are the inputs (the model shifts).
- mlm: documents are joined with SEP, cut into ``block_size - specials`` pieces and each piece
  is framed like a single sequence (``[CLS] ... [SEP]``), so every block looks like what the
  model sees at fine-tuning time.

clm ``options.packing``: ``blocks`` (the above), or ``documents`` / ``padded``: one document
per example (split into ``block_size`` pieces), batched padding-free with per-document attention
(:mod:`llmtune.packing`) or padded.

Evaluation reports perplexity = exp(total NLL / number of predicted tokens) over the whole split,
summed per row on the device (``preprocess_logits_for_metrics``) and gathered across processes
by the Trainer, not the mean of per-batch losses that ``eval_loss`` is. MLM eval masks are drawn
once with a fixed seed, so every evaluation (and ``llmtune eval``) scores the same masked tokens.

Modules: :mod:`.options` (options and their choices), :mod:`.task` (what clm and mlm share),
:mod:`.clm` / :mod:`.mlm` (the two tasks), :mod:`.data` (packing, eval windows), :mod:`.masking`
(MLM masks), :mod:`.collator`; perplexity maths in :mod:`llmtune.tasks.common.lm_eval`.

Module level stays torch-free (config validation imports it).
"""

from __future__ import annotations

from llmtune.tasks.lm.clm import CausalLMTask
from llmtune.tasks.lm.mlm import MaskedLMTask

TASKS = [CausalLMTask(), MaskedLMTask()]
