"""Files a run writes: output folder checks, atomic JSON/JSONL writers, metrics cleaning, model card."""

from __future__ import annotations

import json
import math
import os
import shutil
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
