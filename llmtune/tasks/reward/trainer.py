"""The reward Trainer: llmtune's Trainer (passed in at run time) with the Bradley-Terry loss.

Imported at run time only (``RewardTask.trainer_class``). Module level stays torch-free.
"""

from __future__ import annotations

from typing import Any

from llmtune.tasks.reward.data import sequence_scores


def bradley_terry_loss(chosen: Any, rejected: Any, margin: Any) -> Any:
    """Per-pair ``-log σ(r_chosen - r_rejected - margin)`` (TRL's RewardTrainer loss)."""
    import torch.nn.functional as F

    return -F.logsigmoid(chosen - rejected - margin)


def pair_metrics(scores: Any) -> dict:
    """Metrics over pairs from a [N, 3] tensor of (chosen score, rejected score, margin) rows."""
    chosen, rejected, margin = scores.unbind(-1)
    return {
        "pair_loss": bradley_terry_loss(chosen, rejected, margin).mean().item(),
        "accuracy": (chosen > rejected).double().mean().item(),
        "margin": (chosen - rejected).mean().item(),
        "chosen_score": chosen.mean().item(),
        "rejected_score": rejected.mean().item(),
        "pairs": int(scores.shape[0]),
    }


def reward_trainer(base: type) -> type:
    return type("RewardTrainer", (RewardTrainerMixin, base), {})


class RewardTrainerMixin:
    """Mixed into llmtune's Trainer: the pairwise loss, its training-log metrics (exact means over
    the pairs of all processes) and per-pair evaluation outputs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # compute_loss returns a mean over pairs
        self._sums: Any = None

    def pair_scores(self, model: Any, inputs: dict) -> Any:
        """[B, 3]: chosen score, rejected score, margin."""
        import torch

        scores = sequence_scores(model, inputs["input_ids"], inputs["attention_mask"])
        chosen, rejected = scores.chunk(2)
        return torch.stack([chosen, rejected, inputs["margin"].to(scores.dtype)], dim=1)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        import torch

        scores = self.pair_scores(model, inputs)
        loss = bradley_terry_loss(*scores.unbind(1)).mean()
        if model.training:
            with torch.no_grad():
                c, r, _ = scores.detach().double().unbind(1)
                sums = torch.stack([torch.ones_like(c).sum(), (c > r).double().sum(), (c - r).sum()])
                self._sums = sums if self._sums is None else self._sums + sums
        return (loss, {"scores": scores}) if return_outputs else loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if "loss" in logs and self._sums is not None:
            n, correct, margin = self.accelerator.reduce(self._sums, reduction="sum").tolist()
            self._sums = None
            logs.update(accuracy=round(correct / n, 4), margin=round(margin / n, 4))
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        import torch

        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            scores = self.pair_scores(model, inputs)
            loss = bradley_terry_loss(*scores.unbind(1)).mean().detach()
        if prediction_loss_only:
            return loss, None, None
        return loss, scores.float(), inputs["row"].unsqueeze(1)
