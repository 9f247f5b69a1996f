"""Several machines on this one (mirrors the multi-machine part of llmtune/launch.py, llmtune/distributed.py
and the output-folder checks of llmtune/runner.py).

Each "machine" is one ``llmtune ... --num-machines 2 --machine-rank R`` process, started at the same
time as the other, in a process group (session) of its own, with a ``datasets`` cache of its own
(machines need not share one); they meet at 127.0.0.1 on a free port. Parity: with dropout off,
2 machines x 1 process train exactly like 1 machine x 2 processes (the same ranks see the same
rows): per-step losses and final weights within 1e-5, the same evaluation.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmtune.errors import LlmtuneError
from llmtune.launch import LaunchOptions, check_options, launch_command
from tests.run_utils import NO_DROPOUT, env, finetune_args, llmtune, losses, same_weights, write_csv

DDP_WARNING = "find_unused_parameters=True was specified"
# 64 train rows, global batch 8: 8 steps per epoch, 3 epochs; evaluation (13 rows) and a checkpoint
# every 8 steps.
SCHEDULE = ("--batch-size", "4", "--epochs", "3", "--set", NO_DROPOUT, "--set", "train.eval_batch_size=4")
SAVE_EVERY_8 = ("--set", "train.eval_strategy=steps", "--set", "train.eval_steps=8")
CLM = [
    "pretrain", "--recipe", "clm-smoke", "--max-steps", "12", "--batch-size", "4", "--set", "train.logging_steps=1",
    "--set", "model.config_overrides={resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0}",
    "--set", "train.eval_strategy=steps", "--set", "train.eval_steps=6", "--set", "train.save_final_checkpoint=true",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine_flags(rank: int, port: int, machines: int = 2, processes: int = 2) -> list[str]:
    return [
        "--num-machines", str(machines), "--num-processes", str(processes), "--machine-rank", str(rank),
        "--main-process-ip", "127.0.0.1", "--main-process-port", str(port),
    ]  # fmt: skip


class Machine:
    """One "machine": an llmtune process in a session of its own, output in files (no pipe to fill)."""

    def __init__(self, args: list[str], rank: int, logs: Path, **env_extra: str):
        logs.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.out_path, self.err_path = logs / f"m{rank}.out", logs / f"m{rank}.err"
        extra = {"HF_HOME": str(logs / f"hf-{rank}"), **env_extra}  # a datasets cache per machine
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmtune", *args],
                stdout=out,
                stderr=err,
                env=env(**extra),
                start_new_session=True,
            )

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"machine {self.rank} hung: {self.stderr[-2000:]}")

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def start(args: list[str], logs: Path, port: int, per_machine: dict | None = None, **env_extra: str) -> list[Machine]:
    per_machine = per_machine or {}
    return [
        Machine([*args, *machine_flags(r, port), *per_machine.get(r, [])], r, logs / "logs", **env_extra)
        for r in (0, 1)
    ]


def run_machines(args: list[str], logs: Path, **kwargs) -> list[Machine]:
    machines = start(args, logs, free_port(), **kwargs)
    for m in machines:
        m.wait()
    return machines


def wait_for(path: Path, machines: list[Machine], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert all(m.proc.poll() is None for m in machines), [m.stderr[-1500:] for m in machines]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def check_clean(machines: list[Machine]) -> None:
    for m in machines:
        assert m.proc.returncode == 0, m.stderr[-3000:]
        assert DDP_WARNING not in m.stderr  # find_unused_parameters is off: every parameter is used
        assert not m.errors() and "Traceback" not in m.stderr, m.stderr[-3000:]


def check_parity(one: Path, two: Path, steps: int) -> None:
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == steps
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5, (a, b)
    assert same_weights(one, two, exact=False, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# launch options (no processes)


def test_multi_machine_launch_command_sets_rendezvous():
    opts = LaunchOptions(num_processes=4, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1",
                         main_process_port=29500, rdzv_timeout=30)  # fmt: skip
    check_options(opts)
    cmd = launch_command(["finetune"], opts)
    assert cmd[cmd.index("--rdzv_backend") + 1] == "static"  # the default, named explicitly
    assert cmd[cmd.index("--rdzv_conf") + 1] == "timeout=30,join_timeout=30,read_timeout=30"
    assert "--rdzv-timeout" not in cmd and cmd[-2:] == ["llmtune", "finetune"]
    # c10d numbers the machines itself: no --machine-rank needed (accelerate still gets a number)
    opts = LaunchOptions(num_processes=4, num_machines=2, main_process_ip="h", main_process_port=1, rdzv_backend="c10d")
    check_options(opts)
    cmd = launch_command(["finetune"], opts)
    assert cmd[cmd.index("--rdzv_backend") + 1] == "c10d" and cmd[cmd.index("--machine_rank") + 1] == "0"
    assert cmd[cmd.index("--rdzv_conf") + 1] == "timeout=120,join_timeout=120,read_timeout=120"
    # one machine: no rendezvous settings
    assert "--rdzv_conf" not in launch_command(["finetune"], LaunchOptions(num_processes=2))


MULTI = {"num_machines": 2, "num_processes": 2, "main_process_ip": "h", "main_process_port": 1}


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (LaunchOptions(**MULTI, machine_rank=0, rdzv_backend="etcd"), "--rdzv-backend must be one of static, c10d"),
        (LaunchOptions(**MULTI, machine_rank=0, rdzv_timeout=0), "--rdzv-timeout must be >= 1"),
        (LaunchOptions(num_processes=2, rdzv_timeout=10), "--rdzv-backend and --rdzv-timeout are for runs over"),
        (LaunchOptions(**{**MULTI, "num_processes": None}, machine_rank=0), "needs --num-processes"),
        (LaunchOptions(**MULTI), "needs --machine-rank"),  # static orders machines by their rank
    ],
)
def test_bad_multi_machine_options(opts, message):
    with pytest.raises(LlmtuneError, match=message):
        check_options(opts)


def test_multi_machine_flags_in_help(cli):
    text = cli("finetune", "--help").output
    assert "--rdzv-backend" in text and "--rdzv-timeout" in text


# ---------------------------------------------------------------------------------------------
# workers die with their launcher


def test_worker_dies_with_its_launcher(tmp_path):
    """torch elastic starts workers in sessions of their own: without tie_to_launcher a SIGKILL of
    the launcher (or of llmtune's process group) leaves them running."""
    pid_file = tmp_path / "worker.pid"
    worker = (
        "import os, time; from llmtune.launch import tie_to_launcher; tie_to_launcher(); "
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    launcher = (
        "import os, subprocess, sys, time; os.environ['LLMTUNE_LAUNCHER_PID'] = str(os.getpid()); "
        f"subprocess.Popen([sys.executable, '-c', {worker!r}], start_new_session=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", launcher], env=env())
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    worker_pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{worker_pid}").exists() and "Z" not in _state(worker_pid):
        assert time.monotonic() < deadline, "the worker outlived its launcher"
        time.sleep(0.01)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_worker_of_a_dead_launcher_stops_at_once():
    """A worker whose launcher died before it could tie itself to it stops at once; one started by
    another layer under a live launcher (DeepSpeed's multi-node runner) is left to that layer."""
    code = "from llmtune.launch import tie_to_launcher; tie_to_launcher(); print('still running')"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env=env(LLMTUNE_LAUNCHER_PID=gone.stdout.strip()),
    )  # fmt: skip
    assert result.returncode == -signal.SIGKILL and "still running" not in result.stdout
    alive = env(LLMTUNE_LAUNCHER_PID=str(os.getpid()))  # alive, but not the worker's parent
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=alive)
    assert result.returncode == 0 and "still running" in result.stdout


