"""``llmtune report``: runs side by side, finished, running or killed.

A run folder holds ``llmtune_config.yaml``; its history comes from ``training_log.jsonl``
(appended while the run trains) or, when that is missing or shorter, the newest checkpoint's
``trainer_state.json``; final metrics from ``metrics.json`` when the run finished; the status from
``run_status.json`` (a "running" run whose process is gone was killed). Torch-free.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtune.config import CONFIG_FILENAME, read_yaml
from llmtune.errors import ConfigError, LlmtuneError
from llmtune.outputs import METRICS_FILE, RUN_STATUS_FILE, TRAINING_LOG_FILE


@dataclass
class Run:
    path: Path
    config: dict
    history: list[dict] = field(default_factory=list)
    metrics: dict | None = None
    status: str = "unknown"
    run_status: dict = field(default_factory=dict)

    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.path.resolve().name

    @property
    def train(self) -> dict:
        return self.config.get("train") or {}

    @property
    def main_metric(self) -> str:
        """The metric that selects the best checkpoint (without ``eval_``)."""
        name = self.train.get("metric_for_best_model")
        if not name:
            try:
                from llmtune.tasks import get_task

                name = get_task(str(self.config.get("task"))).main_metric
            except (ConfigError, LlmtuneError):
                name = "loss"
        return name[5:] if name.startswith("eval_") else name

    @property
    def greater_is_better(self) -> bool:
        if self.train.get("metric_for_best_model"):
            return not self.main_metric.endswith("loss")
        try:
            from llmtune.tasks import get_task

            return get_task(str(self.config.get("task"))).greater_is_better
        except (ConfigError, LlmtuneError):
            return False


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a killed run may leave half a line
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _last_step(rows: list[dict]) -> int:
    return max((r.get("step", 0) for r in rows if isinstance(r.get("step"), int)), default=-1)


def _checkpoint_history(path: Path) -> list[dict]:
    best: list[dict] = []
    for ckpt in path.glob("checkpoint-*"):
        state = read_json(ckpt / "trainer_state.json")
        rows = (state or {}).get("log_history") or []
        if _last_step(rows) > _last_step(best):
            best = rows
    return best


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status_of(run: Run) -> str:
    info = run.run_status
    status = info.get("status")
    if status == "finished" or (status is None and run.metrics is not None):
        return "finished"
    if status in ("running", "training-done"):
        if info.get("host") not in (None, socket.gethostname()):
            return f"running? (on {info.get('host')})"
        return "running" if _pid_alive(info.get("pid")) else "killed"
    if status in ("stopped", "failed"):
        return status
    return "incomplete"


def load_run(folder: str | Path) -> Run:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise LlmtuneError(f"{folder} is not a folder: pass a run's output dir (it holds {CONFIG_FILENAME})")
    config_path = path / CONFIG_FILENAME
    if not config_path.is_file():
        raise LlmtuneError(f"{folder} is not an llmtune run: it has no {CONFIG_FILENAME} (pass a run's output dir)")
    try:
        config = read_yaml(config_path)
    except ConfigError as exc:
        raise LlmtuneError(f"{config_path}: {exc}") from None
    run = Run(path=path, config=config)
    logged = read_jsonl(path / TRAINING_LOG_FILE)
    saved = _checkpoint_history(path)
    run.history = logged if _last_step(logged) >= _last_step(saved) else saved
    run.metrics = read_json(path / METRICS_FILE)
    run.run_status = read_json(path / RUN_STATUS_FILE) or {}
    run.status = status_of(run)
    return run


def load_runs(folders: list[str]) -> list[Run]:
    """Load every folder (the first that is not a run fails the whole report) and give each a
    distinct label: the folder name, or as much of its path as tells it apart."""
    runs = [load_run(f) for f in folders]
    for depth in range(1, 8):
        labels = ["/".join(r.path.resolve().parts[-depth:]) for r in runs]
        if len(set(labels)) == len(labels) or depth == 7:
            for run, label in zip(runs, labels, strict=True):
                run.label = label
            break
    return runs


# ---------------------------------------------------------------------------------------------
# the table


def _fmt(value: Any) -> str:
    from llmtune.progress import format_number

    return "-" if value is None else format_number(value)


def _duration(seconds: Any) -> str | None:
    from llmtune.progress import format_duration

    return format_duration(float(seconds)) if isinstance(seconds, (int, float)) else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summary(run: Run) -> dict[str, str]:
    """Field -> text for one run (the rows of the report table)."""
    from llmtune.progress import format_rate

    cfg, t, data = run.config, run.train, run.config.get("data") or {}
    model = (cfg.get("model") or {}).get("name_or_path") or (cfg.get("model") or {}).get("config") or "-"
    main = run.main_metric
    evals = [r for r in run.history if f"eval_{main}" in r]
    best = None
    if evals:
        pick = max if run.greater_is_better else min
        best = pick(evals, key=lambda r: r[f"eval_{main}"])
    trains = [r for r in run.history if "loss" in r and "eval_loss" not in r]
    step = _last_step(run.history)
    max_steps = run.run_status.get("max_steps")
    final = (run.metrics or {}).get("eval") or {}
    train_metrics = (run.metrics or {}).get("train") or {}
    wall = train_metrics.get("train_wall_seconds")
    if wall is None and run.run_status.get("started") and run.run_status.get("updated"):
        wall = run.run_status["updated"] - run.run_status["started"]
    # Training throughput (evaluation and checkpointing left out); the Trainer's end-of-run
    # average, which counts them, only for runs logged before llmtune measured it.
    samples = _mean(
        [r["samples_per_second"] for r in trains if isinstance(r.get("samples_per_second"), (int, float))]
    ) or train_metrics.get("train_samples_per_second")
    tokens = _mean([r["tokens_per_second"] for r in trains if isinstance(r.get("tokens_per_second"), (int, float))])
    schedule = f"{t.get('max_steps')} steps" if (t.get("max_steps") or -1) > 0 else f"{t.get('epochs')} epochs"
    batch = f"{t.get('batch_size')} x {t.get('gradient_accumulation_steps', 1)}"
    direction = "max" if run.greater_is_better else "min"
    rows = {
        "status": run.status,
        "task": str(cfg.get("task", "-")),
        "model": str(model),
        "data": str(data.get("dataset") or "-") + (f" ({data['config_name']})" if data.get("config_name") else ""),
        "learning rate": _fmt(t.get("learning_rate")),
        "batch x accum": batch,
        "schedule": f"{schedule}, {t.get('lr_scheduler', '-')}",
        "precision": str(t.get("precision", "-")),
        "step": f"{step}" + (f"/{max_steps}" if max_steps else "") if step >= 0 else "-",
        f"best {main} ({direction})": f"{_fmt(best[f'eval_{main}'])} @ {best['step']}" if best else "-",
        f"last eval {main}": f"{_fmt(evals[-1][f'eval_{main}'])} @ {evals[-1]['step']}" if evals else "-",
        "final eval loss": _fmt(final.get("eval_loss"))
        if final
        else (
            _fmt([r for r in run.history if "eval_loss" in r][-1]["eval_loss"])
            if any("eval_loss" in r for r in run.history)
            else "-"
        ),
        "last train loss": _fmt(trains[-1]["loss"]) if trains else "-",
        "wall time": _duration(wall) or "-",
        "throughput": " | ".join(x for x in (format_rate(samples, "samples"), format_rate(tokens, "tok")) if x) or "-",
    }
    test = (run.metrics or {}).get("test") or {}
    if f"test_{main}" in test:
        rows[f"test {main}"] = _fmt(test[f"test_{main}"])
    benchmarks = (run.metrics or {}).get("benchmarks")
    if isinstance(benchmarks, dict):  # eval.benchmarks: starting model -> trained model
        from llmtune.outputs import benchmark_comparison

        def num(value: Any) -> str:
            return f"{value:.4f}" if isinstance(value, (int, float)) else "-"

        for name, metric, before, after, _ in benchmark_comparison(benchmarks):
            rows[f"{name} {metric}"] = f"{num(before)} -> {num(after)}"
    return rows


def render_table(runs: list[Run]) -> str:
    """Fields as rows, runs as columns (a few runs with many fields fit a terminal that way)."""
    summaries = [summary(r) for r in runs]
    fields: list[str] = []
    for s in summaries:
        fields += [k for k in s if k not in fields]
    names = [r.name for r in runs]
    width0 = max(len(f) for f in fields)
    widths = [
        min(40, max(len(n), *(len(s.get(f, "-")) for f in fields))) for n, s in zip(names, summaries, strict=True)
    ]

    def cut(text: str, width: int) -> str:
        return text if len(text) <= width else "..." + text[-(width - 3) :]

    lines = ["  ".join([" " * width0, *(cut(n, w).ljust(w) for n, w in zip(names, widths, strict=True))]).rstrip()]
    lines.append("  ".join(["-" * width0, *("-" * w for w in widths)]))
    for f in fields:
        cells = [cut(s.get(f, "-"), w).ljust(w) for s, w in zip(summaries, widths, strict=True)]
        lines.append("  ".join([f.ljust(width0), *cells]).rstrip())
    return "\n".join(lines)


def plot(runs: list[Run], path: str | Path) -> Path:
    from llmtune.curves import history_series, plot_runs

    return plot_runs([(r.name, history_series(r.history), r.main_metric) for r in runs], path)
