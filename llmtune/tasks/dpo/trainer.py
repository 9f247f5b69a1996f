"""The dpo Trainer: llmtune's Trainer (passed in at run time) with the preference loss.

Imported at run time only (``DPOTask.trainer_class``). Module level stays torch-free.
"""

from __future__ import annotations

from typing import Any

from llmtune.tasks.base import RunContext
from llmtune.tasks.dpo.data import REF_COLUMNS
from llmtune.tasks.dpo.loss import preference_loss, rewards, sequence_logps
from llmtune.tasks.dpo.options import REFERENCE_FREE


def preference_trainer(base: type, ctx: RunContext, task: Any) -> type:
    """``base`` (llmtune's Trainer) with :class:`PreferenceTrainerMixin`, bound to this run's
    options, its reference (``ctx.state["reference"]`` as it is now) and the task (``task``: the
    :class:`~llmtune.tasks.dpo.task.DPOTask`, which loads a reference named by a saved run)."""
    bound = {
        "dpo_ctx": ctx,
        "dpo_task": task,
        "dpo_options": ctx.cfg.options,
        "dpo_reference": ctx.state.get("reference"),
    }
    return type("PreferenceTrainer", (PreferenceTrainerMixin, base), bound)


class PreferenceTrainerMixin:
    """Mixed into llmtune's Trainer by :func:`preference_trainer`: the preference loss, its
    training-log metrics and per-pair evaluation outputs (exact metrics, each pair counted once on
    any number of processes, through the Trainer's ``gather_for_metrics``)."""

    # Set per run by preference_trainer.
    dpo_ctx: RunContext
    dpo_task: Any
    dpo_options: Any
    #: None, "precompute", "adapters", a frozen model, or ("load", spec, gguf_file) for llmtune eval
    dpo_reference: Any
    #: train.loss_chunk_size (set on llmtune's Trainer class by the run)
    loss_chunk_size: int | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import torch

        o, reference = self.dpo_options, self.dpo_reference
        super().__init__(*args, **kwargs)
        # compute_loss returns a mean over pairs, so the Trainer must divide by accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._sums: Any = None
        datasets = [d for d in (self.train_dataset, self.eval_dataset) if d is not None]
        scored = all(REF_COLUMNS[0] in d.column_names for d in datasets)
        ref = reference
        if isinstance(ref, tuple) and not scored:  # ("load", spec, gguf_file), for llmtune eval
            from llmtune.console import echo

            echo(f"dpo: reference model {ref[1]}" + (f" ({ref[2]})" if ref[2] else ""))
            ref = self.dpo_task.load_reference(self.dpo_ctx, ref[1], ref[2])
        self.ref_model = ref.to(self.args.device) if isinstance(ref, torch.nn.Module) else None
        if ref is None and not scored and o.loss_type not in REFERENCE_FREE:
            from llmtune.console import echo

            echo(
                "dpo: no reference model (the model has no recorded base: set options.reference_model, or give "
                "the data ref_chosen_logps/ref_rejected_logps columns): rewards are the policy's log-probabilities"
            )
        if reference == "precompute":
            # Before any step: self.model is still the starting model.
            if self.train_dataset is not None and REF_COLUMNS[0] not in self.train_dataset.column_names:
                self.train_dataset = self.add_reference_logps(self.train_dataset)
            if self.eval_dataset is not None and REF_COLUMNS[0] not in self.eval_dataset.column_names:
                self.eval_dataset = self.add_reference_logps(self.eval_dataset)

    # ---- scores ----------------------------------------------------------------------
    def logps(self, model: Any, batch: dict, prepared: bool = True) -> tuple[Any, Any]:
        """:func:`sequence_logps`, in slices with ``train.loss_chunk_size``; ``prepared``: the model
        runs under the Trainer's mixed precision (the policy, not a separate reference model)."""
        autocast = self.accelerator.autocast if prepared else None
        return sequence_logps(model, batch, self.loss_chunk_size, autocast)

    def reference_logps(self, model: Any, batch: dict) -> Any:
        import torch

        o, reference = self.dpo_options, self.dpo_reference
        if "ref_logps" in batch:
            return batch["ref_logps"]
        if o.loss_type in REFERENCE_FREE or (self.ref_model is None and reference != "adapters"):
            return torch.zeros(batch["input_ids"].shape[0], device=batch["input_ids"].device)
        with torch.no_grad():
            if self.ref_model is not None:
                return self.logps(self.ref_model, batch, prepared=False)[0]
            unwrapped = self.accelerator.unwrap_model(model)
            with unwrapped.disable_adapter():
                return self.logps(unwrapped, batch)[0]

    def pair_scores(self, model: Any, batch: dict) -> Any:
        """[B, 6]: policy and reference log-probs of chosen/rejected and the answers' lengths."""
        import torch

        logps, counts = self.logps(model, batch)
        ref = self.reference_logps(model, batch).to(logps.dtype)
        pc, pr = logps.chunk(2)
        rc, rr = ref.chunk(2)
        nc, nr = counts.to(logps.dtype).chunk(2)
        return torch.stack([pc, pr, rc, rr, nc, nr], dim=1)

    def add_reference_logps(self, dataset: Any) -> Any:
        import torch

        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        chosen, rejected = [], []
        size = self.args.per_device_eval_batch_size
        try:
            with torch.no_grad():
                for start in range(0, len(dataset), size):
                    rows = dataset.select(range(start, min(start + size, len(dataset))))
                    batch = self.data_collator([rows[i] for i in range(len(rows))])
                    batch = {k: v.to(self.args.device) for k, v in batch.items()}
                    pc, pr = self.logps(model, batch, prepared=False)[0].chunk(2)
                    chosen += pc.tolist()
                    rejected += pr.tolist()
        finally:
            model.train(was_training)
        return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)

    # ---- training --------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        import torch

        o = self.dpo_options
        scores = self.pair_scores(model, inputs)
        loss = preference_loss(o.loss_type, o.beta, o.simpo_gamma, *scores.unbind(1)).mean()
        if model.training:
            with torch.no_grad():
                pc, pr, rc, rr, nc, nr = scores.detach().unbind(1)
                wc, wl = rewards(o.loss_type, o.beta, pc, pr, rc, rr, nc, nr)
                sums = torch.stack(
                    [
                        torch.tensor(float(len(pc)), device=pc.device),
                        (wc > wl).float().sum(),
                        (wc - wl).sum(),
                        pc.sum(),
                        pr.sum(),
                    ]
                ).double()
                self._sums = sums if self._sums is None else self._sums + sums
        return (loss, {"scores": scores}) if return_outputs else loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if "loss" in logs and self._sums is not None:
            # Every process logs at the same steps: sum over all of them (exact means over pairs).
            n, correct, margin, pc, pr = self.accelerator.reduce(self._sums, reduction="sum").tolist()
            self._sums = None
            logs.update(
                reward_accuracy=round(correct / n, 4),
                reward_margin=round(margin / n, 4),
                chosen_logps=round(pc / n, 4),
                rejected_logps=round(pr / n, 4),
            )
        super().log(logs, start_time)

    # ---- evaluation ------------------------------------------------------------------
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        import torch

        o = self.dpo_options
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            scores = self.pair_scores(model, inputs)
            loss = preference_loss(o.loss_type, o.beta, o.simpo_gamma, *scores.unbind(1)).mean().detach()
        if prediction_loss_only:
            return loss, None, None
        return loss, scores.float(), inputs["row"].unsqueeze(1)
