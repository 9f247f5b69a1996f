"""Shared mechanics of every run: data -> task preprocessing -> model -> Trainer -> outputs.

Tasks only supply hooks (:class:`llmtune.tasks.base.Task`); everything here is written once.
Distributed runs go through accelerate (``PartialState``): preprocessing runs on the main
process first and the others reuse the ``datasets`` cache; only the main process prints/writes.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from llmtune.config import CONFIG_FILENAME, RunConfig
from llmtune.errors import LlmtuneError
from llmtune.tasks import Task, get_task
from llmtune.tasks.base import RunContext

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
# Every logged training step (loss, lr, grad norm) and evaluation: trainer_state's log_history,
# continued across resumes.
TRAINING_LOG_FILE = "training_log.jsonl"


# ---------------------------------------------------------------------------------------------
# output folder handling


def default_output_dir(cfg: RunConfig) -> Path:
    return Path(cfg.train.output_dir or f"outputs/{cfg.task}")


def check_output_dir(path: Path, overwrite: bool, allow_existing: bool = False) -> None:
    """Refuse to clobber earlier results; make sure we can write before any work starts."""
    if path.exists() and not path.is_dir():
        raise LlmtuneError(f"output dir {path} is a file: pass another --output-dir")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or allow_existing):
        raise LlmtuneError(
            f"output dir {path} is not empty: pass --overwrite to replace it, --resume auto to continue, "
            f"or another --output-dir"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".llmtune-write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise LlmtuneError(f"output dir {path} is not writable ({exc.strerror}): pass another --output-dir") from exc


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def clean_metrics(metrics: dict) -> dict:
    out = {}
    for key, value in metrics.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            value = None
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# printing (main process only)


def is_main_process() -> bool:
    from llmtune.launch import distributed_state

    return distributed_state().is_main_process


def echo(msg: str = "", err: bool = False) -> None:
    if is_main_process():
        print(msg, file=sys.stderr if err else sys.stdout, flush=True)


def metrics_table(title: str, metrics: dict) -> str:
    rows = [(k, v) for k, v in metrics.items() if v is not None]
    if not rows:
        return ""
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * max(len(title), width + 14)]
    for key, value in rows:
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown:>12}")
    return "\n".join(lines)


def quiet_libraries(debug: bool) -> None:
    import datasets
    import transformers

    if not debug:
        import warnings

        # Library deprecation notices (e.g. TrainingArguments renames) are for developers, not users.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        transformers.logging.set_verbosity_error()
        # CRITICAL, not ERROR: datasets logs parse failures itself before raising; we report them
        # in one line (with the file's line number) instead.
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()  # shard-writing bars; Trainer's bar stays
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---------------------------------------------------------------------------------------------
# Trainer construction


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
    """
    from torch.utils.data import SequentialSampler

    from llmtune.checkpoint import AtomicCheckpointMixin

    class LlmtuneTrainer(AtomicCheckpointMixin, base):  # type: ignore[misc, valid-type]
        length_group_batches = 4  # train.group_by_length_batches

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

        def _get_eval_sampler(self, eval_dataset):
            if eval_dataset is None or not hasattr(eval_dataset, "__len__"):
                return None
            return SequentialSampler(eval_dataset)

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or not hasattr(dataset, "__len__"):
                return super()._get_train_sampler(train_dataset)
            if "length" in getattr(dataset, "column_names", []):
                lengths = list(dataset["length"])
            else:
                lengths = [len(ids) for ids in dataset["input_ids"]]
            args = self.args
            return LengthGroupedSampler(
                lengths,
                args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size),
                self.length_group_batches,
                args.data_seed if args.data_seed is not None else args.seed,
            )

    LlmtuneTrainer.__name__ = f"Llmtune{base.__name__}"
    return LlmtuneTrainer


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


class LengthGroupedSampler:
    """Length-grouped training order, reseeded from (seed, epoch): the same batches whatever the
    number of processes (``batch_size`` is the global batch), and a resumed run replays its epoch.
    """

    def __init__(self, lengths: list[int], batch_size: int, group_batches: int, seed: int):
        self.lengths, self.batch_size, self.group_batches, self.seed = lengths, batch_size, group_batches, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by Trainer/accelerate before each epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        import torch

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(length_grouped_indices(self.lengths, self.batch_size, self.group_batches, generator))


def training_arguments(cfg: RunConfig, task: Task, output_dir: Path, has_eval: bool, ctx: RunContext) -> Any:
    import dataclasses

    from transformers import Seq2SeqTrainingArguments, TrainingArguments

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
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        gradient_checkpointing=t.gradient_checkpointing,
        dataloader_num_workers=t.dataloader_num_workers,
        dataloader_pin_memory=_has_accelerator(),
        report_to=t.report_to if t.report_to != "none" else "none",
        remove_unused_columns=True,
        save_safetensors=True,
    )
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


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


