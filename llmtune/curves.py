"""Loss curves as PNG files (matplotlib, Agg backend: no display needed).

:func:`history_series` turns a run's log history (``training_log.jsonl`` rows, the Trainer's
``log_history``) into plain series; :func:`plot_run` draws one run (training loss raw and
smoothed, evaluation loss, the main metric, learning rate); :func:`plot_runs` overlays several
runs (``llmtune report``). Module level stays free of matplotlib and torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

CURVES_FILE = "training_curves.png"


@dataclass
class Series:
    train_step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr_step: list[int] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    #: eval metric name (without ``eval_``) -> values aligned with ``eval_step`` (None: missing)
    eval: dict[str, list[float | None]] = field(default_factory=dict)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def history_series(rows: list[dict]) -> Series:
    """Series from log rows; a step logged twice (a resumed run replays steps) keeps the newer value."""
    train: dict[int, float] = {}
    lrs: dict[int, float] = {}
    evals: dict[int, dict] = {}
    for row in rows:
        step = row.get("step")
        if not isinstance(step, int):
            continue
        if _finite(row.get("loss")):
            train[step] = float(row["loss"])
        if _finite(row.get("learning_rate")):
            lrs[step] = float(row["learning_rate"])
        if _finite(row.get("eval_loss")) or any(k.startswith("eval_") for k in row):
            values = {
                k[5:]: float(v)
                for k, v in row.items()
                if k.startswith("eval_")
                and _finite(v)
                and not k.endswith(("_runtime", "_per_second", "_epoch"))
                and k != "eval_epoch"
            }
            if values:
                evals.setdefault(step, {}).update(values)
    s = Series()
    s.train_step = sorted(train)
    s.train_loss = [train[k] for k in s.train_step]
    s.lr_step = sorted(lrs)
    s.lr = [lrs[k] for k in s.lr_step]
    s.eval_step = sorted(evals)
    names: list[str] = []
    for step in s.eval_step:
        names += [k for k in evals[step] if k not in names]
    s.eval = {name: [evals[step].get(name) for step in s.eval_step] for name in names}
    return s


def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """TensorBoard-style debiased exponential moving average; the weight grows with the number of
    points (0 for a handful, up to 0.9), so short and long runs both get a readable trend."""
    n = len(values)
    if weight is None:
        weight = min(0.9, max(0.0, 1 - 10 / n)) if n else 0.0
    out, last, norm = [], 0.0, 0.0
    for value in values:
        last = weight * last + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(last / norm if norm else value)
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Write atomically: someone looking at the PNG during a run never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    tmp.replace(path)


def _metric_label(name: str) -> str:
    return name.replace("_", " ")


def _style(ax, title: str, ylabel: str, log_y: bool = False) -> None:
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if log_y:
        ax.set_yscale("log")


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.45")


def _same_steps(axes, series: list[Series]) -> None:
    """One step range on every panel, so that panels line up when compared."""
    last = max((max(s.train_step + s.eval_step + s.lr_step, default=0) for s in series), default=0)
    if last > 0:
        for ax in axes:
            ax.set_xlim(0, last * 1.03)


def _lr_axis(ax) -> None:
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))


def plot_run(series: Series, path: str | Path, title: str, main_metric: str, greater_is_better: bool) -> Path:
    """One run as a 2x2 figure; returns the path written."""
    plt = _pyplot()
    main = main_metric[5:] if main_metric.startswith("eval_") else main_metric
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    ax_loss, ax_eval, ax_main, ax_lr = axes.flat

    if series.train_loss:
        ax_loss.plot(series.train_step, series.train_loss, color="tab:blue", alpha=0.3, lw=1, label="raw")
        marker = "o" if len(series.train_loss) < 3 else None
        ax_loss.plot(series.train_step, smooth(series.train_loss), color="tab:blue", lw=2, marker=marker,
                     label="smoothed (EMA)")  # fmt: skip
        ax_loss.legend(loc="upper right")
    else:
        _empty(ax_loss, "no training loss logged yet")
    _style(ax_loss, "Training loss", "loss (mean over each logging interval)")

    eval_loss = series.eval.get("loss")
    if eval_loss and any(v is not None for v in eval_loss):
        points = [(s, v) for s, v in zip(series.eval_step, eval_loss, strict=True) if v is not None]
        ax_eval.plot(*zip(*points, strict=True), color="tab:orange", lw=2, marker="o", label="evaluation loss")
        if series.train_loss:
            ax_eval.plot(series.train_step, smooth(series.train_loss), color="tab:blue", lw=1, ls="--", alpha=0.7,
                         label="training loss (smoothed)")  # fmt: skip
        ax_eval.legend(loc="upper right")
    else:
        _empty(ax_eval, "no evaluation yet")
    _style(ax_eval, "Evaluation loss", "loss")

    values = series.eval.get(main) if main != "loss" else None
    if values and any(v is not None for v in values):
        points = [(s, v) for s, v in zip(series.eval_step, values, strict=True) if v is not None]
        steps, vals = zip(*points, strict=True)
        ax_main.plot(steps, vals, color="tab:green", lw=2, marker="o")
        best = max(points, key=lambda p: p[1]) if greater_is_better else min(points, key=lambda p: p[1])
        ax_main.scatter([best[0]], [best[1]], s=160, facecolors="none", edgecolors="crimson", lw=2, zorder=5,
                        label=f"best {best[1]:.4f} at step {best[0]}")  # fmt: skip
        ax_main.legend(loc="best")
        direction = "higher is better" if greater_is_better else "lower is better"
        _style(ax_main, f"Evaluation {_metric_label(main)} ({direction})", _metric_label(main),
               log_y=main.endswith("perplexity") and min(vals) > 0 and max(vals) / min(vals) > 20)  # fmt: skip
    else:
        _empty(ax_main, "no evaluation yet" if main != "loss" else "main metric is the evaluation loss (left)")
        _style(ax_main, f"Evaluation {_metric_label(main)}", _metric_label(main))

    if series.lr:
        ax_lr.plot(series.lr_step, series.lr, color="tab:purple", lw=2)
        _lr_axis(ax_lr)
    else:
        _empty(ax_lr, "no learning rate logged yet")
    _style(ax_lr, "Learning rate", "learning rate")
    _same_steps(axes.flat, [series])

    fig.suptitle(title, fontsize=13)
    try:
        _save(fig, Path(path))
    finally:
        plt.close(fig)
    return Path(path)


def plot_runs(runs: list[tuple[str, Series, str]], path: str | Path) -> Path:
    """Overlay runs (label, series, main metric) in one 2x2 figure: training loss (smoothed),
    evaluation loss, each run's main metric, learning rate."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), constrained_layout=True)
    ax_loss, ax_eval, ax_main, ax_lr = axes.flat
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    mains = {m for _, _, m in runs}
    drawn = {"loss": False, "eval": False, "main": False, "lr": False}
    for i, (label, s, main) in enumerate(runs):
        color = colors[i % len(colors)]
        if s.train_loss:
            ax_loss.plot(s.train_step, s.train_loss, color=color, alpha=0.15, lw=1)
            ax_loss.plot(s.train_step, smooth(s.train_loss), color=color, lw=2, label=label)
            drawn["loss"] = True
        points = [(st, v) for st, v in zip(s.eval_step, s.eval.get("loss", []), strict=False) if v is not None]
        if points:
            ax_eval.plot(*zip(*points, strict=True), color=color, lw=2, marker="o", ms=4, label=label)
            drawn["eval"] = True
        points = [(st, v) for st, v in zip(s.eval_step, s.eval.get(main, []), strict=False) if v is not None]
        if points and main != "loss":
            name = label if len(mains) == 1 else f"{label} ({_metric_label(main)})"
            ax_main.plot(*zip(*points, strict=True), color=color, lw=2, marker="o", ms=4, label=name)
            drawn["main"] = True
        if s.lr:
            ax_lr.plot(s.lr_step, s.lr, color=color, lw=2, label=label)
            drawn["lr"] = True
    main_name = _metric_label(next(iter(mains))) if len(mains) == 1 else "main metric"
    for ax, key, title, ylabel in (
        (ax_loss, "loss", "Training loss (smoothed; raw faint)", "loss"),
        (ax_eval, "eval", "Evaluation loss", "loss"),
        (ax_main, "main", f"Evaluation {main_name}", main_name),
        (ax_lr, "lr", "Learning rate", "learning rate"),
    ):
        _style(ax, title, ylabel)
        if drawn[key]:
            ax.legend(loc="best", fontsize=9)
        else:
            _empty(ax, "nothing logged")
    if drawn["lr"]:
        _lr_axis(ax_lr)
    _same_steps(axes.flat, [s for _, s, _ in runs])
    fig.suptitle(f"{len(runs)} run{'s' if len(runs) != 1 else ''} compared", fontsize=13)
    try:
        _save(fig, Path(path))
    finally:
        plt.close(fig)
    return Path(path)
