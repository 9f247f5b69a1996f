"""Options of the LM tasks (clm, mlm) and the choices they take.

Module level stays torch-free (config validation imports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmtune.config import bounded
from llmtune.tasks.base import RunContext

TEXT_COLUMNS = ("text", "content", "document", "sentence", "article")
SAMPLE_BY = ("line", "paragraph", "document", "stream")
DEFAULT_BLOCK = {"clm": 1024, "mlm": 512}
# clm generation quality: the reference continuation of a prompt
REFERENCE_COLUMNS = ("reference", "completion", "response", "target")


@dataclass
class LMOptions:
    # Tokens per training block; None = the smaller of 1024 (clm) / 512 (mlm), the model's
    # maximum positions and the tokenizer's model_max_length. Flag: --block-size.
    block_size: int | None = bounded(None, ge=8)
    # How a .txt file is read: each line a document (followed by EOS), each blank-line separated
    # paragraph, the whole file one document, or "stream" (clm): the text exactly as it is, one
    # token stream without EOS, the way published perplexities (WikiText) are computed.
    # None = line when training, stream when `llmtune eval` scores a clm model.
    sample_by: str | None = None
    # Evaluate once before training, reported as eval_initial_* in metrics.json.
    eval_on_start: bool = True
    # Rows per batched map call when tokenizing/packing (one partial block per batch).
    pack_batch_size: int = bounded(1000, ge=1)


CLM_PACKING = ("blocks", "documents", "padded")


@dataclass
class ClmOptions(LMOptions):
    # How documents become training rows:
    # blocks    - concatenated (EOS between documents) and cut into block_size blocks; attention
    #             crosses document boundaries (GPT-style pretraining; no padding).
    # documents - one example per document (split into block_size pieces), batches packed
    #             padding-free with per-document attention and positions (llmtune.packing).
    # padded    - one example per document (split the same way), batches padded: the baseline
    #             "documents" is measured against.
    packing: str = "blocks"
    # Sliding-window perplexity for evaluation: windows of block_size tokens advancing by
    # `stride`, each token scored once with up to block_size - stride tokens of left context.
    # None = non-overlapping blocks. Materialises the eval split's token ids (bounded).
    stride: int | None = bounded(None, ge=1)
    # Generation quality at evaluation when the eval rows also hold a prompt and a reference
    # continuation: greedy continuations of this many rows (-1 = all, 0 = off), up to
    # max_new_tokens, scored with eval_generation_metrics. Columns: prompt_column /
    # reference_column (None = prompt / reference, completion, response, target).
    eval_generation_rows: int = 0
    eval_generation_metrics: list[str] = field(default_factory=lambda: ["rougeL", "bleu", "exact_match"])
    prompt_column: str | None = None
    reference_column: str | None = None
    max_new_tokens: int = 64


@dataclass
class MlmOptions(LMOptions):
    mlm_probability: float = bounded(0.15, gt=0, lt=1)
    # Of the selected tokens: share replaced by [MASK], share by a random token (rest unchanged).
    mask_replace_prob: float = bounded(0.8, ge=0, le=1)
    random_replace_prob: float = bounded(0.1, ge=0, le=1)
    # Select whole words (the tokenizer's pre-tokenizer words) instead of single sub-words.
    whole_word_masking: bool = False


def sample_by(ctx: RunContext) -> str:
    """How a .txt is read: ``options.sample_by``, else stream when `llmtune eval` scores a clm."""
    from llmtune.data import is_text_data

    chosen = ctx.cfg.options.sample_by
    if chosen is not None:
        return chosen
    if not ctx.training and ctx.cfg.task == "clm" and is_text_data(ctx.cfg.data.dataset):
        return "stream"
    return "line"
