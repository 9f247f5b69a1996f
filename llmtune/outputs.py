"""Files a run writes: output folder checks, atomic JSON/JSONL writers, metrics cleaning, model card."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune.config import CONFIG_FILENAME
from llmtune.errors import LlmtuneError

if TYPE_CHECKING:  # pragma: no cover
    from llmtune.config import RunConfig
    from llmtune.tasks import Task
    from llmtune.tasks.base import RunContext

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
# Every logged training step (loss, lr, grad norm) and evaluation: trainer_state's log_history,
# continued across resumes.
TRAINING_LOG_FILE = "training_log.jsonl"
# Whether the run is going, finished, stopped or failed (and the process id, so that
# ``llmtune report`` can tell a killed run from a running one).
RUN_STATUS_FILE = "run_status.json"
# TensorBoard event files (``tensorboard --logdir OUTPUT_DIR/runs``), written by transformers.
TENSORBOARD_DIR = "runs"


# ---------------------------------------------------------------------------------------------
# output folder handling


def default_output_dir(cfg: RunConfig) -> Path:
    return Path(cfg.train.output_dir or f"outputs/{cfg.task}")


def check_output_dir(path: Path, overwrite: bool, allow_existing: bool = False) -> None:
    """Refuse to clobber earlier results; make sure we can write before any work starts.

    Creates nothing: the folder is made once the inputs are known to be good, so a run that fails
    on bad input leaves no empty output folder behind (writability is probed in the folder, or in
    its nearest existing parent).
    """
    if path.exists() and not path.is_dir():
        raise LlmtuneError(f"output dir {path} is a file: pass another --output-dir")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or allow_existing):
        raise LlmtuneError(
            f"output dir {path} is not empty: pass --overwrite to replace it, --resume auto to continue, "
            f"or another --output-dir"
        )
    probe_dir = path
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise LlmtuneError(f"output dir {path} is not writable ({probe_dir} is a file): pass another --output-dir")
    try:
        probe = probe_dir / f".llmtune-write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise LlmtuneError(f"output dir {path} is not writable ({exc.strerror}): pass another --output-dir") from exc


@contextmanager
def removed_on_failure(path: Path, keep: Any = None) -> Iterator[None]:
    """Remove ``path`` if the block fails and ``path`` did not exist before it (so nothing a
    failed run created is left behind, and nothing that was there before is touched).
    ``keep(path)`` True keeps it anyway (e.g. it holds a checkpoint to resume from). Main
    process only: call it where the main process writes."""
    existed = path.exists()
    try:
        yield
    except BaseException:
        if not existed and path.is_dir() and not (keep is not None and keep(path)):
            shutil.rmtree(path, ignore_errors=True)
        raise


def remove_run_files(output_dir: Path) -> None:
    """--overwrite: drop the previous run's TensorBoard events, curves and status (checkpoints are
    removed by :func:`llmtune.checkpoint.remove_checkpoints`)."""
    import shutil

    from llmtune.curves import CURVES_FILE

    shutil.rmtree(Path(output_dir) / TENSORBOARD_DIR, ignore_errors=True)
    for name in (CURVES_FILE, RUN_STATUS_FILE, TRAINING_LOG_FILE):
        (Path(output_dir) / name).unlink(missing_ok=True)


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


def write_model_card(path: Path, cfg: RunConfig, task: Task, metrics: dict, command: str, ctx: RunContext) -> None:
    base = cfg.model.name_or_path or cfg.model.config or "(from scratch)"
    lines = [
        "---",
        "library_name: peft" if _adapters_only(cfg) else "library_name: transformers",
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
    lines += task.card_lines(ctx)
    peft = getattr(cfg, "peft", None)
    if peft is not None and peft.method != "none":
        counts = ""
        if ctx.state.get("total_params"):
            share = 100 * ctx.state["trainable_params"] / ctx.state["total_params"]
            counts = f", {ctx.state['trainable_params']:,} trainable parameters ({share:.2f}%)"
        saved = "merged into the weights (adapters in `adapter/`)" if peft.merge else "adapters only"
        details = "" if peft.method == "ia3" else f" r {peft.r}, alpha {peft.alpha:g},"
        lines.append(
            f"- **Adapters:** {peft.method}{details} targets `{peft.target_modules or 'peft default'}`"
            + (", 4-bit NF4 base (QLoRA)" if peft.load_in_4bit else "")
            + f"{counts}; saved {saved}"
        )
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
        if split == "benchmarks":
            continue
        for key, value in (values or {}).items():
            if isinstance(value, float):
                lines.append(f"| {split} | {key} | {value:.4f} |")
    if metrics.get("benchmarks"):
        lines += ["", *benchmark_card_lines(metrics["benchmarks"])]
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


BENCHMARK_METRICS = ("acc", "acc_norm")


def benchmark_metrics(entry: dict) -> list[str]:
    """The metrics of one benchmark's entry worth a table row: acc and acc_norm where it has
    them, else those with a standard error (gsm8k's ``exact_match,strict-match``...)."""
    return [m for m in BENCHMARK_METRICS if m in entry] or [
        k for k in entry if not k.endswith("_stderr") and f"{k}_stderr" in entry
    ]


def benchmark_comparison(benchmarks: dict) -> list[tuple[str, str, float | None, float | None, float | None]]:
    """(benchmark, metric, before, after, after's standard error) rows of a training run's
    ``benchmarks`` entry in metrics.json (``eval.benchmarks``): acc and acc_norm where a
    benchmark has them, else its metrics that have a standard error."""
    before, after = benchmarks.get("before") or {}, benchmarks.get("after") or {}
    rows = []
    for name, entry in after.items():
        for metric in benchmark_metrics(entry):
            old = (before.get(name) or {}).get(metric)
            rows.append((name, metric, old, entry.get(metric), entry.get(f"{metric}_stderr")))
    return rows


def benchmark_card_lines(benchmarks: dict) -> list[str]:
    """The model card's before/after table of ``eval.benchmarks``."""

    def num(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, (int, float)) else "-"

    harness = benchmarks.get("harness") or {}
    settings = harness.get("settings") or {}
    lines = [
        "## Benchmarks",
        "",
        f"lm-evaluation-harness {harness.get('lm_eval_version', '?')}, starting model "
        f"`{benchmarks.get('starting_model') or '-'}`"
        + (f", limit {settings['limit']} rows per task" if settings.get("limit") else "")
        + (f", {settings['num_fewshot']}-shot" if settings.get("num_fewshot") else ", zero-shot")
        + (", offline data" if settings.get("data_dir") else ""),
        "",
        "| benchmark | metric | before | after | stderr (after) |",
        "|---|---|---|---|---|",
    ]
    for name, metric, old, new, stderr in benchmark_comparison(benchmarks):
        lines.append(f"| {name} | {metric} | {num(old)} | {num(new)} | {num(stderr)} |")
    return lines


# ---------------------------------------------------------------------------------------------
# files written while the run trains


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")


def write_run_status(output_dir: Path, status: str, **extra: Any) -> None:
    path = Path(output_dir) / RUN_STATUS_FILE
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
    data.update(status=status, pid=os.getpid(), host=socket.gethostname(), updated=time.time(), **extra)
    data.setdefault("started", data["updated"])
    write_json(path, data)


def run_files_callback(output_dir: Path, title: str, main_metric: str, greater_is_better: bool) -> Any:
    """A ``TrainerCallback`` keeping the run's files current while it trains (main process only):

    - ``training_log.jsonl``: one row appended per log entry, so running and killed runs can be
      reported (rewritten from the Trainer's history at the start: a resumed run continues the
      history of its checkpoint, not the steps the killed run did after it);
    - ``run_status.json``: running, with the step reached;
    - ``training_curves.png``: redrawn after every evaluation and at the end.
    """
    from transformers import TrainerCallback

    from llmtune.curves import CURVES_FILE, history_series, plot_run

    output_dir = Path(output_dir)

    class RunFiles(TrainerCallback):
        def draw(self, state: Any) -> None:
            plot_run(history_series(state.log_history), output_dir / CURVES_FILE, title, main_metric, greater_is_better)

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                write_jsonl(output_dir / TRAINING_LOG_FILE, state.log_history)
                write_run_status(output_dir, "running", step=state.global_step, max_steps=state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and state.log_history:
                append_jsonl(output_dir / TRAINING_LOG_FILE, state.log_history[-1])
                write_run_status(output_dir, "running", step=state.global_step, max_steps=state.max_steps)

        def on_evaluate(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.draw(state)

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.draw(state)

    return RunFiles()


def _adapters_only(cfg: RunConfig) -> bool:
    peft = getattr(cfg, "peft", None)
    return peft is not None and peft.method != "none" and not peft.merge
