"""What a training run shows on the terminal, in place of the Trainer's raw dicts and tqdm bar.

- on a terminal: one live ``rich`` progress line (step / total, epoch, elapsed and ETA, loss,
  learning rate, samples/s and tokens/s), redrawn in place;
- when stdout is not a terminal (CI, ``| tee``, log files): one plain line per logging step, no
  carriage returns;
- ``train.progress: quiet`` (``--quiet``): nothing until the final metrics.

Each evaluation is printed once as a row of a compact table: the main metric (the one selecting
the best checkpoint) highlighted, a new best marked. Only the main process draws (the Trainer's
``state.is_world_process_zero``, which comes from accelerate). Module level stays torch-free.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

#: values of ``train.progress``; auto = live on a terminal, plain otherwise
PROGRESS_MODES = ("auto", "plain", "quiet")
#: evaluation keys that are bookkeeping, not metrics
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch")
_MAX_EVAL_COLUMNS = 6


def resolve_mode(setting: str, stream: TextIO | None = None) -> str:
    """``live``, ``plain`` or ``quiet`` for a ``train.progress`` setting."""
    if setting != "auto":
        return setting
    stream = stream or sys.stdout
    isatty = getattr(stream, "isatty", None)
    return "live" if isatty is not None and isatty() else "plain"


# ---------------------------------------------------------------------------------------------
# formatting (plain functions: tested without a Trainer)


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def format_rate(value: float | None, unit: str) -> str | None:
    if value is None:
        return None
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= threshold:
            return f"{value / threshold:.1f}{suffix} {unit}/s"
    return f"{value:.1f} {unit}/s"


def format_number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4f}"


def train_stats(logs: dict) -> list[str]:
    """``loss 0.6931``, ``lr 5.00e-05``, ... for one training log entry."""
    parts = []
    if "loss" in logs:
        parts.append(f"loss {format_number(logs['loss'])}")
    if "learning_rate" in logs:
        parts.append(f"lr {float(logs['learning_rate']):.2e}")
    if logs.get("grad_norm") is not None:
        parts.append(f"grad {format_number(float(logs['grad_norm']))}")
    for key, unit in (("samples_per_second", "samples"), ("tokens_per_second", "tok")):
        text = format_rate(logs.get(key), unit)
        if text:
            parts.append(text)
    return parts


class Clock:
    """Elapsed time and ETA from the steps done in this session (a resumed run starts mid-way)."""

    def __init__(self, start_step: int, max_steps: int):
        self.start_step, self.max_steps = start_step, max_steps
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def eta(self, step: int) -> float | None:
        done = step - self.start_step
        if done <= 0 or self.max_steps <= 0:
            return None
        return self.elapsed() / done * max(0, self.max_steps - step)

    def text(self, step: int) -> str:
        return f"elapsed {format_duration(self.elapsed())} | eta {format_duration(self.eta(step))}"


def plain_train_line(step: int, max_steps: int, epoch: float | None, logs: dict, clock: Clock) -> str:
    pct = f" ({100 * step / max_steps:.0f}%)" if max_steps > 0 else ""
    parts = [f"step {step}/{max_steps}{pct}"]
    if epoch is not None:
        parts.append(f"epoch {epoch:.2f}")
    parts += train_stats(logs)
    parts.append(clock.text(step))
    return " | ".join(parts)


class EvalTable:
    """Evaluation results as rows of one table: columns fixed at the first evaluation, the main
    metric first and highlighted, ``best`` on a row that improves on every earlier one."""

    def __init__(self, main_metric: str, greater_is_better: bool):
        self.main_key = main_metric if main_metric.startswith("eval_") else f"eval_{main_metric}"
        self.greater = greater_is_better
        self.columns: list[str] | None = None
        self.best: float | None = None
        self.best_step: int | None = None

    def _pick_columns(self, metrics: dict) -> list[str]:
        keys = [
            k
            for k, v in metrics.items()
            if k.startswith("eval_")
            and not any(k.endswith(s) for s in _NOT_METRICS)
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
        ]
        ordered = [k for k in (self.main_key, "eval_loss") if k in keys]
        ordered += [k for k in keys if k not in ordered]
        return ordered[:_MAX_EVAL_COLUMNS]

    def is_new_best(self, value: Any) -> bool:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.best is None or (value > self.best if self.greater else value < self.best):
            self.best = float(value)
            return True
        return False

    def widths(self) -> list[int]:
        return [max(10, len(k) - 5 + 1) for k in self.columns or []]

    def header(self) -> str:
        cols = [
            f"{k[5:] + ('*' if k == self.main_key else ''):>{w}}"
            for k, w in zip(self.columns or [], self.widths(), strict=True)
        ]
        return f"{'eval':<4} {'step':>8} {'epoch':>6} " + " ".join(cols)

    def row(self, step: int, epoch: float | None, metrics: dict) -> tuple[str, str | None, bool]:
        """(row text, header text when this is the first row, whether this row is a new best)."""
        first = self.columns is None
        if first:
            self.columns = self._pick_columns(metrics)
        best = self.is_new_best(metrics.get(self.main_key))
        if best:
            self.best_step = step
        cells = []
        for key, width in zip(self.columns or [], self.widths(), strict=True):
            value = metrics.get(key)
            cells.append(f"{format_number(value) if value is not None else '-':>{width}}")
        epoch_text = f"{epoch:.2f}" if epoch is not None else "-"
        text = f"{'eval':<4} {step:>8} {epoch_text:>6} " + " ".join(cells) + ("  best" if best else "")
        return text, self.header() if first else None, best


# ---------------------------------------------------------------------------------------------
# the Trainer callback


def progress_callback(setting: str, main_metric: str, greater_is_better: bool, stream: TextIO | None = None) -> Any:
    """A ``TrainerCallback`` drawing the run in mode ``train.progress`` (auto | plain | quiet)."""
    from transformers import TrainerCallback

    mode = resolve_mode(setting, stream)

    class ProgressDisplay(TrainerCallback):
        def __init__(self) -> None:
            self.mode = mode
            self.stream = stream
            self.table = EvalTable(main_metric, greater_is_better)
            self.clock: Clock | None = None
            self.progress: Any = None  # rich.progress.Progress while the live display runs
            self.task: Any = None
            self.eval_task: Any = None
            self.last_logs: dict = {}

        # -- output -------------------------------------------------------------------
        def _out(self) -> TextIO:
            return self.stream or sys.stdout

        def _print(self, text: str, markup: str | None = None) -> None:
            if self.progress is not None:
                self.progress.console.print(markup if markup is not None else text, highlight=False)
            else:
                print(text, file=self._out(), flush=True)

        def _active(self, state: Any) -> bool:
            return self.mode != "quiet" and state.is_world_process_zero

        # -- training -----------------------------------------------------------------
        def on_train_begin(self, args, state, control, **kwargs):
            if not self._active(state):
                return
            self.clock = Clock(state.global_step, state.max_steps)
            if self.mode == "live":
                from rich.console import Console
                from rich.progress import BarColumn, Progress, TextColumn

                console = Console(file=self._out())
                self.progress = Progress(
                    TextColumn("[bold blue]{task.description:<5}"),
                    BarColumn(bar_width=24),
                    TextColumn("step {task.completed}/{task.total}"),
                    TextColumn("epoch {task.fields[epoch]}"),
                    TextColumn("{task.fields[clock]}"),
                    TextColumn("{task.fields[stats]}"),
                    console=console,
                    refresh_per_second=4,
                )
                self.progress.start()
                self.task = self.progress.add_task(
                    "train",
                    total=state.max_steps,
                    completed=state.global_step,
                    epoch=f"{state.epoch or 0:.2f}",
                    clock=self.clock.text(state.global_step),
                    stats="",
                )

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None and self.clock is not None:
                self.progress.update(
                    self.task,
                    completed=state.global_step,
                    epoch=f"{state.epoch or 0:.2f}",
                    clock=self.clock.text(state.global_step),
                )

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if not self._active(state) or self.clock is None or "loss" not in logs:
                return  # eval logs are shown by on_evaluate, the end-of-training summary by the runner
            self.last_logs = dict(logs)
            if self.progress is not None:
                self.progress.update(self.task, stats=" | ".join(train_stats(logs)))
            else:
                self._print(plain_train_line(state.global_step, state.max_steps, state.epoch, logs, self.clock))

        # -- evaluation ---------------------------------------------------------------
        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            if self.progress is None:
                return
            if self.eval_task is None:
                try:
                    total = len(eval_dataloader) if eval_dataloader is not None else None
                except TypeError:
                    total = None
                self.eval_task = self.progress.add_task("eval", total=total, epoch="", clock="evaluating", stats="")
            self.progress.advance(self.eval_task)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if self.progress is not None and self.eval_task is not None:
                self.progress.remove_task(self.eval_task)
                self.eval_task = None
            if not self._active(state) or not metrics:
                return
            text, header, best = self.table.row(state.global_step, state.epoch, metrics)
            if header:
                self._print(header, f"[bold]{header}[/bold]")
            markup = None
            if self.progress is not None:
                from rich.markup import escape

                markup = escape(text)
                if best:
                    markup = markup[: -len("  best")] + "  [bold green]best[/bold green]"
                markup = _highlight_main(markup, self.table)
            self._print(text, markup)

        def on_train_end(self, args, state, control, **kwargs):
            self.close()

        def close(self) -> None:
            """Stop the live display (also on errors, so the terminal's cursor comes back)."""
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return ProgressDisplay()


def _highlight_main(markup: str, table: EvalTable) -> str:
    """Bold the main metric's cell (the first metric column) of an evaluation row."""
    prefix = 4 + 1 + 8 + 1 + 6 + 1  # 'eval' step epoch and their separators
    if not table.columns or table.columns[0] != table.main_key:
        return markup
    width = table.widths()[0]
    return markup[:prefix] + "[bold cyan]" + markup[prefix : prefix + width] + "[/bold cyan]" + markup[prefix + width :]
