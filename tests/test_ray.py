"""``--launcher ray``: training on Ray Train workers (llmtune/raylaunch.py).

The slow tests start one real local Ray cluster (2 CPUs, loopback only, no dashboard, no usage
stats) for the module and drive ``python -m llmtune`` subprocesses against it:

- 2 Ray workers train exactly like ``--num-processes 2`` (per-step losses and weights within 1e-5,
  dropout off; the same files in the output folder);
- a worker SIGKILLed after the first checkpoint: Ray restarts the group (``--max-failures 1``),
  which resumes from llmtune's newest checkpoint and ends with the weights and losses of the
  uninterrupted Ray run;
- a user error found in the workers is one ``error:`` line, exit 2, and is not retried.

Flag errors, the missing-``ray`` error and the choice of the checkpoint a restart resumes from are
checked without a cluster.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.run_utils import NO_DROPOUT, env, finetune_args, llmtune, losses, same_weights, write_csv

ROOT = Path(__file__).resolve().parent.parent
# Ray dials a loopback address as the machine's own address unless told it is a one-machine
# cluster; with this, the cluster and the llmtune driver stay on 127.0.0.1.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# 64 train rows, 2 workers x batch 4: 8 steps per epoch, 16 steps, a checkpoint every 4 steps
# (no evaluation during training); the 13 validation rows are scored once at the end.
SCHEDULE = ("--batch-size", "4", "--epochs", "2", "--set", NO_DROPOUT, "--set", "train.eval_batch_size=4")
SCHEDULE += ("--set", "train.eval_strategy=no", "--set", "train.eval_steps=4")
KEEP = ("--set", "train.keep_checkpoints=true")  # a finished run drops its checkpoints unless asked to keep them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# without a cluster


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--launcher", "ray", "--num-workers", "2", "--num-processes", "2"], "--launcher ray and --num-processes"),
        (["--launcher", "ray", "--num-workers", "2", "--num-machines", "2"], "--launcher ray and --num-machines"),
        (["--launcher", "ray", "--num-workers", "2", "--accelerate-config", "ddp"], "--accelerate-config"),
        (["--launcher", "ray", "--num-workers", "0"], "--num-workers must be >= 1, got 0"),
        (["--launcher", "ray"], "--launcher ray needs --num-workers N"),
        (["--launcher", "slurm"], "--launcher must be accelerate or ray, got 'slurm'"),
        (["--num-workers", "2"], "--num-workers is a Ray launcher flag: add --launcher ray"),
        (["--launcher", "accelerate", "--ray-address", "auto"], "--ray-address is a Ray launcher flag"),
        (["--launcher", "ray", "--num-workers", "2", "--max-failures", "-2"], "--max-failures must be >= 0"),
        (
            ["--launcher", "ray", "--num-workers", "2", "--ray-address", "head"],
            "--ray-address must be auto or HOST:PORT",
        ),
        (
            ["--launcher", "ray", "--num-workers", "2", "--ray-address", "h:0"],
            "--ray-address must be auto or HOST:PORT",
        ),
        (["--launcher", "ray", "--num-workers", "2", "--ray-address", "ray://h:10001"], "Ray Client (ray://)"),
        (["--launcher", "ray", "--num-workers", "2", "--resources-per-worker", '{"CPU": 1'], "is not valid JSON"),
        (["--launcher", "ray", "--num-workers", "2", "--resources-per-worker", "[1]"], "must be a JSON object"),
        (["--launcher", "ray", "--num-workers", "2", "--resources-per-worker", "{}"], "must be a JSON object"),
        (
            ["--launcher", "ray", "--num-workers", "2", "--resources-per-worker", '{"CPU": -1}'],
            "CPU must be a number >= 0",
        ),
        (
            ["--launcher", "ray", "--num-workers", "2", "--resources-per-worker", '{"GPU": true}'],
            "GPU must be a number",
        ),
        (["--launcher", "ray", "--num-workers", "2", "--resources-per-worker", '{"gpu": 1}'], "write GPU"),
    ],
)
@pytest.mark.parametrize("command", ["finetune", "pretrain"])
def test_bad_launcher_flags(command, args, expected, cli, tmp_path):
    out = tmp_path / "out"
    base = ["finetune", "--task", "sentiment"] if command == "finetune" else ["pretrain", "--objective", "clm"]
    result = cli(*base, "-o", out, *args)
    lines = error_lines(result.stderr)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()


def test_launcher_ray_inside_a_launched_run_is_refused(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli("finetune", "-o", tmp_path / "o", "--launcher", "ray", "--num-workers", "2")
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [
        "error: --launcher ray given inside a launched run: drop it, or run llmtune without accelerate launch / torchrun"
    ]


def test_missing_ray_names_the_extra(cli, tiny_bert_dir, sentiment_csv, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    for name, value in {"RAY_DISABLE_WORKER_LOG_PREFIX": "1", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}.items():
        monkeypatch.setenv(name, value)  # what the launcher sets for Ray; undone after the test
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    out = tmp_path / "out"
    result = cli(
        "finetune", "--model", tiny_bert_dir, "-d", sentiment_csv, "-o", out, "--launcher", "ray", "--num-workers", "2"
    )
    lines = error_lines(result.stderr)
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: --launcher ray needs Ray Train"), result.stderr
    assert "pip install 'llmtune[ray]'" in lines[0]
    assert not out.exists()


def test_ray_flags_on_both_training_commands(cli):
    for command in ("finetune", "pretrain"):
        text = cli(command, "--help").output
        for flag in ("--launcher", "--ray-address", "--num-workers", "--resources-per-worker", "--max-failures"):
            assert flag in text, (command, flag)


def _checkpoint(out: Path, step: int) -> Path:
    """A complete llmtune checkpoint (marker and all) at ``out/checkpoint-STEP``."""
    from llmtune.checkpoint import finalize

    staging = out / f".partial-checkpoint-{step}"
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"w" * step)
    return finalize(staging, out / f"checkpoint-{step}", step, world_size=2)


def _cfg(out: Path, **train):
    from llmtune.resolve import load_config

    flags = {"train.output_dir": str(out), **{f"train.{k}": v for k, v in train.items()}}
    return load_config(task="sentiment", flags=flags)


def test_restart_resumes_from_the_newest_checkpoint_of_this_launch(tmp_path):
    from llmtune.raylaunch import attempt_values, checkpoints_before

    out = tmp_path / "out"
    cfg = _cfg(out)
    before = checkpoints_before(out)  # launched into a folder that does not exist yet
    assert before == {} and attempt_values(cfg, before) == {}  # the first attempt: the config as given
    out.mkdir()
    (out / "llmtune_config.yaml").write_text("saved by attempt 1\n")
    # attempt 1 died before its first checkpoint: start over, allowing its leftovers
    assert attempt_values(cfg, before) == {"train.resume": "auto"}
    _checkpoint(out, 4)
    newest = _checkpoint(out, 8)
    (out / ".partial-checkpoint-12").mkdir()  # a save cut short: never resumed from
    assert attempt_values(cfg, before) == {"train.resume": str(newest), "train.overwrite": False}


def test_restart_never_resumes_a_checkpoint_that_overwrite_replaces(tmp_path):
    from llmtune.raylaunch import attempt_values, checkpoints_before

    out = tmp_path / "out"
    old = _checkpoint(out, 8)  # an earlier run's, to be replaced (--overwrite)
    cfg = _cfg(out, overwrite=True)
    before = checkpoints_before(out)
    assert before == {"checkpoint-8": (old / "llmtune_checkpoint.json").stat().st_mtime_ns}
    assert attempt_values(cfg, before) == {}  # nothing of this launch yet: --overwrite again
    shutil.rmtree(old)  # attempt 1 removed the old run (overwrite), then saved its own step 4 and 8
    _checkpoint(out, 4)
    time.sleep(0.01)  # a distinct modification time for the new checkpoint-8's marker
    new = _checkpoint(out, 8)
    assert attempt_values(cfg, before) == {"train.resume": str(new), "train.overwrite": False}


def test_restart_keeps_an_explicit_resume_until_this_launch_saves(tmp_path):
    from llmtune.raylaunch import attempt_values, checkpoints_before

    earlier = _checkpoint(tmp_path / "earlier", 4)
    out = tmp_path / "out"
    cfg = _cfg(out, resume=str(earlier))
    before = checkpoints_before(out)
    out.mkdir()
    (out / "llmtune_config.yaml").write_text("saved by attempt 1\n")
    assert attempt_values(cfg, before) == {}  # resume from the given checkpoint again
    mine = _checkpoint(out, 8)
    assert attempt_values(cfg, before) == {"train.resume": str(mine), "train.overwrite": False}


def test_worker_failure_is_one_line():
    from llmtune.raylaunch import _failure_line

    class WorkerGroupError(Exception):  # the shape of ray.train.WorkerGroupError
        def __init__(self, message: str, worker_failures: dict):
            super().__init__(message)
            self.worker_failures = worker_failures

    failures = {3: ValueError("late"), 1: RuntimeError("gloo: connection reset\n  by peer")}
    line = _failure_line(WorkerGroupError("2 workers failed", failures), attempts=3)
    assert line == (
        "Ray worker rank 1 failed: RuntimeError: gloo: connection reset by peer (after 2 restarts) "
        "(rerun with --debug for the traceback)"
    )

    class ActorDiedError(Exception):
        pass

    failures = {0: RuntimeError("gloo: connection closed by peer"), 1: ActorDiedError("The actor died unexpectedly")}
    line = _failure_line(WorkerGroupError("2 workers failed", failures), attempts=1)
    assert line.startswith("Ray worker rank 1 failed: ActorDiedError: The actor died unexpectedly (rerun"), line
    line = _failure_line(RuntimeError("placement group\ntimed out"), attempts=1)
    assert line == "Ray Train failed: RuntimeError: placement group timed out (rerun with --debug for the traceback)"


# ---------------------------------------------------------------------------------------------
# connecting (subprocesses: they import ray)


@pytest.mark.slow
def test_unreachable_address_is_one_line(tmp_path):
    port = free_port()  # nothing listens there any more
    out = tmp_path / "out"
    result = llmtune(
        ["finetune", "-o", str(out), "--launcher", "ray", "--num-workers", "2", "--ray-address", f"127.0.0.1:{port}"],
        timeout=120,
        **LOOPBACK,
    )
    lines = error_lines(result.stderr)
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: --ray-address 127.0.0.1:{port}: no Ray cluster at"), lines
    assert "Connection refused" in lines[0] and f"ray start --head --port {port}" in lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_address_of_something_else_is_one_line(tmp_path):
    """A port that accepts connections but is no Ray GCS (say, the dashboard's): refused after
    raylaunch.CONNECT_TIMEOUT_S, where ray.init would wait for minutes."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = llmtune(
            ["finetune", "--launcher", "ray", "--num-workers", "2", "--ray-address", f"127.0.0.1:{port}"],
            timeout=120,
            **LOOPBACK,
        )
    lines = error_lines(result.stderr)
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: --ray-address 127.0.0.1:{port}: the port accepts connections but no Ray")


