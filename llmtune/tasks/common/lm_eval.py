"""Scoring a language model (clm, mlm, sft): perplexity and generation quality.

Perplexity = exp(total NLL / number of predicted tokens) over the whole split: each batch is
reduced on the device to [summed NLL, token count] per row (:func:`lm_eval_step`), the Trainer
gathers those across processes and :func:`total_loss` weighs them by tokens, instead of the
mean of per-batch losses that ``eval_loss`` is.

Module level stays torch-free.
"""

from __future__ import annotations

import math
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.base import RunContext

#: fp32 logits one LM eval batch may hold (batch x sequence x vocabulary x 4 bytes) when
#: train.eval_batch_size is not set: the eval batch is sized to stay under it.
EVAL_LOGITS_BUDGET = 512 * 2**20
#: Elements of the logits upcast and scored at once when summing the NLL of a batch.
NLL_CHUNK_ELEMENTS = 2**24


def row_nll_and_count(logits: Any, labels: Any, shift: bool, chunk_elements: int = NLL_CHUNK_ELEMENTS) -> Any:
    """Per row: [summed NLL of the predicted tokens, number of predicted tokens] (float32 [B, 2]).

    Runs on the device batch by batch, so the Trainer keeps two numbers per row instead of
    [B, L, vocab] logits, and gathers them across processes for :func:`total_loss`. The logits
    are upcast and scored a slice of positions at a time (``chunk_elements`` values), so
    scoring adds a bounded amount of memory to the batch's logits whatever the vocabulary.
    """
    import torch
    import torch.nn.functional as F

    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if shift:
        logits, labels = logits[:, :-1, :], labels[:, 1:]
    rows, length, vocab = logits.shape
    step = max(1, chunk_elements // max(1, rows * vocab))
    total = torch.zeros(rows, dtype=torch.float32, device=logits.device)
    for start in range(0, length, step):
        part = labels[:, start : start + step]
        nll = F.cross_entropy(
            logits[:, start : start + step, :].float().reshape(-1, vocab),
            part.reshape(-1),
            ignore_index=-100,
            reduction="none",
        )
        total += nll.view(part.shape).sum(dim=1)
    valid = labels != -100
    return torch.stack([total, valid.sum(dim=1).float()], dim=1)


def lm_eval_step(shift: bool) -> Any:
    """An eval step (see ``Task.eval_step``) for causal/masked LMs: the model's logits are reduced
    to [summed NLL, token count] per row at once. The model is called without labels, so it
    builds no loss tensors of its own (transformers' loss upcasts and copies the logits)."""
    import inspect

    def step(model: Any, inputs: dict) -> tuple[Any, Any, Any]:
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        forward = getattr(model, "forward", model)
        params = inspect.signature(forward).parameters
        if "use_cache" not in inputs and (
            "use_cache" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
        ):
            inputs["use_cache"] = False  # no KV cache to build: nothing is generated
        outputs = model(**inputs)
        rows = row_nll_and_count(outputs.logits, labels, shift)
        del outputs
        loss = rows[:, 0].sum() / rows[:, 1].sum().clamp(min=1)
        # "labels": the per-row token counts; the Trainer only computes metrics when labels exist.
        return loss, rows, rows[:, 1:]

    return step


def lm_eval_batch_args(ctx: RunContext, seq_len: int | None) -> dict:
    """``per_device_eval_batch_size`` for LM eval when train.eval_batch_size is unset: twice the
    training batch, lowered so one batch's fp32 logits stay under :data:`EVAL_LOGITS_BUDGET`."""
    t = ctx.cfg.train
    if t.eval_batch_size is not None or ctx.model is None or not seq_len:
        return {}
    head = ctx.model.get_output_embeddings() if hasattr(ctx.model, "get_output_embeddings") else None
    vocab = getattr(head, "out_features", None) or getattr(ctx.model.config, "vocab_size", None) or len(ctx.tokenizer)
    fits = max(1, EVAL_LOGITS_BUDGET // (int(seq_len) * int(vocab) * 4))
    wanted = t.batch_size * 2
    if fits >= wanted:
        return {}
    ctx.state["eval_batch_note"] = (
        f"eval batch {fits} (not {wanted}): one batch of {seq_len} tokens x {vocab} vocabulary stays under "
        f"{EVAL_LOGITS_BUDGET // 2**20} MiB of logits; set train.eval_batch_size (eval: --batch-size) to change"
    )
    return {"per_device_eval_batch_size": fits}


def total_loss(rows: Any) -> tuple[float, int]:
    """Token-weighted mean NLL over all rows from :func:`row_nll_and_count`, and the token count."""
    import numpy as np

    rows = np.asarray(rows[0] if isinstance(rows, tuple) else rows, dtype=np.float64).reshape(-1, 2)
    count = rows[:, 1].sum()
    if count <= 0:
        raise LlmtuneError("the evaluation split has no tokens to predict: give it more text")
    return float(rows[:, 0].sum() / count), int(count)


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def generation_quality(records: list[dict], run: Any, options: Any) -> dict:
    """eval_gen_* metrics: the generated answers scored against the references, and the speed."""
    from llmtune.metrics.generation import score_generations

    pairs = [(r["prediction"], r["reference"]) for r in records if r.get("reference") is not None]
    scores = score_generations([p for p, _ in pairs], [r for _, r in pairs], options.eval_generation_metrics)
    out = {f"eval_gen_{k}": v for k, v in scores.items()}
    out["eval_gen_rows"] = len(pairs)
    out["eval_gen_new_tokens"] = run.new_tokens
    out["eval_gen_seconds"] = round(run.seconds, 3)
    out["eval_gen_tokens_per_second"] = round(run.tokens_per_second, 2)
    return out