# ---------------------------------------------------------------------------------------------
# inside a run: data preparation order, stopping together


def _phases_worker(rank: int, port: int, folder: str) -> None:
    """Rank 0 and 1 on machine A, rank 2 on machine B (a gloo group over 127.0.0.1)."""
    from types import SimpleNamespace

    import torch.distributed as dist

    from llmtune.distributed import machine_first

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=3)
    state = SimpleNamespace(num_processes=3, is_main_process=rank == 0, is_local_main_process=rank in (0, 2))
    log = Path(folder) / "order.log"

    def work() -> int:
        with open(log, "a") as fh:
            fh.write(f"{rank} start\n")
        time.sleep(0.3)  # another process running now would start inside this window
        with open(log, "a") as fh:
            fh.write(f"{rank} end\n")
        return rank

    assert machine_first(state, work) == rank

    def bad() -> int:
        if rank == 2:
            raise LlmtuneError("the training split has no rows on machine B")
        return rank

    try:
        machine_first(state, bad)
        outcome = "went on"
    except LlmtuneError as exc:
        outcome = str(exc)
    (Path(folder) / f"outcome{rank}").write_text(outcome)
    dist.destroy_process_group()


@pytest.mark.slow
def test_machine_first_order_and_stopping_together(tmp_path):
    """The main process prepares data first, then the first process of each other machine (its
    own datasets cache), then the rest; a user error in any phase stops every process with it."""
    import torch.multiprocessing as mp

    mp.spawn(_phases_worker, args=(free_port(), str(tmp_path)), nprocs=3, join=True)
    order = (tmp_path / "order.log").read_text().split("\n")[:-1]
    assert order == ["0 start", "0 end", "2 start", "2 end", "1 start", "1 end"]
    for rank in range(3):
        assert (tmp_path / f"outcome{rank}").read_text() == "the training split has no rows on machine B"


