"""llmtune report: finished, running, killed and checkpoint-only runs side by side."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def _config(task: str = "sentiment", lr: float = 1e-3) -> dict:
    return {
        "task": task,
        "model": {"name_or_path": "tiny-bert"},
        "data": {"dataset": "reviews.csv"},
        "train": {"learning_rate": lr, "batch_size": 16, "gradient_accumulation_steps": 2, "epochs": 3.0,
                  "max_steps": -1, "lr_scheduler": "linear", "precision": "fp32"},
    }  # fmt: skip


def _history(steps: int, accuracy: list[float]) -> list[dict]:
    rows = [{"loss": 1.0 / s, "learning_rate": 1e-3, "samples_per_second": 100.0, "tokens_per_second": 2000.0, "step": s}
            for s in range(1, steps + 1)]  # fmt: skip
    for i, acc in enumerate(accuracy):
        rows.append({"eval_loss": 0.5 - 0.1 * i, "eval_accuracy": acc, "step": (i + 1) * steps // len(accuracy)})
    return rows


def make_run(root: Path, name: str, status: dict | None, metrics: dict | None, history: list[dict],
             in_checkpoint: bool = False) -> Path:  # fmt: skip
    out = root / name
    out.mkdir(parents=True)
    (out / "llmtune_config.yaml").write_text(yaml.safe_dump(_config()))
    if in_checkpoint:
        (out / "checkpoint-6").mkdir()
        (out / "checkpoint-6" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    else:
        lines = [json.dumps(r) for r in history]
        (out / "training_log.jsonl").write_text("\n".join(lines) + '\n{"loss": 0.1, "st')  # torn last line
    if status is not None:
        (out / "run_status.json").write_text(json.dumps({"host": socket.gethostname(), **status}))
    if metrics is not None:
        (out / "metrics.json").write_text(json.dumps(metrics))
    return out


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_report_table_and_plot(cli, tmp_path):
    finished = make_run(
        tmp_path, "a", {"status": "finished", "pid": 1, "started": 0, "updated": 90, "max_steps": 10},
        {"train": {"train_wall_seconds": 95.0}, "eval": {"eval_loss": 0.3, "eval_accuracy": 0.9},
         "test": {"test_accuracy": 0.85}},
        _history(10, [0.7, 0.9, 0.8]),
    )  # fmt: skip
    running = make_run(
        tmp_path, "b", {"status": "running", "pid": os.getpid(), "max_steps": 10}, None, _history(4, [0.6])
    )
    killed = make_run(tmp_path, "c", {"status": "running", "pid": dead_pid(), "max_steps": 10}, None, _history(5, []))
    ckpt_only = make_run(tmp_path, "d", None, None, _history(6, [0.65]), in_checkpoint=True)
    png = tmp_path / "cmp.png"
    result = cli("report", finished, running, killed, ckpt_only, "-o", png)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    status = next(ln for ln in lines if ln.startswith("status")).split()
    assert status[1:] == ["finished", "running", "killed", "incomplete"]
    best = next(ln for ln in lines if ln.startswith("best accuracy (max)"))
    assert "0.9000 @ 6" in best and "0.6000 @ 4" in best  # best, not last: run a's last eval was 0.8
    assert "0.8000 @ 10" in next(ln for ln in lines if ln.startswith("last eval accuracy"))
    assert "01:35" in next(ln for ln in lines if ln.startswith("wall time"))
    assert "0.8500" in next(ln for ln in lines if ln.startswith("test accuracy"))
    assert "100.0 samples/s" in next(ln for ln in lines if ln.startswith("throughput"))
    step = next(ln for ln in lines if ln.startswith("step")).split()
    assert step[1:] == ["10/10", "4/10", "5/10", "6"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_same_folder_names_get_distinct_labels(cli, tmp_path):
    a = make_run(tmp_path / "x", "out", {"status": "finished"}, {"eval": {}}, _history(2, [0.5]))
    b = make_run(tmp_path / "y", "out", {"status": "finished"}, {"eval": {}}, _history(2, [0.6]))
    result = cli("report", a, b, "--no-plot")
    assert result.exit_code == 0 and "x/out" in result.output and "y/out" in result.output


def test_not_a_run_is_one_error_line(cli, tmp_path):
    result = cli("report", tmp_path)
    assert result.exit_code == 2 and "is not an llmtune run" in result.output
    assert len(result.output.strip().splitlines()) == 1
    missing = cli("report", tmp_path / "nope")
    assert missing.exit_code == 2 and "is not a folder" in missing.output
    run = make_run(tmp_path, "r", {"status": "finished"}, {"eval": {}}, _history(2, [0.5]))
    bad_png = cli("report", run, "-o", tmp_path / "x.jpg")
    assert bad_png.exit_code == 2 and "PNG" in bad_png.output


@pytest.mark.slow
def test_report_on_a_killed_run(cli, tiny_bert_dir, tmp_path):
    """A run SIGKILLed mid-way: its incrementally written log and status make it reportable."""
    from tests.run_utils import finetune_args, llmtune, write_csv

    data = write_csv(tmp_path / "d.csv", 64)
    out = tmp_path / "killed"
    args = finetune_args(
        tiny_bert_dir, data, out, "--batch-size", "8", "--max-steps", "6", "--set", "train.report_to=none"
    )
    proc = llmtune(args, LLMTUNE_FAULT="step:3")
    assert proc.returncode != 0
    rows = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    # killed right after optimizer step 3, before that step's log entry
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    result = cli("report", out, "--no-plot")
    assert result.exit_code == 0, result.output
    status = next(ln for ln in result.output.splitlines() if ln.startswith("status")).split()
    step = next(ln for ln in result.output.splitlines() if ln.startswith("step")).split()
    assert status[1] == "killed" and step[1] == "2/6"
