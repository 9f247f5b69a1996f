"""The terminal display (llmtune.progress), the run's files (TensorBoard, curves, incremental log)."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest

from llmtune.progress import EvalTable, format_duration, format_rate, plain_train_line, progress_callback, resolve_mode


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_mode_follows_the_terminal():
    assert resolve_mode("auto", TTY()) == "live"
    assert resolve_mode("auto", io.StringIO()) == "plain"
    assert resolve_mode("quiet", TTY()) == "quiet"


def test_formatting():
    assert format_duration(3725) == "1:02:05" and format_duration(65) == "01:05" and format_duration(None) == "--:--"
    assert format_rate(1530.0, "tok") == "1.5k tok/s" and format_rate(12.25, "samples") == "12.2 samples/s"
    from llmtune.progress import Clock

    clock = Clock(start_step=10, max_steps=110)
    line = plain_train_line(20, 110, 0.5, {"loss": 0.69314, "learning_rate": 5e-5, "samples_per_second": 3.0}, clock)
    assert line.startswith("step 20/110 (18%) | epoch 0.50 | loss 0.6931 | lr 5.00e-05 | 3.0 samples/s")
    assert "eta" in line and "\r" not in line


def test_eval_table_marks_the_best_row():
    table = EvalTable("accuracy", greater_is_better=True)
    first, header, best = table.row(10, 1.0, {"eval_loss": 0.7, "eval_accuracy": 0.6, "eval_runtime": 1.2})
    assert header is not None and "accuracy*" in header and "runtime" not in header
    assert best and first.endswith("best")
    second, header2, best2 = table.row(20, 2.0, {"eval_loss": 0.5, "eval_accuracy": 0.55})
    assert header2 is None and not best2 and not second.endswith("best")
    _, _, best3 = table.row(30, 3.0, {"eval_loss": 0.4, "eval_accuracy": 0.9})
    assert best3 and table.best == 0.9 and table.best_step == 30
    loss_table = EvalTable("loss", greater_is_better=False)
    assert loss_table.row(1, None, {"eval_loss": 2.0})[2] and not loss_table.row(2, None, {"eval_loss": 2.5})[2]


def _state(step: int, zero: bool = True) -> SimpleNamespace:
    return SimpleNamespace(is_world_process_zero=zero, global_step=step, max_steps=20, epoch=step / 10, log_history=[])


@pytest.mark.parametrize("stream_cls", [io.StringIO, TTY])
def test_callback_draws_rows_once(stream_cls):
    stream = stream_cls()
    cb = progress_callback("auto", "accuracy", True, stream=stream)
    args, control = SimpleNamespace(), SimpleNamespace()
    cb.on_train_begin(args, _state(0), control)
    for step in (1, 2):
        cb.on_step_end(args, _state(step), control)
        cb.on_log(args, _state(step), control, logs={"loss": 0.5, "learning_rate": 1e-4, "grad_norm": 1.0})
    cb.on_evaluate(args, _state(2), control, metrics={"eval_loss": 0.4, "eval_accuracy": 0.75})
    cb.on_log(args, _state(2), control, logs={"eval_loss": 0.4, "eval_accuracy": 0.75})  # not a second row
    cb.on_train_end(args, _state(2), control)
    text = stream.getvalue()
    assert text.count("0.7500") == 1 and "best" in text and "{'loss'" not in text
    if stream_cls is io.StringIO:
        assert "\r" not in text and text.count("step 1/20") == 1 and "loss 0.5000" in text
    else:
        assert "\x1b[" in text  # drawn by rich, in place


def test_only_rank_zero_and_not_quiet_draw():
    for setting, zero in (("plain", False), ("quiet", True)):
        stream = io.StringIO()
        cb = progress_callback(setting, "loss", False, stream=stream)
        cb.on_train_begin(None, _state(0, zero), None)
        cb.on_log(None, _state(1, zero), None, logs={"loss": 1.0})
        cb.on_evaluate(None, _state(1, zero), None, metrics={"eval_loss": 1.0})
        assert stream.getvalue() == ""


def test_curves_from_history(tmp_path):
    from llmtune.curves import history_series, plot_run, smooth

    rows = [{"loss": 1.0 / (i + 1), "learning_rate": 1e-3 * (1 - i / 50), "step": i + 1} for i in range(50)]
    rows.append({"eval_loss": 0.5, "eval_accuracy": 0.7, "eval_runtime": 1.0, "step": 25})
    rows.append({"eval_loss": 0.3, "eval_accuracy": 0.8, "step": 50})
    rows.append({"loss": 9.0, "step": 50})  # a resumed run logs step 50 again: the newer value wins
    s = history_series(rows)
    assert s.train_step[-1] == 50 and s.train_loss[-1] == 9.0 and len(s.train_step) == 50
    assert s.eval_step == [25, 50] and s.eval["accuracy"] == [0.7, 0.8] and "runtime" not in s.eval
    assert smooth([1.0, 1.0, 1.0]) == [1.0, 1.0, 1.0]
    out = plot_run(s, tmp_path / "c.png", "t", "accuracy", True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_run(history_series([]), tmp_path / "empty.png", "nothing yet", "loss", False)
    assert (tmp_path / "empty.png").stat().st_size > 0


# ---- one real run --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert_dir):
    from typer.testing import CliRunner

    from llmtune.cli import app
    from tests.run_utils import write_csv

    root = tmp_path_factory.mktemp("progress")
    data = write_csv(root / "train.csv", 120)
    out = root / "out"
    result = CliRunner().invoke(
        app,
        ["finetune", "--task", "sentiment", "--model", str(tiny_bert_dir), "--dataset", str(data), "-o", str(out),
         "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--set", "train.logging_steps=2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result.output, data


@pytest.mark.slow
def test_plain_output_and_files(run):
    out, output, _ = run
    assert "{'loss'" not in output and "\r" not in output
    train_lines = [ln for ln in output.splitlines() if ln.startswith("step ")]
    assert len(train_lines) >= 3 and all("loss" in ln and "samples/s" in ln and "eta" in ln for ln in train_lines)
    eval_rows = [ln for ln in output.splitlines() if ln.startswith("eval ") and ln.split()[1].isdigit()]
    assert len(eval_rows) == 2 and "best" in eval_rows[0]  # one row per evaluation (2 epochs)
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert any("samples_per_second" in r and "tokens_per_second" in r for r in log)
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "run_status.json").read_text())["status"] == "finished"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/samples_per_second", "eval/accuracy"):
        assert tag in tags, tags


@pytest.mark.slow
def test_quiet_shows_final_metrics_only(run, tiny_bert_dir, tmp_path, cli):
    _, _, data = run
    result = cli("finetune", "--task", "sentiment", "--model", tiny_bert_dir, "--dataset", data, "-o", tmp_path / "q",
                 "--max-steps", "2", "--quiet", "--set", "train.logging_steps=1", "--set", "train.report_to=none")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "resolved config" not in result.output and "step " not in result.output
    assert "eval metrics" in result.output and "eval_accuracy" in result.output
    assert not (tmp_path / "q" / "runs").exists()  # report_to=none: no TensorBoard files


def test_report_to_refuses_unknown_and_missing(cli, tmp_path):
    result = cli("finetune", "--recipe", "sentiment-demo", "-o", tmp_path / "o", "--set", "train.report_to=[nope]")
    assert result.exit_code == 2 and "train.report_to" in result.output and "tensorboard" in result.output
    assert not (tmp_path / "o" / "llmtune_config.yaml").exists()
    bad = cli("finetune", "--recipe", "sentiment-demo", "--set", "train.progress=loud", "--dry-run")
    assert bad.exit_code == 2 and "train.progress" in bad.output
