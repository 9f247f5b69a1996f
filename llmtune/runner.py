"""Shared mechanics of every run: data -> task preprocessing -> model -> Trainer -> outputs.

Tasks only supply hooks (:class:`llmtune.tasks.base.Task`); everything here is written once.
Distributed runs go through accelerate (``PartialState``): preprocessing runs on the main
process first, then on the first process of every other machine, and the others reuse their
machine's ``datasets`` cache; only the main process prints/writes; the output folder is checked on
every machine (:func:`check_output_storage`).
Output files live in :mod:`llmtune.outputs`, printing in :mod:`llmtune.console`, the Trainer
subclass and its arguments in :mod:`llmtune.trainer`.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from llmtune.adapters import apply_adapters, check_runtime, save_adapted
from llmtune.config import CONFIG_FILENAME, RunConfig
from llmtune.console import echo, metrics_table, quiet_libraries, warn
from llmtune.curves import CURVES_FILE
from llmtune.errors import LlmtuneError
from llmtune.outputs import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    TENSORBOARD_DIR,
    TRAINING_LOG_FILE,
    check_output_dir,
    clean_metrics,
    default_output_dir,
    remove_run_files,
    removed_on_failure,
    write_json,
    write_jsonl,
    write_model_card,
    write_run_status,
)
from llmtune.recipes import recipe_defaults_note, task_defaults_note
from llmtune.tasks import get_task
from llmtune.tasks.base import RunContext
from llmtune.trainer import build_trainer, settle_find_unused_parameters, unused_parameters_message


def command_line() -> str:
    return "llmtune " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def run_train(cfg: RunConfig, command: str | None = None, debug: bool = False) -> dict:
    """Fine-tune or pretrain according to ``cfg``; returns the metrics written to metrics.json."""
    task = get_task(cfg.task)
    output_dir = default_output_dir(cfg)
    cfg = cfg.with_values({"train.output_dir": str(output_dir)})
    prepare_hub_access_for(cfg)

    from llmtune.checkpoint import latest_checkpoint
    from llmtune.launch import distributed_state

    state = distributed_state()
    # A folder this run creates goes again if the run fails before a checkpoint is saved in it.
    guard = removed_on_failure(output_dir, keep=latest_checkpoint) if state.is_main_process else nullcontext()
    with guard, connection_losses_reported(state, output_dir):
        resume_from = check_output_storage(cfg, output_dir, state)
        return _train(cfg, task, output_dir, state, command, debug, resume_from)


def check_output_storage(cfg: RunConfig, output_dir: Path, state: Any) -> Path | None:
    """Check the output folder on every machine before any work; returns the checkpoint to resume from.

    The main process checks that earlier results are not clobbered and picks the checkpoint for
    ``--resume``. Over several processes every machine must also write to the same folder: the main
    process writes checkpoints and the final model, every process writes its part of a checkpoint
    (RNG state, shards) and reads the checkpoint it resumes from. So the first process of each
    other machine checks that the folder is writable there and shows a file the main process just
    wrote. Any problem stops every process, on every machine, with the same message; all of them
    resume from the checkpoint the main process picked.
    """
    import uuid

    from llmtune.checkpoint import incomplete_reason, resolve_resume
    from llmtune.distributed import gather, stop_together

    def main_checks() -> Path | None:
        check_output_dir(output_dir, cfg.train.overwrite, allow_existing=cfg.train.resume is not None)
        return resolve_resume(cfg.train.resume, output_dir)

    if state.num_processes == 1:
        return main_checks()
    resume_from, token, problem, error = None, None, None, None
    if state.is_main_process:
        try:
            resume_from = main_checks()
            token = uuid.uuid4().hex
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / f"{STORAGE_CHECK_PREFIX}{token}").write_text(token, encoding="utf-8")
        except LlmtuneError as exc:
            problem, error = str(exc), exc
        except OSError as exc:
            problem = f"output dir {output_dir} is not writable ({exc.strerror}): pass another --output-dir"
    stop_together(problem, error)
    token, resume = gather((token, str(resume_from) if resume_from else None))[0]
    try:
        problem = None
        if state.is_local_main_process and not state.is_main_process:
            problem = machine_storage_problem(output_dir, token)
            if problem is None and resume is not None and incomplete_reason(resume) is not None:
                problem = f"checkpoint {resume} picked by the main process is not complete on this machine: {incomplete_reason(resume)}"
        if problem is not None:
            from llmtune.distributed import machine_name

            problem = f"{machine_name()}: {problem}"
        stop_together(problem)
    finally:
        if state.is_main_process:
            (output_dir / f"{STORAGE_CHECK_PREFIX}{token}").unlink(missing_ok=True)
    return Path(resume) if resume is not None else None


#: a file the main process writes, named and filled with a fresh token (check_output_storage): a
#: new name every run, so no network filesystem can answer from an earlier lookup
STORAGE_CHECK_PREFIX = ".llmtune-storage-check-"


def machine_storage_problem(output_dir: Path, token: str, wait: float = 5.0) -> str | None:
    """Why ``output_dir`` on this machine is not writable, or not the main process's folder (its
    file ``STORAGE_CHECK_PREFIX + token`` not seen within ``wait`` seconds); None when all is well."""
    shared = (
        "--output-dir must be one folder on storage every machine mounts, writable from all of them (the main "
        "process writes checkpoints and the final model there, every machine reads the checkpoint it resumes from)"
    )
    deadline = time.monotonic() + wait
    while True:
        probe_dir = output_dir
        while not probe_dir.exists() and probe_dir != probe_dir.parent:
            probe_dir = probe_dir.parent
        if not probe_dir.is_dir():
            return f"output dir {output_dir} is not writable here ({probe_dir} is a file): {shared}"
        if probe_dir == output_dir:
            try:
                probe = output_dir / f".llmtune-write-test-{os.getpid()}"
                probe.write_text("ok")
                probe.unlink()
            except OSError as exc:
                return f"output dir {output_dir} is not writable here ({exc.strerror}): {shared}"
            try:
                if (output_dir / f"{STORAGE_CHECK_PREFIX}{token}").read_text(encoding="utf-8") == token:
                    return None
            except OSError:
                pass
        if time.monotonic() >= deadline:  # not seen (yet): a network filesystem may show it a little later
            break
        time.sleep(0.25)
    if probe_dir != output_dir:
        return f"output dir {output_dir} does not exist here, although the main process created it: {shared}"
    return f"output dir {output_dir} does not show the files the main process writes there: {shared}"


@contextmanager
def connection_losses_reported(state: Any, output_dir: Path | None = None) -> Iterator[None]:
    """A run over several processes that loses one of them stops with one line saying so and how
    to go on (not with a gloo/NCCL error), exit code 1. ``output_dir``: a training run's, whose
    newest checkpoint is named for ``--resume auto``."""
    try:
        yield
    except LlmtuneError:
        raise
    except Exception as exc:
        if state.num_processes == 1:
            raise
        from llmtune.distributed import LostConnection, lost_connection, machine_name

        if not lost_connection(exc):
            raise
        what = "start it again on every machine"
        if output_dir is not None:
            from llmtune.checkpoint import latest_checkpoint

            newest = latest_checkpoint(output_dir)
            what = "start llmtune again on every machine with --resume auto " + (
                f"(it continues from {newest})" if newest else "(no complete checkpoint yet: it starts over)"
            )
        raise LostConnection(
            f"{machine_name()} lost the connection to another process of this run (a machine stopped, was "
            f"killed or lost its network): {what}"
        ) from exc


def _train(
    cfg: RunConfig,
    task: Any,
    output_dir: Path,
    state: Any,
    command: str | None,
    debug: bool,
    resume_from: Path | None,
) -> dict:
    from transformers import set_seed

    from llmtune.checkpoint import remove_checkpoints, remove_partial
    from llmtune.distributed import machine_first

    quiet_libraries(debug)
    from llmtune.trainer import check_report_to

    check_report_to(cfg.train.report_to)
    quiet = cfg.train.progress == "quiet"
    info = (lambda *a, **k: None) if quiet else echo  # --quiet: final metrics and errors only
    info("llmtune: resolved config\n" + cfg.to_yaml())
    for note in (recipe_defaults_note(cfg), task_defaults_note(cfg)):
        if note:
            info(note)
    if resume_from is not None:
        info(f"llmtune: resuming from {resume_from}")
    elif cfg.train.resume == "auto":
        info(f"llmtune: no complete checkpoint in {output_dir}: starting from scratch")
    set_seed(cfg.train.seed)
    check_runtime(cfg)  # QLoRA without a GPU: refused before any loading
    if cfg.eval.benchmarks:
        from llmtune.harness import check_before_training

        check_before_training(cfg)  # harness installed, names known, offline files there

    from llmtune import hardware

    ctx = RunContext(cfg=cfg, training=True, model_path=cfg.model.name_or_path)
    ctx.state["performance"] = performance = hardware.preflight(cfg)  # before any data work
    info(performance_line(cfg, performance))
    ctx.tokenizer = task.load_tokenizer(ctx)

    def load_and_prepare() -> tuple[Any, Any]:
        raw = task.load_data(ctx)
        return raw, task.prepare(ctx, raw)

    raw, processed = machine_first(state, load_and_prepare)
    if "train" not in processed:
        raise LlmtuneError(f"dataset '{cfg.data.dataset}' has no '{cfg.data.train_split}' split to train on")
    check_train_size(ctx, processed["train"], state.num_processes)
    ctx.model = task.build_model(ctx)
    hardware.apply_to_model(cfg, ctx.model)
    task.check_model(ctx, ctx.model)
    task.finalize_model(ctx, ctx.model)
    ctx.model = apply_adapters(ctx, ctx.model, task)
    for message in ctx.warnings:  # every input loaded: the run starts
        warn(message)
    has_eval = "validation" in processed

    if state.is_main_process:
        # Only now, with data and model ready: a failed start leaves earlier outputs untouched.
        if cfg.train.overwrite:
            remove_checkpoints(output_dir)
            remove_run_files(output_dir)
        remove_partial(output_dir)
        ctx.saved_config().save(output_dir)
    state.wait_for_everyone()
    trainer = build_trainer(ctx, task, output_dir, processed, has_eval)
    if has_eval and ctx.state.get("eval_batch_note"):
        info(f"llmtune: {ctx.state['eval_batch_note']}")
    started = time.perf_counter()
    stopper = _callback(trainer, "StopOnSignal")
    finished = False
    try:
        note = settle_find_unused_parameters(trainer)
        if note:
            info(f"llmtune: {note}")
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        finished = True
    except KeyError as exc:  # found by the Trainer at the first evaluation
        if "metric_for_best_model" not in str(exc):
            raise
        raise LlmtuneError(unknown_metric_message(cfg, str(exc))) from exc
    except RuntimeError as exc:
        message = unused_parameters_message(trainer, str(exc))
        if message is None:
            raise
        raise LlmtuneError(message) from exc
    finally:
        stopper.on_train_end(trainer.args, trainer.state, trainer.control)  # restore signal handlers
        _callback(trainer, "ProgressDisplay").close()  # the live display, also on errors
        if state.is_main_process:
            stopped = stopper.stopped and trainer.state.global_step < trainer.state.max_steps
            status = "training-done" if finished and not stopped else ("stopped" if stopped else "failed")
            write_run_status(output_dir, status, step=trainer.state.global_step, max_steps=trainer.state.max_steps)
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
    for key in ("trainable_params", "total_params"):
        train_metrics[key] = ctx.state.get(key)
    memory = next((cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "StepMemory"), None)
    if memory is not None:
        train_metrics.update(memory.metrics())

    metrics: dict[str, Any] = {"train": train_metrics}
    records: list[dict] = []
    if has_eval:
        eval_metrics, records = task.predict(ctx, trainer, raw["validation"], processed["validation"])
        metrics["eval"] = clean_metrics(eval_metrics)
    if "test" in processed:
        # The held-out split: scored once, with the final (best) model, never used for selection.
        test_metrics, records = task.predict(ctx, trainer, raw["test"], processed["test"])
        metrics["test"] = clean_metrics({k.replace("eval_", "test_", 1): v for k, v in test_metrics.items()})

    save_adapted(ctx, trainer, output_dir, task)  # adapters: also merged, per peft.merge
    if state.is_main_process:
        task.save_extras(ctx, output_dir)
        ctx.saved_config().save(output_dir)
        write_json(output_dir / METRICS_FILE, metrics)
        if records:
            write_jsonl(output_dir / PREDICTIONS_FILE, records)
        write_model_card(output_dir / "README.md", cfg, task, metrics, command or command_line(), ctx)
        write_run_status(output_dir, "finished", wall_seconds=train_metrics["train_wall_seconds"])
    state.wait_for_everyone()  # every process has saved: the run is complete
    removed = remove_checkpoints(output_dir) if state.is_main_process and not cfg.train.keep_checkpoints else []
    if cfg.eval.benchmarks and state.is_main_process:
        metrics["benchmarks"] = _benchmarks_after_training(cfg, task, metrics, output_dir, ctx, command, debug, info)
    info("")
    if "eval" in metrics:
        echo(metrics_table("eval metrics (validation split)", task.headline(metrics["eval"])))
    if "test" in metrics:
        echo("\n" + metrics_table("held-out metrics (test split)", task.headline(metrics["test"])))
    if "benchmarks" in metrics:
        from llmtune.harness import comparison_table

        echo("\n" + comparison_table(metrics["benchmarks"]))
    info(
        f"\nmodel, tokenizer, {CONFIG_FILENAME}, {METRICS_FILE} and README.md saved to {output_dir}"
        + f"; curves: {output_dir / CURVES_FILE}"
        + (
            f"; TensorBoard: tensorboard --logdir {output_dir / TENSORBOARD_DIR}"
            if "tensorboard" in cfg.train.report_to
            else ""
        )
    )
    if removed:
        info(
            f"checkpoints removed ({', '.join(p.name for p in removed)}): the run is complete and its model is saved; "
            f"--set train.keep_checkpoints=true keeps them, to extend a run later with --resume"
        )
    return metrics


def _benchmarks_after_training(
    cfg: RunConfig,
    task: Any,
    metrics: dict,
    output_dir: Path,
    ctx: RunContext,
    command: str | None,
    debug: bool,
    info: Any,
) -> dict:
    """eval.benchmarks: the starting and the trained model through lm-evaluation-harness; the
    before/after table goes into metrics.json and the model card (main process, model saved)."""
    from llmtune.harness import before_after

    info(f"llmtune: benchmarks {', '.join(cfg.eval.benchmarks)} on the starting and the trained model (lm-eval)")
    result = before_after(cfg, output_dir, debug)
    write_json(output_dir / METRICS_FILE, {**metrics, "benchmarks": result})
    write_model_card(
        output_dir / "README.md", cfg, task, {**metrics, "benchmarks": result}, command or command_line(), ctx
    )
    return result


def unknown_metric_message(cfg: RunConfig, text: str) -> str:
    import re

    match = re.search(r"available evaluation metrics are: \[(.*?)\]", text)
    found = re.findall(r"'eval_(\w+)'", match.group(1)) if match else []
    skip = ("runtime", "samples_per_second", "steps_per_second", "epoch")
    shown = ", ".join(m for m in found if not m.endswith(skip)) or "(none)"
    return (
        f"train.metric_for_best_model {cfg.train.metric_for_best_model!r} is not a metric task {cfg.task} reports; "
        f"pick one of: {shown}"
    )


def check_train_size(ctx: RunContext, train: Any, processes: int) -> None:
    """Fewer training rows (examples, packed blocks) than processes: refused (a process would only
    see copies of other processes' rows); fewer than one global batch: warned."""
    if not hasattr(train, "__len__"):
        return  # a stream
    n, t = len(train), ctx.cfg.train
    if n < processes:
        raise LlmtuneError(
            f"the training split has {n} row(s) after preprocessing for {processes} processes: each process needs "
            f"at least one; add data or use fewer processes"
        )
    batch = t.batch_size * t.gradient_accumulation_steps * processes
    if n < batch:
        ctx.warnings.append(
            f"the training split has {n} row(s) after preprocessing, fewer than one batch ({batch}): every step "
            f"sees the whole split (lower --batch-size, or add data)"
        )


def _callback(trainer: Any, name: str) -> Any:
    return next(cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == name)


def performance_line(cfg: RunConfig, resolved: dict) -> str:
    """What the run will use: precision (auto resolved), attention, compile, optimizer."""
    from llmtune.hardware import machine

    t = cfg.train
    parts = [
        f"precision {resolved['precision']}" + (" (auto)" if t.precision == "auto" else ""),
        f"attention {cfg.model.attn_implementation or 'sdpa (default)'}",
        f"optimizer {resolved['optim']}",
    ]
    if resolved["compile"]:
        parts.append(f"torch.compile ({t.compile_mode or 'default'})")
    if t.liger_kernel:
        parts.append("Liger kernels")
    return f"llmtune: {machine()}: " + ", ".join(parts)


def precheck_train(cfg: RunConfig, files: bool = True) -> None:
    """Cheap checks worth doing before launching workers: output dir and --resume (``files``), runtime."""
    from llmtune.checkpoint import resolve_resume

    if files:
        output_dir = default_output_dir(cfg)
        check_output_dir(output_dir, cfg.train.overwrite, allow_existing=cfg.train.resume is not None)
        resolve_resume(cfg.train.resume, output_dir)
    check_runtime(cfg)


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

    from llmtune.launch import distributed_state

    state = distributed_state()
    if state.is_main_process:
        check_output_dir(output_dir, overwrite=True)
    state.wait_for_everyone()
    # MODEL/eval (or --output-dir) is created by the Trainer; a failed eval leaves none behind.
    guard = removed_on_failure(output_dir) if state.is_main_process else nullcontext()
    with guard, connection_losses_reported(state):
        return _evaluate(cfg, task, model_path, output_dir, split, state, debug)


def _evaluate(
    cfg: RunConfig, task: Any, model_path: str, output_dir: Path, split: str | None, state: Any, debug: bool
) -> dict:
    from transformers import set_seed

    quiet_libraries(debug)
    set_seed(cfg.train.seed)

    # Scoring only: the eval folder, no best-model reload, no experiment tracking.
    values = {"train.output_dir": str(output_dir), "train.load_best_model_at_end": False, "train.report_to": ["none"]}
    cfg = cfg.with_values({**values, "data.eval_split": split} if split else values)
    from llmtune import hardware

    ctx = RunContext(cfg=cfg, training=False, model_path=model_path)
    ctx.state["performance"] = hardware.preflight(cfg)
    ctx.tokenizer = task.load_tokenizer(ctx)
    ctx.model = task.load_trained_model(ctx)
    hardware.apply_to_model(cfg, ctx.model)
    task.check_model(ctx, ctx.model)

    def load_and_prepare() -> tuple[Any, Any]:
        raw = task.load_data(ctx)
        if "validation" not in raw:
            if split is None and "train" in raw and "test" not in raw:
                raw["validation"] = raw["train"]  # a single file: evaluate on all of it
            elif "test" in raw and split is None:
                raw["validation"] = raw["test"]
            else:
                raise LlmtuneError(f"dataset '{cfg.data.dataset}' has no split to evaluate; pass --split")
        return raw, task.prepare(ctx, {"validation": raw["validation"]})

    from llmtune.distributed import machine_first

    raw, processed = machine_first(state, load_and_prepare)
    for message in ctx.warnings:
        warn(message)
    trainer = build_trainer(ctx, task, output_dir, processed, has_eval=True)
    method = task.eval_note(ctx)
    for line in (method, ctx.state.get("eval_batch_note")):
        if line and cfg.train.progress != "quiet":
            echo(f"llmtune: {line}")
    metrics, records = task.predict(ctx, trainer, raw["validation"], processed["validation"])
    metrics = clean_metrics(metrics)
    if state.is_main_process:
        summary = {"eval": metrics, "model": model_path, "dataset": cfg.data.dataset}
        if method:
            summary["method"] = method
        write_json(output_dir / METRICS_FILE, summary)
        write_jsonl(output_dir / PREDICTIONS_FILE, records)
        ctx.saved_config().save(output_dir)
    state.wait_for_everyone()
    echo(metrics_table(f"eval metrics ({cfg.data.dataset})", task.headline(metrics)))
    if cfg.train.progress != "quiet":
        echo(f"\n{METRICS_FILE} and {PREDICTIONS_FILE} ({len(records)} rows) written to {output_dir}")
    return metrics