# ---------------------------------------------------------------------------------------------
# on a real cluster


def _ray_executable() -> str:
    exe = Path(sys.executable).parent / "ray"
    found = str(exe) if exe.exists() else shutil.which("ray")
    assert found, "the `ray` command is missing: pip install 'llmtune[ray]'"
    return found


def _stop(proc: subprocess.Popen, tree: list) -> None:
    """Stop `ray start --block` (it stops the processes it started), then kill what is left."""
    import psutil

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for child in tree:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(tree, timeout=10)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray head (2 CPUs, 127.0.0.1) for the module, stopped at the end; its workers import
    this checkout's llmtune. Yields its address."""
    import psutil

    port = free_port()
    temp = tempfile.mkdtemp(prefix="ltray-", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    log = open(os.path.join(temp, "ray-start.log"), "w+b")  # noqa: SIM115  (read while it runs)
    extra = {**LOOPBACK, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    extra["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"  # stop at once on SIGTERM (no 30 s node drain)
    cmd = [_ray_executable(), "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1"]
    cmd += ["--num-cpus", "2", "--num-gpus", "0", "--include-dashboard=false", "--disable-usage-stats"]
    cmd += ["--temp-dir", temp]
    for flag in ("--ray-client-server-port", "--dashboard-port", "--dashboard-agent-listen-port"):
        cmd += [flag, str(free_port())]
    for flag in ("--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"):
        cmd += [flag, str(free_port())]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env(**extra), start_new_session=True)
    tree: list = []
    try:
        deadline = time.time() + 120
        while b"Ray runtime started" not in Path(log.name).read_bytes():
            assert proc.poll() is None, Path(log.name).read_text(errors="replace")
            assert time.time() < deadline, "ray start did not come up in 120 s"
            time.sleep(0.5)
        tree = psutil.Process(proc.pid).children(recursive=True)
        yield f"127.0.0.1:{port}"
    finally:
        try:
            tree += [p for p in psutil.Process(proc.pid).children(recursive=True) if p not in tree]
        except psutil.Error:
            pass
        _stop(proc, tree)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-data")
    write_csv(root / "train.csv", 64, seed=0)
    write_csv(root / "validation.csv", 13, seed=1)
    return root


def ray_args(address: str, *extra: str) -> list[str]:
    return ["--launcher", "ray", "--num-workers", "2", "--ray-address", address, *extra]


@pytest.fixture(scope="module")
def accelerate_run(tmp_path_factory, tiny_bert_dir, data):
    out = tmp_path_factory.mktemp("accelerate") / "out"
    result = llmtune(finetune_args(tiny_bert_dir, data, out, *SCHEDULE, *KEEP, "--num-processes", "2"))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory, tiny_bert_dir, data, ray_cluster):
    out = tmp_path_factory.mktemp("ray") / "out"
    result = llmtune(finetune_args(tiny_bert_dir, data, out, *SCHEDULE, *KEEP, *ray_args(ray_cluster)), **LOOPBACK)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result


@pytest.mark.slow
def test_two_ray_workers_train_like_two_processes(ray_run, accelerate_run):
    out, result = ray_run
    a, b = losses(accelerate_run), losses(out)
    assert len(a) == len(b) == 16
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5, (a, b)
    assert same_weights(accelerate_run, out, exact=False, atol=1e-5)
    # the run's outputs where a plain run puts them, nothing of Ray's among them
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in accelerate_run.iterdir())
    ckpt = out / "checkpoint-12"
    assert {p.name for p in ckpt.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    m1, m2 = (json.loads((d / "metrics.json").read_text())["eval"] for d in (accelerate_run, out))
    assert m1["eval_accuracy"] == m2["eval_accuracy"] and abs(m1["eval_loss"] - m2["eval_loss"]) < 1e-5
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 13  # each validation row once
    # rank 0 prints, once; no Ray chatter, no error
    assert re.search(r"^llmtune: Ray Train: 2 worker\(s\), \{\"CPU\": 1\} each: rank 0 pid \d+", result.stdout, re.M)
    assert result.stdout.count("saved to") == 1 and result.stdout.count("step 16/16") == 1
    assert "error:" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "RayTrainWorker" not in result.stdout + result.stderr


@pytest.mark.slow
def test_one_ray_worker_trains_like_a_plain_run(ray_cluster, tiny_bert_dir, data, tmp_path):
    """World size 1: no collectives, accelerate sees a single process."""
    common = ("--batch-size", "8", "--max-steps", "6", "--set", NO_DROPOUT, "--set", "train.eval_strategy=no")
    plain, on_ray = tmp_path / "plain", tmp_path / "ray"
    result = llmtune(finetune_args(tiny_bert_dir, data, plain, *common))
    assert result.returncode == 0, result.stderr
    args = finetune_args(tiny_bert_dir, data, on_ray, *common, "--launcher", "ray", "--num-workers", "1")
    result = llmtune([*args, "--ray-address", ray_cluster], **LOOPBACK)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(
        r"^llmtune: Ray Train: 1 worker\(s\), \{\"CPU\": 1\} each: rank 0 pid \d+ on 127.0.0.1$", result.stdout, re.M
    )
    a, b = losses(plain), losses(on_ray)
    assert len(a) == len(b) == 6 and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5, (a, b)
    assert same_weights(plain, on_ray, exact=False, atol=1e-5)


@pytest.mark.slow
def test_killed_worker_restarts_and_resumes_exactly(ray_run, ray_cluster, tiny_bert_dir, data, tmp_path):
    """SIGKILL rank 1 once checkpoint-4 exists: Ray restarts both workers, they resume from the newest
    checkpoint, and the run ends with the losses and weights of the uninterrupted one."""
    reference, _ = ray_run
    out = tmp_path / "out"
    args = finetune_args(tiny_bert_dir, data, out, *SCHEDULE, *ray_args(ray_cluster, "--max-failures", "1"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtune", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(**LOOPBACK),
    )
    stdout: list[str] = []
    stderr: list[str] = []
    readers = [
        threading.Thread(target=lambda: stdout.extend(proc.stdout), daemon=True),  # one reader per pipe
        threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        victim, deadline = None, time.time() + 240
        while victim is None or not (out / "checkpoint-4").is_dir():
            assert proc.poll() is None and time.time() < deadline, "".join(stdout + stderr)
            found = re.search(r"Ray Train: 2 worker\(s\).* rank 1 pid (\d+) ", "".join(stdout))
            victim = int(found.group(1)) if found else None
            time.sleep(0.005)
        os.kill(victim, signal.SIGKILL)  # a real worker process, dead mid-run
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    for reader in readers:
        reader.join(timeout=10)
    text, stderr = "".join(stdout), "".join(stderr)
    assert proc.returncode == 0, text + stderr
    restarted = re.search(r"^llmtune: Ray restarted the workers after a failure \(restart 1 of 1\): (.*)$", text, re.M)
    assert restarted, text
    assert f"pid {victim} " not in restarted.group(1) + " "  # a new worker group
    resumed = re.search(rf"^llmtune: resuming from {re.escape(str(out))}/checkpoint-(\d+)$", text, re.M)
    assert resumed and int(resumed.group(1)) >= 4, text
    after = text[restarted.end() :]
    assert [int(n) for n in re.findall(r"^step (\d+)/16 ", after, re.M)] == list(range(int(resumed.group(1)) + 1, 17))
    assert losses(out) == losses(reference) and len(losses(out)) == 16  # no step lost or repeated
    assert same_weights(out, reference, exact=True)
    assert "error:" not in stderr and "Traceback" not in stderr, stderr


@pytest.mark.slow
def test_user_error_in_the_workers_is_one_line_and_not_retried(ray_cluster, tiny_bert_dir, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\n")  # header only: found by the workers, after the launch
    out = tmp_path / "out"
    result = llmtune(finetune_args(tiny_bert_dir, bad, out, *ray_args(ray_cluster, "--max-failures", "1")), **LOOPBACK)
    lines = error_lines(result.stderr)
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and "no rows" in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout.count("llmtune: resolved config") == 1  # the restart did not run it again
    assert "Ray restarted" not in result.stdout
    assert not out.exists()


@pytest.mark.slow
def test_more_workers_than_the_cluster_holds_is_one_line(ray_cluster, tiny_bert_dir, sentiment_csv, tmp_path):
    args = finetune_args(tiny_bert_dir, sentiment_csv, tmp_path / "out", "--launcher", "ray", "--num-workers", "3")
    result = llmtune([*args, "--ray-address", ray_cluster], **LOOPBACK)
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [
        f'error: --num-workers 3 with {{"CPU": 1}} each needs 3 CPU; the Ray cluster at {ray_cluster} has 2: '
        "lower --num-workers, or set --resources-per-worker"
    ]
