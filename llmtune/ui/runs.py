"""Run folders under the UI's runs directory: discovery, safe paths, what a run page shows.

Everything is read through :mod:`llmtune.report` (the same loading, status and summary as
``llmtune report``) and :func:`llmtune.curves.history_series`; this module only finds folders,
keeps every path inside the runs directory and shapes the answers as JSON. Torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llmtune.config import CONFIG_FILENAME
from llmtune.errors import LlmtuneError
from llmtune.outputs import METRICS_FILE, RUN_STATUS_FILE, TRAINING_LOG_FILE

#: a folder holding one of these (and the config) is a run
RUN_MARKERS = (RUN_STATUS_FILE, METRICS_FILE, TRAINING_LOG_FILE)
#: folders never searched for runs (checkpoints, hidden ones such as the UI's launch logs)
_SKIP_PREFIXES = ("checkpoint-", ".", "__")
MAX_DEPTH = 4
#: predictions sent to the page at most (the file can be far larger)
MAX_PREDICTIONS = 5000
PREDICTIONS_FILE = "predictions.jsonl"
CARD_FILE = "README.md"


class OutsideRunsDir(LlmtuneError):
    """A path that resolves outside the runs directory (``..``, an absolute path, a symlink out)."""


def inside(root: Path, rel: str) -> Path:
    """``root/rel`` resolved (symlinks followed); refused unless it stays inside ``root``."""
    if not rel or "\x00" in rel:
        raise OutsideRunsDir("empty path")
    if Path(rel).is_absolute() or rel.startswith(("/", "\\")):
        raise OutsideRunsDir(f"{rel}: absolute paths are refused; give a path inside the runs directory")
    base = root.resolve()
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise OutsideRunsDir(f"{rel} is outside the runs directory {base}")
    return target


def relative(root: Path, path: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def is_run(folder: Path) -> bool:
    return (folder / CONFIG_FILENAME).is_file() and any((folder / m).is_file() for m in RUN_MARKERS)


def discover(root: Path, extra: set[str] | None = None) -> list[Path]:
    """Run folders under ``root`` (depth-limited walk; a run's own subfolders are not searched),
    plus the ``extra`` folders added by path."""
    found: list[Path] = []
    base = root.resolve()

    def walk(folder: Path, depth: int) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False) or entry.name.startswith(_SKIP_PREFIXES):
                continue
            path = Path(entry.path)
            if is_run(path):
                found.append(path)
            elif depth < MAX_DEPTH:
                walk(path, depth + 1)

    walk(base, 1)
    for rel in sorted(extra or ()):
        try:
            path = inside(root, rel)
        except OutsideRunsDir:
            continue
        if is_run(path) and path not in found:
            found.append(path)
    return found


def _best(run: Any) -> tuple[str, float | None, int | None]:
    main = run.main_metric
    evals = [r for r in run.history if isinstance(r.get(f"eval_{main}"), (int, float))]
    if not evals:
        return main, None, None
    pick = max if run.greater_is_better else min
    best = pick(evals, key=lambda r: r[f"eval_{main}"])
    return main, float(best[f"eval_{main}"]), best.get("step")


def run_row(root: Path, run: Any) -> dict:
    """One line of the runs table (the fields of ``llmtune report``'s table that fit a line)."""
    from llmtune.report import summary

    s = summary(run)
    metric, best, at = _best(run)
    return {
        "id": relative(root, run.path),
        "status": run.status,
        "task": s["task"],
        "model": s["model"],
        "data": s["data"],
        "metric": metric,
        "best": best,
        "best_step": at,
        "best_text": next((v for k, v in s.items() if k.startswith("best ")), "-"),
        "step": s["step"],
        "wall": s["wall time"],
        "updated": run.run_status.get("updated") or _mtime(run.path),
    }


def _mtime(path: Path) -> float:
    try:
        return max((path / m).stat().st_mtime for m in (*RUN_MARKERS, CONFIG_FILENAME) if (path / m).exists())
    except ValueError:
        return 0.0


def _files_key(folder: Path) -> tuple:
    """What a run row depends on: size and mtime of the run's files (and its checkpoints' names)."""
    key: list = []
    for name in (CONFIG_FILENAME, *RUN_MARKERS):
        try:
            st = (folder / name).stat()
            key.append((st.st_mtime_ns, st.st_size))
        except OSError:
            key.append(None)
    if not (folder / TRAINING_LOG_FILE).exists():  # history then comes from the checkpoints
        key.append(tuple(sorted(p.name for p in folder.glob("checkpoint-*"))))
    return tuple(key)


class RunTable:
    """The runs table, read again only for the folders whose files changed since the last poll
    (the page polls every 2 s; 200 unchanged runs are then 200 stat calls, not 200 parses).
    The status of a "running" run is checked on every poll: its process may be gone."""

    def __init__(self, root: Path):
        self.root = root
        self.cache: dict[Path, tuple[tuple, Any, dict]] = {}

    def rows(self, extra: set[str] | None = None) -> list[dict]:
        from llmtune.report import load_run, status_of

        rows, seen = [], set()
        for folder in discover(self.root, extra):
            seen.add(folder)
            key = _files_key(folder)
            hit = self.cache.get(folder)
            if hit is not None and hit[0] == key:
                _, run, row = hit
                run.status = status_of(run)
                rows.append({**row, "status": run.status})
                continue
            try:
                run = load_run(folder)
            except LlmtuneError:
                continue  # a folder half-written this instant: it shows on the next poll
            row = run_row(self.root, run)
            self.cache[folder] = (key, run, row)
            rows.append(dict(row))
        for gone in set(self.cache) - seen:
            del self.cache[gone]
        return rows


def series_json(run: Any) -> dict:
    from dataclasses import asdict

    from llmtune.curves import history_series

    return {
        **asdict(history_series(run.history)),
        "main_metric": run.main_metric,
        "greater_is_better": run.greater_is_better,
    }


def _read_text(path: Path, limit: int = 200_000) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[:limit]
    except OSError:
        return None


def run_detail(root: Path, rel: str) -> dict:
    """A run page: summary, resolved config, metrics, curves, model card."""
    from llmtune.report import load_run, summary

    path = inside(root, rel)
    run = load_run(path)
    return {
        "id": relative(root, path),
        "status": run.status,
        "run_status": run.run_status,
        "summary": summary(run),
        "config_yaml": _read_text(path / CONFIG_FILENAME),
        "config": run.config,
        "metrics": run.metrics,
        "series": series_json(run),
        "card": _read_text(path / CARD_FILE),
        "has_predictions": (path / PREDICTIONS_FILE).is_file(),
        "task": str(run.config.get("task", "")),
    }


def compare(root: Path, rels: list[str]) -> dict:
    """The table and curves of ``llmtune report`` for several runs."""
    from llmtune.report import load_runs, render_table, summary

    runs = load_runs([str(inside(root, r)) for r in rels])
    summaries = [summary(r) for r in runs]
    fields: list[str] = []
    for s in summaries:
        fields += [k for k in s if k not in fields]
    return {
        "runs": [
            {"id": relative(root, r.path), "label": r.name, "summary": s, "series": series_json(r)}
            for r, s in zip(runs, summaries, strict=True)
        ],
        "fields": fields,
        "text": render_table(runs),
    }


# ---------------------------------------------------------------------------------------------
# predictions


def _row_metric(rows: list[dict]) -> str | None:
    """Generated text rows (reference + prediction, no score of their own) get ROUGE-L per row
    (rouge-score, already a dependency for the summarization metrics)."""
    sample = rows[0] if rows else {}
    if not (isinstance(sample.get("reference"), str) and isinstance(sample.get("prediction"), str)):
        return None
    if any(k in sample for k in ("wer", "score", "reward")):
        return None
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for row in rows:
        ref, pred = str(row.get("reference") or ""), str(row.get("prediction") or "")
        row["rougeL"] = round(scorer.score(ref, pred)["rougeL"].fmeasure, 4) if ref or pred else 1.0
    return "rougeL"


def _is_error(row: dict) -> bool | None:
    """Whether a row is wrong, for the tasks where that is one comparison."""
    if isinstance(row.get("correct"), bool):
        return not row["correct"]
    if "label" in row and "prediction" in row:
        label, pred = row["label"], row["prediction"]
        if isinstance(label, (int, float)) and isinstance(pred, (int, float)):
            return abs(float(label) - float(pred)) > 0.5
        return label != pred
    if "answers" in row and "prediction" in row:
        answers = row["answers"] if isinstance(row["answers"], list) else [row["answers"]]
        norm = lambda s: " ".join(str(s).lower().split())  # noqa: E731
        return norm(row["prediction"]) not in {norm(a) for a in answers} and bool(answers or row["prediction"])
    if "reference" in row and "prediction" in row:
        return row["reference"] != row["prediction"]
    if "reference" in row and "hypothesis" in row:
        return row["reference"] != row["hypothesis"]
    return None


def predictions(root: Path, rel: str, limit: int = MAX_PREDICTIONS) -> dict:
    """The rows of ``predictions.jsonl`` with ``_error`` (and a per-row metric for generated text);
    an ``audio`` path is kept only when it lies inside the runs directory (``_audio``: its id)."""
    from llmtune.report import read_jsonl

    path = inside(root, rel)
    file = path / PREDICTIONS_FILE
    if not file.is_file():
        return {"rows": [], "total": 0, "metric": None}
    rows = read_jsonl(file)
    total = len(rows)
    rows = rows[:limit]
    metric = _row_metric(rows)
    for i, row in enumerate(rows):
        row["_i"] = i
        row["_error"] = _is_error(row)
        audio = row.get("audio")
        if isinstance(audio, str):
            try:
                row["_audio"] = relative(root, inside(root, os.path.relpath(audio, root.resolve())))
            except (OutsideRunsDir, ValueError):
                pass
    return {"rows": rows, "total": total, "metric": metric}
