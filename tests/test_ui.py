"""``llmtune ui``'s HTTP API (FastAPI TestClient) and its command line: run discovery and status,
run pages, compare, predictions per task, the launch form's checks, path safety and the token."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from llmtune.ui.server import create_app
from tests.run_utils import env


def make_run(folder: Path, task: str = "sentiment", status: str = "finished", pid: int | None = None, **extra) -> Path:
    """A run folder as llmtune writes it: config, training log, status, metrics, predictions."""
    folder.mkdir(parents=True)
    cfg = {"task": task, "model": {"name_or_path": "tiny"}, "data": {"dataset": "d.csv"}, "train": {"batch_size": 4}}
    (folder / "llmtune_config.yaml").write_text(yaml.safe_dump(cfg))
    log = [{"step": s, "loss": 1.0 / s, "learning_rate": 1e-3} for s in range(1, 11)]
    log += [{"step": 5, "eval_loss": 0.6, "eval_accuracy": 0.5}, {"step": 10, "eval_loss": 0.4, "eval_accuracy": 0.75}]
    (folder / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    state = {"status": status, "pid": pid or os.getpid(), "host": socket.gethostname(), "step": 10, "max_steps": 10}
    state.update(started=1000.0, updated=1060.0)
    (folder / "run_status.json").write_text(json.dumps(state))
    if status == "finished":
        (folder / "metrics.json").write_text(json.dumps({"eval": {"eval_accuracy": 0.75, "eval_loss": 0.4}}))
        (folder / "README.md").write_text("# card\n")
    rows = extra.get("predictions")
    if rows is not None:
        (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    make_run(
        root / "a",
        predictions=[
            {"text": "good", "label": "positive", "prediction": "positive", "score": 0.9},
            {"text": "bad", "label": "negative", "prediction": "positive", "score": 0.6},
        ],
    )
    make_run(root / "sweep" / "b", status="running", pid=dead_pid())  # its process is gone: killed
    make_run(
        root / "gen",
        task="summarization",
        predictions=[{"input": "x y", "reference": "a b c", "prediction": "a b d"}],
    )
    (root / "not-a-run").mkdir()
    return root


@pytest.fixture
def client(runs):
    with TestClient(create_app(runs)) as c:
        yield c


def test_runs_lists_every_run_folder_with_status(client):
    rows = {r["id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert set(rows) == {"a", "sweep/b", "gen"}
    assert rows["a"]["status"] == "finished"
    assert rows["a"]["best"] == 0.75 and rows["a"]["metric"] == "accuracy" and rows["a"]["best_step"] == 10
    assert rows["sweep/b"]["status"] == "killed"  # "running" in run_status.json, pid dead
    assert rows["a"]["wall"] == "01:00"


def test_runs_table_rereads_only_changed_folders(runs):
    from llmtune.ui.runs import RunTable

    table = RunTable(runs)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        make_run(runs / "live", status="running", pid=sleeper.pid)
        first = {r["id"]: r for r in table.rows()}
        assert first["live"]["status"] == "running" and first["a"]["best"] == 0.75
        log = runs / "a" / "training_log.jsonl"
        log.write_text(log.read_text() + json.dumps({"step": 12, "eval_loss": 0.3, "eval_accuracy": 0.9}) + "\n")
        sleeper.kill()
        sleeper.wait()
        second = {r["id"]: r for r in table.rows()}
        assert second["a"]["best"] == 0.9 and second["a"]["best_step"] == 12  # its log changed: read again
        assert second["live"]["status"] == "killed"  # files unchanged, process gone: status checked again
    finally:
        sleeper.kill()


def test_run_page_compare_and_predictions(client):
    page = client.get("/api/run/a").json()
    assert page["series"]["train_step"] == list(range(1, 11))
    assert page["series"]["eval"]["accuracy"] == [0.5, 0.75]
    assert page["card"].startswith("# card") and "sentiment" in page["config_yaml"]
    cmp = client.get("/api/compare", params={"ids": "a,sweep/b"}).json()
    assert [r["label"] for r in cmp["runs"]] == ["a", "b"]
    assert "best accuracy (max)" in cmp["fields"] and "best accuracy" in cmp["text"]
    preds = client.get("/api/run/a/predictions").json()["rows"]
    assert [r["_error"] for r in preds] == [False, True]  # the misclassified row
    gen = client.get("/api/run/gen/predictions").json()
    assert gen["metric"] == "rougeL" and 0 < gen["rows"][0]["rougeL"] < 1


def test_paths_outside_the_runs_dir_are_refused(client, runs, tmp_path):
    outside = make_run(tmp_path / "elsewhere")
    (runs / "link").symlink_to(outside)
    for path in ("/api/run/..%2Felsewhere", "/api/run/%2Fetc", "/api/run/link", "/api/file/link/metrics.json"):
        assert client.get(path).status_code == 403, path
    assert client.get("/api/file/..%2F..%2Fetc%2Fpasswd").status_code == 403
    assert client.get("/api/compare", params={"ids": "a,../elsewhere"}).status_code == 403
    r = client.post("/api/runs/add", json={"path": str(outside)})
    assert r.status_code == 403 and "outside the runs directory" in r.json()["error"]
    assert client.post("/api/stop", json={"run": "../elsewhere"}).status_code == 403
    assert client.post("/api/try/load", json={"run": "../elsewhere"}).status_code == 403
    assert client.get("/api/run/not-a-run").status_code == 400
    assert "link" not in {r["id"] for r in client.get("/api/runs").json()["runs"]}


def test_add_folder_by_path(client, runs):
    make_run(runs / "deep" / "1" / "2" / "3" / "4" / "run")  # below the search depth
    assert "deep/1/2/3/4/run" not in {r["id"] for r in client.get("/api/runs").json()["runs"]}
    assert client.post("/api/runs/add", json={"path": str(runs / "deep/1/2/3/4/run")}).json()["ok"]
    assert "deep/1/2/3/4/run" in {r["id"] for r in client.get("/api/runs").json()["runs"]}
    bad = client.post("/api/runs/add", json={"path": "not-a-run"})
    assert bad.status_code == 400 and "not a run folder" in bad.json()["error"]


def test_launch_form_comes_from_the_typed_config(client):
    form = client.get("/api/recipe/sentiment-demo").json()
    fields = {f["key"]: f for fs in form["sections"].values() for f in fs}
    assert fields["train.learning_rate"]["value"] == 1e-4  # the recipe's value
    assert fields["train.learning_rate"]["bounds"]["gt"] == 0
    assert (
        fields["train.warmup_ratio"]["bounds_text"] == "between 0 and 1"
        or "< 1" in fields["train.warmup_ratio"]["bounds_text"]
    )
    assert "cosine" in fields["train.lr_scheduler"]["choices"]
    assert "train.output_dir" not in fields  # set by the launch (RUNS/NAME)
    ok = client.post("/api/check", json={"recipe": "sentiment-demo", "values": {"train.epochs": "2"}}).json()
    assert ok["ok"] and "epochs: 2" in ok["yaml"]
    bad = client.post(
        "/api/check",
        json={"recipe": "sentiment-demo", "values": {"train.learning_rate": "-1", "train.batch_size": "x"}},
    ).json()
    assert not bad["ok"]
    by_key = {p["key"]: p["message"] for p in bad["problems"]}
    assert "must be > 0" in by_key["train.learning_rate"] and "integer" in by_key["train.batch_size"]
    refused = client.post("/api/launch", json={"recipe": "sentiment-demo", "name": "a", "values": {}})
    assert refused.status_code == 400 and refused.json()["problems"][0]["key"] == "name"
    assert client.post("/api/launch", json={"recipe": "sentiment-demo", "name": "../x"}).status_code == 400
    assert client.get("/api/recipe/nope").status_code == 400


def test_token_guards_every_route(runs):
    with TestClient(create_app(runs, token="s3cret-token")) as c:
        assert c.get("/api/runs").status_code == 401
        assert c.get("/").status_code == 401
        assert c.get("/api/runs", headers={"X-Llmtune-Token": "s3cret-token"}).status_code == 200
        page = c.get("/?token=s3cret-token")
        assert page.status_code == 200 and "llmtune" in page.text
        assert c.get("/api/runs").status_code == 200  # the cookie the page got
        c.cookies.clear()
        assert c.get("/?token=wrong").status_code == 401


def test_loopback_ui_refuses_other_host_names(runs):
    """DNS rebinding: a page of another site whose name now points at 127.0.0.1 sends its own Host."""
    from llmtune.ui.server import LOOPBACK_NAMES

    with TestClient(create_app(runs, hosts=LOOPBACK_NAMES), base_url="http://127.0.0.1:7860") as c:
        assert c.get("/api/runs").status_code == 200
        assert c.get("/api/runs", headers={"host": "localhost:7860"}).status_code == 200
        refused = c.get("/api/runs", headers={"host": "evil.example:7860"})
        assert refused.status_code == 403 and "evil.example" in refused.json()["error"]


def _ui(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmtune", "ui", *args], capture_output=True, text=True, env=env(), cwd=cwd, timeout=60
    )


def test_bad_command_lines_get_one_error_line(tmp_path):
    missing = _ui("--runs-dir", str(tmp_path / "nope"), cwd=tmp_path)
    assert missing.returncode == 2 and "--runs-dir" in missing.stderr and "mkdir" in missing.stderr
    open_host = _ui("--runs-dir", str(tmp_path), "--host", "0.0.0.0", cwd=tmp_path)
    assert open_host.returncode == 2 and "--token" in open_host.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = _ui("--runs-dir", str(tmp_path), "--port", str(port), cwd=tmp_path)
    assert busy.returncode == 2 and "--port" in busy.stderr
    for r in (missing, open_host, busy):
        assert r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