# ---------------------------------------------------------------------------------------------
# machines that do not meet


@pytest.mark.slow
def test_unreachable_main_process_fails_in_one_line(tiny_bert_dir, tmp_path):
    data = write_csv(tmp_path / "train.csv", 16)
    args = finetune_args(tiny_bert_dir, data, tmp_path / "out", *machine_flags(1, free_port()), "--rdzv-timeout", "2")
    result = llmtune(args, timeout=120)  # nobody listens on that port
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: machine rank 1 could not reach the main process"), lines
    assert "127.0.0.1:" in lines[0] and "within 2 s (--rdzv-timeout" in lines[0]
    assert "--main-process-ip/--main-process-port" in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["static", "c10d"])
def test_main_process_alone_fails_in_one_line(backend, tiny_bert_dir, tmp_path):
    data = write_csv(tmp_path / "train.csv", 16)
    flags = [*machine_flags(0, free_port()), "--rdzv-timeout", "2", "--rdzv-backend", backend]
    result = llmtune(finetune_args(tiny_bert_dir, data, tmp_path / "out", *flags), timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    expected = "only 1 of 2 machines joined" if backend == "static" else "not all 2 machines joined the c10d"
    assert expected in lines[0] and "within 2 s (--rdzv-timeout)" in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_worker_killed_without_a_message_is_one_line(tiny_bert_dir, tmp_path):
    """A worker that dies of a signal says nothing itself: the launcher names it, in one line."""
    data = write_csv(tmp_path / "train.csv", 32)
    args = finetune_args(tiny_bert_dir, data, tmp_path / "out", "--max-steps", "4", "--num-processes", "2")
    result = llmtune(args, LLMTUNE_FAULT="step:1")  # every worker SIGKILLs itself after step 1
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "died with signal SIGKILL" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# two machines train like one


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode-data")
    write_csv(root / "train.csv", 64, seed=0)
    write_csv(root / "validation.csv", 13, seed=1)  # the last distributed eval batch is padded
    return root


@pytest.fixture(scope="module")
def one_machine(tmp_path_factory, tiny_bert_dir, data) -> Path:
    """1 machine x 2 processes."""
    out = tmp_path_factory.mktemp("one-machine") / "out"
    result = llmtune(finetune_args(tiny_bert_dir, data, out, *SCHEDULE, *SAVE_EVERY_8, "--num-processes", "2"))
    assert result.returncode == 0, result.stderr
    assert DDP_WARNING not in result.stderr
    return out


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory, tiny_bert_dir, data) -> tuple[Path, list[Machine]]:
    """2 machines x 1 process (static rendezvous: ranks follow --machine-rank)."""
    root = tmp_path_factory.mktemp("two-machines")
    machines = run_machines(finetune_args(tiny_bert_dir, data, root / "out", *SCHEDULE, *SAVE_EVERY_8), root)
    check_clean(machines)
    return root / "out", machines


