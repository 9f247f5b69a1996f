"""grpo maths: group-normalised advantages, per-token log-probabilities of completions, and the
clipped policy loss with its KL term (TRL 1.16's ``GRPOTrainer._compute_loss`` formulas for the
loss types offered). Module level stays torch-free.
"""

from __future__ import annotations

from typing import Any


def advantages(total: Any, group: int, scale: bool) -> tuple[Any, Any]:
    """Per completion: reward minus its group's mean (divided by the group's std + 1e-4 when
    ``scale``); and per group whether every completion got the same reward (nothing to learn)."""
    import torch

    grouped = total.view(-1, group)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True) if group > 1 else torch.zeros_like(mean)
    adv = grouped - mean
    if scale:
        adv = adv / (std + 1e-4)
    return adv.reshape(-1), torch.isclose(std.squeeze(1), torch.zeros_like(std.squeeze(1)))


def completion_logps(model: Any, batch: dict) -> Any:
    """[N, C] log-probabilities of the completion tokens (left-padded prompts, right-padded
    completions; positions from the attention mask, as generation counted them). The
    log-softmax runs one row at a time in float32, so the [N, C, vocab] log-probs never exist."""
    import torch

    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    width = batch["completion_ids"].shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    logits = logits[:, -width - 1 : -1]
    target = batch["completion_ids"].unsqueeze(-1)
    return torch.stack(
        [
            torch.log_softmax(row.float(), dim=-1).gather(-1, t).squeeze(-1)
            for row, t in zip(logits, target, strict=True)
        ]
    )


def policy_loss(
    loss_type: str,
    logps: Any,
    ref_logps: Any,
    adv: Any,
    mask: Any,
    beta: float,
    epsilon: float,
    max_completion_length: int,
) -> tuple[Any, Any]:
    """The loss and the per-sequence mean KL [N] (zeros with ``beta`` 0).

    One policy update per generation (on-policy), so the old log-probs are the current ones
    detached: the ratio is 1 in value and its gradient is the policy gradient, as in TRL with
    ``num_iterations=1``. KL: the k3 estimator ``exp(ref - logp) - (ref - logp) - 1``."""
    import torch

    ratio = torch.exp(logps - logps.detach())
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    a = adv.unsqueeze(1)
    per_token = -torch.min(ratio * a, clipped * a)
    if beta != 0.0 and ref_logps is not None:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
        seq_kl = (kl.detach() * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    else:
        seq_kl = torch.zeros(logps.shape[0], device=logps.device)
    if loss_type == "grpo":  # each sequence's token mean, averaged over sequences
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    elif loss_type == "bnpo":  # mean over the batch's tokens
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    elif loss_type == "dr_grpo":  # a constant normaliser: no length bias
        loss = (per_token * mask).sum() / (per_token.shape[0] * max_completion_length)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    return loss, seq_kl
