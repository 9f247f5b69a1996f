"""The Trainer llmtune runs: its subclass, the length-grouped sampler and TrainingArguments."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from llmtune.config import RunConfig
    from llmtune.tasks import Task
    from llmtune.tasks.base import RunContext


def llmtune_trainer(base: type) -> type:
    """The Trainer subclass llmtune runs (``base`` is ``Trainer`` or ``Seq2SeqTrainer``).

    - eval/predict keep dataset order, on one process or many: transformers groups *eval* batches
      by length when ``group_by_length`` is on, which would reorder predictions relative to the
      rows we export. A sequential sampler sharded by accelerate and ``gather_for_metrics``
      (which drops the padding duplicates of the last batch) count each example exactly once.
    - ``group_by_length`` training batches are grouped with the *global* batch size and a
      per-epoch seeded generator, so the order does not depend on the number of processes (a
      2-process run sees the same batches as a 1-process run with twice the batch size) and a
      resumed run replays the same epoch order (transformers' sampler draws from the global RNG).
    - checkpoints are atomic (:class:`llmtune.checkpoint.AtomicCheckpointMixin`).
    - with ``loss_chunk_size`` (``train.loss_chunk_size``), a causal LM's training loss is computed
      over slices of target tokens (:mod:`llmtune.tasks.common.chunked_loss`), normalised as the
      model's own loss would be, so the batch's logits never exist at once.
    - every training log entry carries the throughput since the previous one (``samples_per_second``
      and, for token inputs, ``tokens_per_second`` of non-padding input tokens), time spent in
      evaluation and checkpointing left out; the Trainer only reports an average at the very end.
    """
    import time

    from torch.utils.data import SequentialSampler

    from llmtune.checkpoint import AtomicCheckpointMixin

    class LlmtuneTrainer(AtomicCheckpointMixin, base):  # type: ignore[misc, valid-type]
        length_group_batches = 4  # train.group_by_length_batches
        longest_first = 0  # train.longest_first
        loss_chunk_size: int | None = None  # train.loss_chunk_size
        # The task's eval step (Task.eval_step): reduces each batch to what metrics need.
        eval_step: Any = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # transformers assumes a model whose forward takes **kwargs normalises its loss by
            # ``num_items_in_batch`` (then it neither divides by the accumulation steps nor
            # averages over processes). Mean-reduced losses (sequence classification, BERT's MLM
            # head, ...) break that assumption: accumulation and multi-process runs would scale the
            # loss by the step/process count. Ask the model once, on a few training rows.
            if (
                self.model_accepts_loss_kwargs
                and (self.args.gradient_accumulation_steps > 1 or self.args.world_size > 1)
                and loss_uses_item_count(self) is False
            ):
                self.model_accepts_loss_kwargs = False
            self._window_start: float | None = None
            self._window_paused = 0.0
            self._window_counts: Any = None  # device tensor [samples, tokens]: no sync per step

        # ---- chunked causal LM loss ----------------------------------------------------
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self.loss_chunk_size or return_outputs or "labels" not in inputs:
                return super().compute_loss(
                    model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
                )
            from llmtune.tasks.common.chunked_loss import causal_lm_nll

            inputs = dict(inputs)
            labels = inputs.pop("labels")
            total, count = causal_lm_nll(model, inputs, labels, self.loss_chunk_size, self.accelerator.autocast)
            # As transformers' ForCausalLMLoss and Trainer.compute_loss: divided by the target count
            # of the whole accumulated (and, across processes, gathered) batch when the Trainer
            # passes it to a model that takes it, else the mean over this batch's targets.
            if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
                items = num_items_in_batch
                loss = total / (items.to(total.device) if hasattr(items, "to") else items)
                if self.args.average_tokens_across_devices:
                    scale = self.accelerator.num_processes // self.get_tp_size()
                    loss = loss * (scale if self.args.n_gpu <= 1 else self.args.n_gpu)
                return loss
            return total / count

        # ---- throughput ---------------------------------------------------------------
        def training_step(self, model, inputs, *args, **kwargs):
            if self._window_start is None:
                self._window_start, self._window_paused = time.perf_counter(), 0.0
            counts = batch_counts(inputs, getattr(model, "main_input_name", "input_ids"))
            if counts is not None:
                self._window_counts = counts if self._window_counts is None else self._window_counts + counts
            return super().training_step(model, inputs, *args, **kwargs)

        def log(self, logs, *args, **kwargs):
            if "loss" in logs and self._window_start is not None:
                elapsed = time.perf_counter() - self._window_start - self._window_paused
                if self._window_counts is not None and elapsed > 0:
                    # A collective: every rank logs at the same step.
                    samples, tokens = self.accelerator.reduce(self._window_counts, reduction="sum").tolist()
                    logs["samples_per_second"] = round(samples / elapsed, 3)
                    if tokens > 0:
                        logs["tokens_per_second"] = round(tokens / elapsed, 1)
                self._window_start, self._window_paused, self._window_counts = time.perf_counter(), 0.0, None
            return super().log(logs, *args, **kwargs)

        @contextlib.contextmanager
        def _outside_window(self):
            """Time spent here (evaluation, checkpoints) does not count in the logged speeds."""
            started = time.perf_counter()
            try:
                yield
            finally:
                self._window_paused += time.perf_counter() - started

        def evaluate(self, *args, **kwargs):
            with self._outside_window():
                return super().evaluate(*args, **kwargs)

        def _save_checkpoint(self, *args, **kwargs):
            with self._outside_window():
                return super()._save_checkpoint(*args, **kwargs)

        eval_data_collator = None  # the eval loop's collator when it differs from training's

        def _get_dataloader(self, dataset, description, batch_size, sampler_fn=None, is_training=False, **kwargs):
            if is_training or self.eval_data_collator is None:
                return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, **kwargs)
            train_collator, self.data_collator = self.data_collator, self.eval_data_collator
            try:
                return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, **kwargs)
            finally:
                self.data_collator = train_collator

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            if self.eval_step is None:
                return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
            import torch

            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss, predictions, labels = self.eval_step(model, inputs)
            loss = loss.detach() if loss is not None else None
            if prediction_loss_only:
                return loss, None, None
            return loss, predictions, labels

        def _get_eval_sampler(self, eval_dataset):
            if eval_dataset is None or not hasattr(eval_dataset, "__len__"):
                return None
            return SequentialSampler(eval_dataset)

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            grouped = self.args.train_sampling_strategy == "group_by_length"
            if not (grouped or self.longest_first) or not hasattr(dataset, "__len__"):
                return super()._get_train_sampler(train_dataset)
            # The Trainer drops columns the model does not take (``length`` among them) before asking
            # for a sampler; the rows are the same, so read lengths from the full training set.
            full = self.train_dataset if len(self.train_dataset or []) == len(dataset) else dataset
            if "length" in getattr(full, "column_names", []):
                lengths = list(full["length"])
            elif "length" in getattr(dataset, "column_names", []):
                lengths = list(dataset["length"])
            else:
                lengths = [len(ids) for ids in dataset["input_ids"]]
            args = self.args
            self._length_sampler = LengthGroupedSampler(
                lengths,
                args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size),
                self.length_group_batches if grouped else 0,
                args.data_seed if args.data_seed is not None else args.seed,
                longest_first=self.longest_first,
            )
            return self._length_sampler

        _length_sampler: LengthGroupedSampler | None = None

        def _run_epoch(self, model, epoch, *args, **kwargs):
            # The epoch seeds the length-grouped order. accelerate's set_epoch reaches the sampler
            # through BatchSamplerShard (several processes) or SkipBatchSampler (a resumed epoch)
            # but not through both: a multi-process run resumed mid-epoch replayed epoch 0's order.
            if self._length_sampler is not None:
                self._length_sampler.set_epoch(epoch)
            if 0 < self.state.max_steps <= self.state.global_step:
                # resumed from a checkpoint at max_steps: the Trainer checks the limit only after a
                # step, so it would train one step more than asked
                self.control.should_training_stop = True
                return None
            return super()._run_epoch(model, epoch, *args, **kwargs)

    LlmtuneTrainer.__name__ = f"Llmtune{base.__name__}"
    return LlmtuneTrainer


def batch_counts(inputs: Any, main_input_name: str = "input_ids") -> Any:
    """A device tensor [rows, non-padding input tokens] for one batch (None: no tensor input)."""
    import torch

    ids = inputs.get(main_input_name) if hasattr(inputs, "get") else None
    if ids is None:
        ids = inputs.get("input_ids") if hasattr(inputs, "get") else None
    if not isinstance(ids, torch.Tensor) or ids.dim() == 0:
        return None
    mask = inputs.get("attention_mask")
    if ids.dtype.is_floating_point:  # audio / pixel inputs: count rows only
        tokens = torch.zeros((), dtype=torch.int64, device=ids.device)
    elif isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
        tokens = mask.sum().to(torch.int64)
    else:
        tokens = torch.tensor(ids.numel(), dtype=torch.int64, device=ids.device)
    rows = torch.tensor(ids.shape[0], dtype=torch.int64, device=ids.device)
    return torch.stack([rows, tokens])


def loss_uses_item_count(trainer: Any) -> bool | None:
    """Whether the model's loss is divided by ``num_items_in_batch`` (None: could not tell).

    Two no-grad forwards of the same 4 rows with item counts 1 and 2: a loss that uses the count
    halves. RNG states are restored, so the probe does not change the run.
    """
    import random

    import numpy as np
    import torch

    dataset = trainer.train_dataset
    if dataset is None or not hasattr(dataset, "select") or len(dataset) == 0:
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    rows = trainer._remove_unused_columns(dataset.select(range(min(4, len(dataset)))))
    py_state, np_state = random.getstate(), np.random.get_state()
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            batch = trainer.data_collator([rows[i] for i in range(len(rows))])
            device = next(model.parameters()).device
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            model.eval()
            one = model(**batch, num_items_in_batch=torch.tensor(1.0, device=device)).loss
            two = model(**batch, num_items_in_batch=torch.tensor(2.0, device=device)).loss
    except Exception:  # a model that rejects the probe: keep transformers' choice
        return None
    finally:
        model.train(was_training)
        random.setstate(py_state)
        np.random.set_state(np_state)
    if one is None or two is None or not torch.isfinite(one) or float(one) == 0.0:
        return None
    return bool(torch.isclose(one, 2 * two, rtol=1e-4))


#: DDP's error when a parameter got no gradient while ``find_unused_parameters`` was off
DDP_UNUSED_ERROR = "Expected to have finished reduction in the prior iteration"


def settle_find_unused_parameters(trainer: Any) -> str | None:
    """Decide DDP's ``find_unused_parameters`` when ``train.ddp_find_unused_parameters`` is auto (null).

    transformers turns it on for every multi-process run (off only with gradient checkpointing):
    DDP then walks the autograd graph after every forward to find parameters without a gradient,
    and at the first step warns when it found none. Here it is on only where the model needs it:
    layers or experts skipped at random (:func:`stochastic_structure`), or trainable parameters
    that a probe step leaves without a gradient (:func:`parameters_without_gradient`); a probe
    that cannot run keeps it on. All processes agree (any one needing it turns it on for all).
    Call before ``trainer.train()``; returns a note for the run's output when it is on.
    """
    args = trainer.args
    handler = getattr(trainer.accelerator, "ddp_handler", None)
    if args.world_size <= 1 or handler is None or args.ddp_find_unused_parameters is not None:
        return None
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        return None
    if getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False):
        return None  # transformers' choice, off: it breaks reentrant activation checkpointing
    from llmtune.distributed import gather

    reason = stochastic_structure(trainer.accelerator.unwrap_model(trainer.model))
    if reason is None:
        try:
            missing = parameters_without_gradient(trainer)
        except Exception as exc:  # a model or loss the probe cannot drive: keep transformers' choice
            reason = f"a probe step could not run ({type(exc).__name__})"
        else:
            if missing:
                reason = f"{len(missing)} trainable parameter(s) got no gradient in a probe step, e.g. {', '.join(missing[:3])}"
    reasons = [r for r in gather(reason) if r]
    handler.find_unused_parameters = bool(reasons)
    args.ddp_find_unused_parameters = bool(reasons)
    if not reasons:
        return None
    return (
        f"DDP looks for parameters without gradient at every step: {reasons[0]} "
        f"(set train.ddp_find_unused_parameters=false if every step does use them all)"
    )


def stochastic_structure(model: Any) -> str | None:
    """Why some training steps may leave parameters without gradient although a probe step does
    not: layers dropped at random (``layerdrop``), or experts that tokens are routed past."""
    configs = [getattr(model, "config", None)]
    for name in ("text_config", "encoder", "decoder", "audio_config", "vision_config"):
        sub = getattr(configs[0], name, None)
        if hasattr(sub, "to_dict"):
            configs.append(sub)
    for config in configs:
        for key in ("layerdrop", "encoder_layerdrop", "decoder_layerdrop"):
            value = getattr(config, key, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return f"{key}={value} skips layers at random"
        for key in ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"):
            value = getattr(config, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 1:
                return f"a mixture of {value} experts routes tokens past some of them"
    return None


def parameters_without_gradient(trainer: Any, rows: int = 2) -> list[str]:
    """Trainable parameters that one training step on the first ``rows`` training rows leaves
    without a gradient.

    The step is the Trainer's own loss (``compute_loss``: the task's loss, DPO's reference scores
    included), forward and backward in training mode, on the model before DDP wraps it. Every
    RNG, the gradients and the trainer's own attributes are put back as they were, so the run
    is unchanged.
    """
    import itertools
    import random

    import datasets
    import numpy as np
    import torch

    model = trainer.accelerator.unwrap_model(trainer.model)
    dataset, collator = trainer.train_dataset, trainer.data_collator
    if isinstance(dataset, datasets.Dataset):
        dataset = trainer._remove_unused_columns(dataset, description="training")
    else:
        collator = trainer._get_collator_with_removed_columns(collator, description="training")
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    grads = [p.grad for _, p in params]
    attributes = dict(vars(trainer))
    was_training = model.training
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = sorted({p.device.index or 0 for _, p in params if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            examples = list(itertools.islice(iter(dataset), rows))
            inputs = trainer._prepare_inputs(collator(examples))
            for _, p in params:
                p.grad = None
            model.train()
            loss = trainer.compute_loss(model, inputs)
            loss.backward()
            return [name for name, p in params if p.grad is None]
    finally:
        for (_, p), grad in zip(params, grads, strict=True):
            p.grad = grad
        model.train(was_training)
        random.setstate(py_state)
        np.random.set_state(np_state)
        for key in [k for k in vars(trainer) if k not in attributes]:
            delattr(trainer, key)
        vars(trainer).update(attributes)


def unused_parameters_message(trainer: Any, text: str) -> str | None:
    """DDP's error for a parameter without gradient while ``find_unused_parameters`` was off, as
    one line naming the parameters and the setting (None: ``text`` is another error)."""
    import re

    if DDP_UNUSED_ERROR not in text:
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    match = re.search(r"did not receive grad for rank \d+: ([\d ]+)", text)
    picked = [names[int(i)] for i in match.group(1).split() if int(i) < len(names)] if match else []
    shown = f" (e.g. {', '.join(picked[:3])})" if picked else ""
    return (
        f"parameters got no gradient in a training step{shown}, but DDP was set up for a model that uses them all "
        f"(train.ddp_find_unused_parameters off): set --set train.ddp_find_unused_parameters=true"
    )


def length_grouped_indices(lengths: list[int], batch_size: int, group_batches: int, generator: Any) -> list[int]:
    """A random order in which each run of ``batch_size`` indices has similar lengths.

    Shuffle; sort windows of ``group_batches`` batches by length; cut them into batches; shuffle
    the batches (a partial batch stays last, so batch boundaries hold). Small windows keep most of
    the padding savings while batches stay nearly as random as plain shuffling: transformers'
    ``LengthGroupedSampler`` sorts windows of up to 50 batches and yields them longest first, which
    correlates consecutive batches; on our SST-2 benchmark that cost 1.0 point of accuracy, windows
    of 8 batches 0.7, windows of 4 nothing measurable, at 1.8x the throughput of random batches.
    """
    import torch

    perm = torch.randperm(len(lengths), generator=generator).tolist()
    window = max(1, group_batches) * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(perm), window):
        chunk = sorted(perm[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    tail = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [i for b in [*(batches[o] for o in order), *tail] for i in b]


def longest_batches_first(order: list[int], lengths: list[int], batch_size: int, count: int) -> list[int]:
    """``order`` with the ``count`` batches of longest rows (longest row, then most tokens) moved to
    the front, longest first; the other batches keep their order and a partial batch stays last."""
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    tail = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    size = [(max(lengths[i] for i in b), sum(lengths[i] for i in b)) for b in batches]
    first = sorted(range(len(batches)), key=lambda b: size[b], reverse=True)[: max(0, count)]
    chosen = set(first)
    rest = [b for k, b in enumerate(batches) if k not in chosen]
    return [i for b in [*(batches[k] for k in first), *rest, *tail] for i in b]


class LengthGroupedSampler:
    """Llmtune's training order, reseeded from (seed, epoch): the same batches whatever the number
    of processes (``batch_size`` is the global batch), and a resumed run replays its epoch.
    ``group_batches`` > 0: length-grouped (:func:`length_grouped_indices`), 0: a plain shuffle.
    ``longest_first``: in the first epoch, that many batches of the longest rows come first
    (:func:`longest_batches_first`), so a run's peak memory shows in its first steps.
    """

    def __init__(self, lengths: list[int], batch_size: int, group_batches: int, seed: int, longest_first: int = 0):
        self.lengths, self.batch_size, self.group_batches, self.seed = lengths, batch_size, group_batches, seed
        self.longest_first = longest_first
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by Trainer/accelerate before each epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        import torch

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.group_batches > 0:
            order = length_grouped_indices(self.lengths, self.batch_size, self.group_batches, generator)
        else:
            order = torch.randperm(len(self.lengths), generator=generator).tolist()
        if self.longest_first and self.epoch == 0:
            order = longest_batches_first(order, self.lengths, self.batch_size, self.longest_first)
        return iter(order)


def training_arguments(cfg: RunConfig, task: Task, output_dir: Path, has_eval: bool, ctx: RunContext) -> Any:
    import dataclasses

    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    from llmtune import hardware

    t = cfg.train
    eval_strategy = t.eval_strategy if has_eval else "no"
    metric = t.metric_for_best_model or task.main_metric
    greater = task.greater_is_better if t.metric_for_best_model is None else not metric.endswith("loss")
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size * 2,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps,
        save_strategy=eval_strategy if eval_strategy != "no" else ("steps" if t.eval_steps else "epoch"),
        save_steps=t.eval_steps or 500,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=t.load_best_model_at_end and eval_strategy != "no",
        metric_for_best_model=metric,
        greater_is_better=greater,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        gradient_checkpointing=t.gradient_checkpointing,
        report_to=[r for r in t.report_to if r != "none"] or "none",
        disable_tqdm=True,  # llmtune.progress draws the run
        remove_unused_columns=True,
        save_safetensors=True,
        ddp_find_unused_parameters=t.ddp_find_unused_parameters,  # None: settle_find_unused_parameters
    )
    # precision, TF32, torch.compile, optimizer, Liger, dataloader workers (checked in preflight)
    kwargs.update(hardware.training_kwargs(cfg, ctx.state.get("performance")))
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    if t.group_by_length and not cfg.data.streaming:
        if "train_sampling_strategy" in fields:
            kwargs["train_sampling_strategy"] = "group_by_length"
        else:  # older transformers
            kwargs["group_by_length"] = True
    kwargs.update(task.training_args(ctx))
    cls = Seq2SeqTrainingArguments if task.seq2seq else TrainingArguments
    allowed = {f.name for f in dataclasses.fields(cls)}
    if "activation_checkpointing" in allowed:  # transformers' new name for gradient_checkpointing
        kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing")
    return cls(**{k: v for k, v in kwargs.items() if k in allowed})


def build_trainer(ctx: RunContext, task: Task, output_dir: Path, datasets: dict, has_eval: bool) -> Any:
    from transformers import EarlyStoppingCallback, PrinterCallback, Seq2SeqTrainer, Trainer

    from llmtune.checkpoint import fault_injection_callback, skip_final_checkpoint_callback, stop_on_signal_callback
    from llmtune.memory import step_memory_callback
    from llmtune.outputs import run_files_callback
    from llmtune.progress import progress_callback

    cfg = ctx.cfg
    args = training_arguments(cfg, task, output_dir, has_eval, ctx)
    title = f"{Path(output_dir).name}: {cfg.task}, {cfg.model.name_or_path or cfg.model.config}"
    stopper = stop_on_signal_callback()
    # best-model selection may pick the last evaluation's checkpoint: written, then removed with the
    # others once the run has saved its model (llmtune.runner)
    keep_final = cfg.train.keep_checkpoints or bool(args.load_best_model_at_end)
    callbacks = [
        stopper,
        skip_final_checkpoint_callback(stopper, keep_final),
        fault_injection_callback(),
        progress_callback(cfg.train.progress, args.metric_for_best_model, args.greater_is_better),
        run_files_callback(output_dir, title, args.metric_for_best_model, args.greater_is_better),
    ]
    if ctx.training:
        callbacks.append(step_memory_callback())
    if cfg.train.early_stopping_patience and has_eval:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    base = Seq2SeqTrainer if task.seq2seq else Trainer
    cls = task.trainer_class(ctx, llmtune_trainer(base))
    cls.loss_chunk_size = cfg.train.loss_chunk_size  # a class made for this run; read in __init__ too (dpo)
    trainer = cls(
        model=ctx.model,
        args=args,
        data_collator=task.collator(ctx),
        train_dataset=datasets.get("train"),
        eval_dataset=datasets.get("validation") if has_eval else None,
        processing_class=ctx.tokenizer,
        compute_metrics=task.compute_metrics(ctx),
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics(ctx),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # the raw dicts; llmtune.progress shows the run instead
    trainer.eval_step = task.eval_step(ctx)
    # The resolved config goes into every checkpoint, inside the atomic save.
    trainer.checkpoint_writers = [lambda folder: ctx.saved_config().save(folder)]
    trainer.length_group_batches = cfg.train.group_by_length_batches
    trainer.longest_first = cfg.train.longest_first
    trainer.eval_data_collator = task.eval_collator(ctx)
    return trainer


def check_report_to(names: list[str]) -> None:
    """Refuse a ``train.report_to`` integration that transformers lacks or that is not installed."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    from llmtune.errors import LlmtuneError

    available = set(get_available_reporting_integrations())
    for name in names:
        if name == "none":
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise LlmtuneError(
                f"train.report_to: unknown integration '{name}'; known: none, {', '.join(sorted(INTEGRATION_TO_CALLBACK))}"
            )
        if name not in available:
            raise LlmtuneError(
                f"train.report_to: '{name}' is not installed (pip install {name.replace('_', '-')}), "
                f"or drop it, e.g. --set train.report_to=[tensorboard]"
            )