@pytest.mark.slow
def test_classification_two_machines_match_one(one_machine, two_machines):
    out, machines = two_machines
    check_parity(one_machine, out, 24)
    m1, m2 = (json.loads((d / "metrics.json").read_text())["eval"] for d in (one_machine, out))
    assert m1["eval_accuracy"] == m2["eval_accuracy"] and abs(m1["eval_loss"] - m2["eval_loss"]) < 1e-5
    rows = [(d / "predictions.jsonl").read_text().splitlines() for d in (one_machine, out)]
    assert len(rows[1]) == 13 and rows[0] == rows[1]  # every row once, in order, the same predictions
    # Checkpoints hold both ranks' RNG states and are complete; the main process wrote them.
    for ckpt in out.glob("checkpoint-*"):
        assert {p.name for p in ckpt.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
        assert (ckpt / "llmtune_checkpoint.json").is_file()
    assert "saved to" in machines[0].stdout and machines[1].stdout.strip() == ""  # rank 0 prints, once
    # Machine 1 has a datasets cache of its own: it tokenized the data there itself.
    assert list((out.parent / "logs" / "hf-1").rglob("cache-*.arrow"))


@pytest.mark.slow
def test_clm_two_machines_match_one_c10d(tmp_path):
    """A clm run over a c10d rendezvous (ranks given out as the machines join), with evaluation
    and a checkpoint, matches 1 machine x 2 processes."""
    one, two = tmp_path / "one", tmp_path / "two"
    result = llmtune([*CLM, "-o", str(one), "--num-processes", "2"])
    assert result.returncode == 0, result.stderr
    machines = run_machines([*CLM, "-o", str(two), "--rdzv-backend", "c10d"], tmp_path)
    check_clean(machines)
    check_parity(one, two, 12)
    m1, m2 = (json.loads((d / "metrics.json").read_text())["eval"] for d in (one, two))
    assert abs(m1["eval_loss"] - m2["eval_loss"]) < 1e-5 and m1["eval_tokens"] == m2["eval_tokens"]
    ckpt = two / "checkpoint-12"
    assert (ckpt / "llmtune_checkpoint.json").is_file()
    assert {p.name for p in ckpt.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    # Whichever machine got rank 0 printed the run, once.
    assert sum("saved to" in m.stdout for m in machines) == 1


# ---------------------------------------------------------------------------------------------
# stopping and failing together


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume(two_machines, tiny_bert_dir, data, tmp_path):
    """SIGTERM to one machine's llmtune stops every machine with a checkpoint; a SIGKILL of the
    main machine's process group makes the other one stop too, in one line; --resume auto on both
    then ends exactly where the uninterrupted run ended."""
    import re

    reference, _ = two_machines
    out = tmp_path / "out"
    args = finetune_args(tiny_bert_dir, data, out, *SCHEDULE, *SAVE_EVERY_8)

    machines = start(args, tmp_path / "term", free_port())
    wait_for(out / "checkpoint-8", machines)
    machines[1].proc.send_signal(signal.SIGTERM)  # llmtune on machine 1 only, not its process group
    for m in machines:
        assert m.wait() == 128 + signal.SIGTERM, m.stderr[-3000:]
        lines = m.errors()
        assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and "--resume auto" in lines[0], m.stderr
        assert "Traceback" not in m.stderr
    stopped = int(re.search(r"checkpoint-(\d+)", machines[1].errors()[0]).group(1))
    assert stopped > 8 and (out / f"checkpoint-{stopped}" / "llmtune_checkpoint.json").is_file()
    assert len(losses(out)) == stopped

    machines = start([*args, "--resume", "auto"], tmp_path / "kill", free_port())
    saved = out / f"checkpoint-{(stopped // 8 + 1) * 8}"  # the next save point
    wait_for(saved, machines)
    os.killpg(machines[0].proc.pid, signal.SIGKILL)  # the main process's machine, workers included
    assert machines[0].wait() == -signal.SIGKILL
    assert machines[1].wait() == 1, machines[1].stderr[-3000:]
    lines = machines[1].errors()
    assert len(lines) == 1 and "machine rank 1" in lines[0] and "lost the connection" in lines[0], machines[1].stderr
    assert f"--resume auto (it continues from {saved})" in lines[0]
    assert "Traceback" not in machines[1].stderr

    machines = start([*args, "--resume", "auto"], tmp_path / "resume", free_port())
    for m in machines:
        m.wait()
    check_clean(machines)
    assert f"resuming from {saved}" in machines[0].stdout
    assert losses(out) == losses(reference)  # every step once, bit-identical
    assert same_weights(out, reference, exact=True)


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["not-writable", "not-shared"])
def test_output_dir_must_be_shared_and_writable(problem, tiny_bert_dir, data, tmp_path):
    """A machine whose --output-dir is not the main process's folder, or not writable, stops every
    machine before training, each with the same line naming that machine and the folder."""
    if problem == "not-writable":
        (tmp_path / "blocker").write_text("a file where a folder should be")
        theirs = tmp_path / "blocker" / "out"
    else:  # a folder of its own on machine 1 (another disk, in real life)
        theirs = tmp_path / "elsewhere"
        theirs.mkdir()
    args = finetune_args(tiny_bert_dir, data, tmp_path / "out", *SCHEDULE)
    machines = run_machines(args, tmp_path, per_machine={1: ["--output-dir", str(theirs)]})
    lines = []
    for m in machines:
        assert m.proc.returncode == 2, m.stderr[-3000:]
        assert len(m.errors()) == 1 and "Traceback" not in m.stderr, m.stderr
        lines.append(m.errors()[0])
    assert lines[0] == lines[1]  # the same message on every machine
    assert lines[0].startswith("error: machine rank 1 (host ") and str(theirs) in lines[0]
    expected = "is not writable here" if problem == "not-writable" else "does not show the files the main process"
    assert expected in lines[0] and "storage every machine mounts" in lines[0]
    assert not (tmp_path / "out").exists()  # the main process removed the folder it created
    assert not theirs.exists() or not any(theirs.iterdir())


# ---------------------------------------------------------------------------------------------
# Slurm


SLURM = Path(__file__).resolve().parent.parent / "recipes" / "slurm" / "llmtune.sbatch"
FAKE_SRUN = """#!/bin/bash
# srun --ntasks-per-node=1 CMD...: CMD once per "node", at the same time, each with its task's variables
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((n = 0; n < SLURM_NNODES; n++)); do
    SLURM_NODEID=$n SLURM_PROCID=$n SLURM_LOCALID=0 HF_HOME="$FAKE_LOGS/hf-$n" \\
        "$@" > "$FAKE_LOGS/node$n.out" 2> "$FAKE_LOGS/node$n.err" &
    pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit $rc
"""
FAKE_SCONTROL = """#!/bin/bash
# scontrol show hostnames LIST
[[ "$1 $2" == "show hostnames" ]] || exit 1
printf '%s\\n' $FAKE_HOSTS
"""


def test_slurm_template_is_no_recipe(cli):
    assert SLURM.is_file() and os.access(SLURM, os.R_OK)
    header = [line for line in SLURM.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --ntasks-per-node=1" in header and any(h.startswith("#SBATCH --signal=TERM@") for h in header)
    listed = cli("recipes", "list").output
    assert "slurm" not in listed and "sbatch" not in listed


@pytest.mark.slow
def test_slurm_template_trains_on_two_nodes(one_machine, tiny_bert_dir, data, tmp_path):
    """The sbatch script, run as Slurm would on the first node (srun and scontrol faked: each
    "node" is a process here), gives each node the right flags, and the nodes train exactly like
    one machine with 2 processes."""
    bin_dir, logs = tmp_path / "bin", tmp_path / "logs"
    bin_dir.mkdir()
    logs.mkdir()
    for name, text in {"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    logged = bin_dir / "llmtune-logged"
    logged.write_text(  # records its arguments, one per line, then runs llmtune
        f'#!/bin/bash\nprintf "%s\\n" "$@" > "$FAKE_LOGS/argv$SLURM_NODEID"\nexec {sys.executable} -m llmtune "$@"\n'
    )
    logged.chmod(0o755)
    port = free_port()
    slurm_env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOGS": str(logs), "FAKE_HOSTS": "127.0.0.1 localhost",
        "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242",
        "LLMTUNE": str(logged), "LLMTUNE_MAIN_PORT": str(port),
    }  # fmt: skip
    out = tmp_path / "out"
    args = finetune_args(tiny_bert_dir, data, out, *SCHEDULE, *SAVE_EVERY_8)
    clean = {k: v for k, v in env(**slurm_env).items() if k != "SLURM_GPUS_ON_NODE"}  # CPU nodes: 1 process each
    result = subprocess.run(["bash", str(SLURM), *args], capture_output=True, text=True, timeout=300, env=clean)
    node_err = [(logs / f"node{n}.err").read_text() for n in (0, 1) if (logs / f"node{n}.err").exists()]
    assert result.returncode == 0, (result.stderr, node_err)
    for n in (0, 1):
        argv = (logs / f"argv{n}").read_text().splitlines()
        flags = dict(zip(argv[len(args) :: 2], argv[len(args) + 1 :: 2], strict=True))
        assert argv[: len(args)] == args
        assert flags == {
            "--num-machines": "2", "--machine-rank": str(n), "--num-processes": "2",
            "--main-process-ip": "127.0.0.1", "--main-process-port": str(port),
        }  # fmt: skip
        assert DDP_WARNING not in node_err[n] and "error:" not in node_err[n], node_err[n]
    check_parity(one_machine, out, 24)
