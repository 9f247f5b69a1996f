"""Masked language-model pretraining (BERT-style): ``mlm``.

Module level stays torch-free (config validation imports it).
"""

from __future__ import annotations

from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.base import RunContext
from llmtune.tasks.lm.masking import fixed_masks
from llmtune.tasks.lm.options import MlmOptions
from llmtune.tasks.lm.task import LMTask


class MaskedLMTask(LMTask):
    name = "mlm"
    aliases = ("masked-lm", "pretrain-mlm")
    objective = "mlm"
    description = "masked language-model pretraining (BERT-style), from scratch or continued"
    Options = MlmOptions
    auto_model = "AutoModelForMaskedLM"
    main_metric = "mlm_perplexity"
    pipeline_tag = "fill-mask"
    preset_types = ("bert",)
    metric_names = ("mlm_loss", "mlm_perplexity", "masked_tokens")

    def validate_options(self, o: Any) -> list[str]:
        if o.mask_replace_prob + o.random_replace_prob > 1:
            return [
                "options.mask_replace_prob and options.random_replace_prob must sum to at most 1, "
                f"got {o.mask_replace_prob} and {o.random_replace_prob}"
            ]
        return []

    def check_tokenizer(self, tokenizer: Any, where: str | None) -> None:
        if tokenizer.mask_token_id is None:
            raise LlmtuneError(
                f"tokenizer {where} has no mask token, which mlm needs: train one with "
                f"`llmtune tokenizer train --objective mlm`"
            )
        if tokenizer.pad_token_id is None:
            raise LlmtuneError(f"tokenizer {where} has no pad token, which mlm batches need")

    def eval_view(self, ctx: RunContext, packed: Any, block_size: int) -> Any:
        return fixed_masks(packed, ctx.tokenizer, ctx.cfg.options, ctx.cfg.train.seed)