def build_trainer(ctx: RunContext, task: Task, output_dir: Path, datasets: dict, has_eval: bool) -> Any:
    from transformers import EarlyStoppingCallback, Seq2SeqTrainer, Trainer

    from llmtune.checkpoint import fault_injection_callback, stop_on_signal_callback

    cfg = ctx.cfg
    args = training_arguments(cfg, task, output_dir, has_eval, ctx)
    callbacks = [stop_on_signal_callback(), fault_injection_callback()]
    if cfg.train.early_stopping_patience and has_eval:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    base = Seq2SeqTrainer if task.seq2seq else Trainer
    cls = llmtune_trainer(base)
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
    # The resolved config goes into every checkpoint, inside the atomic save.
    trainer.checkpoint_writers = [cfg.save]
    trainer.length_group_batches = cfg.train.group_by_length_batches
    return trainer


# ---------------------------------------------------------------------------------------------
# model card


def write_model_card(path: Path, cfg: RunConfig, task: Task, metrics: dict, command: str, ctx: RunContext) -> None:
    base = cfg.model.name_or_path or cfg.model.config or "(from scratch)"
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {task.pipeline_tag}" if task.pipeline_tag else None,
        "tags: [llmtune]",
        "---",
        "",
        f"# {path.parent.name or 'model'}",
        "",
        f"Trained with llmtune (task `{cfg.task}`).",
        "",
        f"- **Base model:** `{base}`",
        f"- **Data:** `{cfg.data.dataset}`" + (f" (config `{cfg.data.config_name}`)" if cfg.data.config_name else ""),
    ]
    if ctx.columns:
        lines.append("- **Columns:** " + ", ".join(f"{k} = `{v}`" for k, v in ctx.columns.items() if v))
    labels = ctx.state.get("label_names")
    if labels:
        lines.append("- **Labels:** " + ", ".join(f"`{x}`" for x in labels))
    t = cfg.train
    lines += [
        f"- **Training:** lr {t.learning_rate}, batch {t.batch_size} x {t.gradient_accumulation_steps} accumulation, "
        + (f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epochs")
        + f", seed {t.seed}, {t.precision}",
        "",
        "## Metrics",
        "",
        "| split | metric | value |",
        "|---|---|---|",
    ]
    for split, values in metrics.items():
        for key, value in (values or {}).items():
            if isinstance(value, float):
                lines.append(f"| {split} | {key} | {value:.4f} |")
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        command,
        "```",
        "",
        f"The resolved configuration is in `{CONFIG_FILENAME}`.",
        "",
    ]
    path.write_text("\n".join(x for x in lines if x is not None), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# commands


def command_line() -> str:
    return "llmtune " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def run_train(cfg: RunConfig, command: str | None = None, debug: bool = False) -> dict:
    """Fine-tune or pretrain according to ``cfg``; returns the metrics written to metrics.json."""
    task = get_task(cfg.task)
    output_dir = default_output_dir(cfg)
    cfg.train.output_dir = str(output_dir)
    prepare_hub_access_for(cfg)

    from transformers import set_seed

    from llmtune.checkpoint import remove_checkpoints, remove_partial, resolve_resume
    from llmtune.launch import distributed_state

    state = distributed_state()
    if state.is_main_process:
        check_output_dir(output_dir, cfg.train.overwrite, allow_existing=cfg.train.resume is not None)
    state.wait_for_everyone()
    resume_from = resolve_resume(cfg.train.resume, output_dir)
    quiet_libraries(debug)
    echo("llmtune: resolved config\n" + cfg.to_yaml())
    if resume_from is not None:
        echo(f"llmtune: resuming from {resume_from}")
    elif cfg.train.resume == "auto":
        echo(f"llmtune: no complete checkpoint in {output_dir}: starting from scratch")
    set_seed(cfg.train.seed)

    ctx = RunContext(cfg=cfg, training=True, model_path=cfg.model.name_or_path)
    ctx.tokenizer = task.load_tokenizer(ctx)
    with state.main_process_first():
        raw = task.load_data(ctx)
        processed = task.prepare(ctx, raw)
    if "train" not in processed:
        raise LlmtuneError(f"dataset '{cfg.data.dataset}' has no '{cfg.data.train_split}' split to train on")
    ctx.model = task.build_model(ctx)
    task.finalize_model(ctx, ctx.model)
    has_eval = "validation" in processed

    if state.is_main_process:
        # Only now, with data and model ready: a failed start leaves earlier outputs untouched.
        if cfg.train.overwrite:
            remove_checkpoints(output_dir)
        remove_partial(output_dir)
        cfg.save(output_dir)
    state.wait_for_everyone()
    trainer = build_trainer(ctx, task, output_dir, processed, has_eval)
    started = time.perf_counter()
    stopper = next(cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "StopOnSignal")
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        stopper.on_train_end(trainer.args, trainer.state, trainer.control)  # restore signal handlers
    if state.is_main_process:
        write_jsonl(output_dir / TRAINING_LOG_FILE, trainer.state.log_history)
    if stopper.stopped and trainer.state.global_step < trainer.state.max_steps:
        import signal

        from llmtune.checkpoint import RunInterrupted

        name = signal.Signals(stopper.stopped).name
        raise RunInterrupted(
            f"stopped by {name} at step {trainer.state.global_step}: checkpoint saved to "
            f"{output_dir / f'checkpoint-{trainer.state.global_step}'}; continue with the same command and --resume auto",
            stopper.stopped,
        )
    train_metrics = clean_metrics(dict(result.metrics))
    train_metrics["train_wall_seconds"] = round(time.perf_counter() - started, 3)

    metrics: dict[str, Any] = {"train": train_metrics}
    records: list[dict] = []
    if has_eval:
        eval_metrics, records = task.predict(ctx, trainer, raw["validation"], processed["validation"])
        metrics["eval"] = clean_metrics(eval_metrics)
    if "test" in processed:
        # The held-out split: scored once, with the final (best) model, never used for selection.
        test_metrics, records = task.predict(ctx, trainer, raw["test"], processed["test"])
        metrics["test"] = clean_metrics({k.replace("eval_", "test_", 1): v for k, v in test_metrics.items()})

    trainer.save_model(str(output_dir))
    if state.is_main_process:
        task.save_extras(ctx, output_dir)
        cfg.save(output_dir)
        write_json(output_dir / METRICS_FILE, metrics)
        if records:
            write_jsonl(output_dir / PREDICTIONS_FILE, records)
        write_model_card(output_dir / "README.md", cfg, task, metrics, command or command_line(), ctx)
    state.wait_for_everyone()
    echo("")
    if "eval" in metrics:
        echo(metrics_table("eval metrics (validation split)", task.headline(metrics["eval"])))
    if "test" in metrics:
        echo("\n" + metrics_table("held-out metrics (test split)", task.headline(metrics["test"])))
    echo(f"\nmodel, tokenizer, {CONFIG_FILENAME}, {METRICS_FILE} and README.md saved to {output_dir}")
    return metrics


def precheck_train(cfg: RunConfig) -> None:
    """Cheap checks worth doing before launching workers: output dir and --resume."""
    from llmtune.checkpoint import resolve_resume

    output_dir = default_output_dir(cfg)
    check_output_dir(output_dir, cfg.train.overwrite, allow_existing=cfg.train.resume is not None)
    resolve_resume(cfg.train.resume, output_dir)


def prepare_hub_access_for(cfg: RunConfig) -> None:
    from llmtune.modeling import prepare_hub_access

    prepare_hub_access(cfg.model.name_or_path, cfg.model.tokenizer, cfg.model.config, cfg.data.dataset)


def run_eval(
    cfg: RunConfig, model_dir: str, split: str | None, command: str | None = None, debug: bool = False
) -> dict:
    """Evaluate a saved model on one split; write metrics.json and predictions.jsonl."""
    from llmtune.modeling import model_location

    task = get_task(cfg.task)
    model_path = model_location(model_dir)
    output_dir = Path(cfg.train.output_dir) if cfg.train.output_dir else Path(model_path) / "eval"
    prepare_hub_access_for(cfg)

    from transformers import set_seed

    from llmtune.launch import distributed_state

    state = distributed_state()
    if state.is_main_process:
        check_output_dir(output_dir, overwrite=True)
    state.wait_for_everyone()
    quiet_libraries(debug)
    set_seed(cfg.train.seed)

    if split:
        cfg.data.eval_split = split
    ctx = RunContext(cfg=cfg, training=False, model_path=model_path)
    ctx.tokenizer = task.load_tokenizer(ctx)
    ctx.model = task.load_trained_model(ctx)
    with state.main_process_first():
        raw = task.load_data(ctx)
        if "validation" not in raw:
            if split is None and "train" in raw and "test" not in raw:
                raw["validation"] = raw["train"]  # a single file: evaluate on all of it
            elif "test" in raw and split is None:
                raw["validation"] = raw["test"]
            else:
                raise LlmtuneError(f"dataset '{cfg.data.dataset}' has no split to evaluate; pass --split")
        processed = task.prepare(ctx, {"validation": raw["validation"]})
    cfg.train.output_dir = str(output_dir)
    cfg.train.load_best_model_at_end = False
    trainer = build_trainer(ctx, task, output_dir, processed, has_eval=True)
    metrics, records = task.predict(ctx, trainer, raw["validation"], processed["validation"])
    metrics = clean_metrics(metrics)
    if state.is_main_process:
        write_json(output_dir / METRICS_FILE, {"eval": metrics, "model": model_path, "dataset": cfg.data.dataset})
        write_jsonl(output_dir / PREDICTIONS_FILE, records)
        cfg.save(output_dir)
    state.wait_for_everyone()
    echo(metrics_table(f"eval metrics ({cfg.data.dataset})", task.headline(metrics)))
    echo(f"\n{METRICS_FILE} and {PREDICTIONS_FILE} ({len(records)} rows) written to {output_dir}")
    return metrics
