"""dpo maths: answer log-probabilities, the preference losses (see the package doc), rewards and
metrics over pairs.

Module level stays torch-free.
"""

from __future__ import annotations

from typing import Any

from llmtune.tasks.dpo.options import REFERENCE_FREE


def sequence_logps(model: Any, batch: dict, chunk_size: int | None = None, autocast: Any = None) -> tuple[Any, Any]:
    """Summed log-probabilities of the answer tokens of each row, and their counts.

    The log-softmax runs one row at a time in float32: the full [2B, L, vocab] log-prob tensor of
    a 50k-vocab model would double the memory peak of the logits. With ``chunk_size``
    (``train.loss_chunk_size``) the logits are never whole: the answer tokens are scored in
    slices (:mod:`llmtune.tasks.common.chunked_loss`; ``autocast``: the context the output layer
    runs under, the run's mixed precision).
    """
    import torch

    if chunk_size:
        from llmtune.tasks.common.chunked_loss import causal_lm_sequence_logps

        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        return causal_lm_sequence_logps(model, inputs, batch["labels"], chunk_size, autocast)
    labels = batch["labels"][:, 1:]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logits = logits[:, :-1]
    mask = labels != -100
    index = labels.masked_fill(~mask, 0).unsqueeze(-1)
    per_token = torch.stack(
        [
            torch.log_softmax(row.float(), dim=-1).gather(-1, idx).squeeze(-1)
            for row, idx in zip(logits, index, strict=True)
        ]
    )
    return (per_token * mask).sum(-1), mask.sum(-1)


def preference_loss(
    loss_type: str, beta: float, gamma: float, pc: Any, pr: Any, rc: Any, rr: Any, nc: Any, nr: Any
) -> Any:
    """Per-pair loss from policy (p) and reference (r) log-probs of chosen (c) / rejected (r)
    answers and their token counts (n); see the module doc for the formulas."""
    import torch.nn.functional as F

    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))
    if loss_type == "ipo":
        return (_per_token(pc - rc, nc) - _per_token(pr - rr, nr) - 1 / (2 * beta)) ** 2
    if loss_type == "simpo":
        return -F.logsigmoid(beta * (_per_token(pc, nc) - _per_token(pr, nr)) - gamma)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def _per_token(logps: Any, count: Any) -> Any:
    return logps / (count.clamp(min=1) if hasattr(count, "clamp") else max(count, 1))


def rewards(loss_type: str, beta: float, pc: Any, pr: Any, rc: Any, rr: Any, nc: Any, nr: Any) -> tuple[Any, Any]:
    """Implicit rewards of the chosen and rejected answers (tensors or plain numbers)."""
    if loss_type in REFERENCE_FREE:
        return beta * _per_token(pc, nc), beta * _per_token(pr, nr)
    return beta * (pc - rc), beta * (pr - rr)


def pair_metrics(scores: Any, loss_type: str, beta: float, gamma: float) -> dict:
    """Metrics over pairs from a [N, 6] tensor of (pc, pr, rc, rr, nc, nr) rows."""
    pc, pr, rc, rr, nc, nr = scores.unbind(-1)
    wc, wl = rewards(loss_type, beta, pc, pr, rc, rr, nc, nr)
    return {
        "pair_loss": preference_loss(loss_type, beta, gamma, pc, pr, rc, rr, nc, nr).mean().item(),
        "reward_accuracy": (wc > wl).double().mean().item(),
        "reward_margin": (wc - wl).mean().item(),
        "chosen_reward": wc.mean().item(),
        "rejected_reward": wl.mean().item(),
        "chosen_logps": pc.mean().item(),
        "rejected_logps": pr.mean().item(),
        "logp_accuracy": (pc > pr).double().mean().item(),
        "pairs": int(scores.shape[0]),
    }
