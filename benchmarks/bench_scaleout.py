"""Scale-out on one machine: 1 machine x 2 processes vs 2 "machines" x 1 process (loopback) vs Ray.

The same fine-tuning run (MiniLM from the ``demo`` extra on the sentiment set shipped with
llmtune, a fixed number of optimizer steps, no evaluation) is launched four ways on this machine:

- ``--num-processes 2``: accelerate's launcher, one machine, DDP over gloo;
- ``--num-machines 2`` x 1 process each, both "machines" on 127.0.0.1 (static rendezvous);
- ``--launcher ray --num-workers 2`` on a local Ray instance (2 CPUs);
- the Ray run again with one worker killed (SIGKILL) after its first checkpoint: Ray restarts
  the group (``--max-failures 1``), which resumes from that checkpoint. Its extra wall time over
  the uninterrupted Ray run is the restart overhead.

It also times ``--num-processes 2`` with ``train.ddp_find_unused_parameters=true`` (DDP walks the
autograd graph every step, the Trainer's old default) against llmtune's default (off where every
parameter is used).

Wall time is from the command's start to its exit (launcher, rendezvous, model loading and
saving included); samples/s is the Trainer's ``train_samples_per_second`` (training loop only).
Each child uses ``OMP_NUM_THREADS=1`` (2 processes on the 2 cores). Run it alone on an idle
machine; it rewrites its section of BENCHMARKS.md.

    python benchmarks/bench_scaleout.py [--steps 60] [--batch-size 16] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._lmbench import update_benchmarks_md

SECTION = "bench_scaleout"
HOME = tempfile.mkdtemp(prefix="llmtune-scaleout-home-")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # A local Ray instance writes ~/.ray/auth_token, which turns on token auth for every later
    # cluster on the machine (the tests' too): keep it in the run's own folder.
    env["HOME"] = HOME
    return env


def base_args(out: Path, args: argparse.Namespace) -> list[str]:
    return [
        "finetune", "--recipe", "sentiment-demo", "-o", str(out), "--overwrite",
        "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--seed", "0",
        "--set", "train.eval_strategy=no", "--set", "train.load_best_model_at_end=false",
        "--set", f"train.eval_steps={args.save_steps}", "--set", "train.report_to=[none]",
        "--set", "train.logging_steps=10",
    ]  # fmt: skip


def samples_per_second(out: Path) -> float | None:
    try:
        train = json.loads((out / "metrics.json").read_text())["train"]
    except (OSError, KeyError, ValueError):
        return None
    return train.get("train_samples_per_second")


def run(cmds: list[list[str]], log: Path, on_line=None) -> tuple[list[int], float]:
    """Start every command at once (several "machines"), wait for all: exit codes, wall seconds."""
    started = time.perf_counter()
    procs = []
    with open(log, "w") as fh:
        for cmd in cmds:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "llmtune", *cmd],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=child_env(),
                    text=True,
                    start_new_session=True,
                )
            )

        def pump(proc):
            for line in proc.stdout:
                fh.write(line)
                fh.flush()
                if on_line is not None:
                    on_line(line)

        threads = [threading.Thread(target=pump, args=(p,), daemon=True) for p in procs]
        for t in threads:
            t.start()
        codes = [p.wait(timeout=1800) for p in procs]
        for t in threads:
            t.join(timeout=10)
    return codes, time.perf_counter() - started


def row(name: str, codes: list[int], wall: float, out: Path, note: str = "") -> dict:
    ok = all(c == 0 for c in codes)
    return {
        "name": name,
        "ok": ok,
        "codes": codes,
        "wall": wall,
        "sps": samples_per_second(out) if ok else None,
        "note": note,
    }


def bench(args: argparse.Namespace, work: Path) -> list[dict]:
    rows = []
    # 1 machine x 2 processes (llmtune's default: DDP without find_unused_parameters)
    out = work / "1x2"
    codes, wall = run([[*base_args(out, args), "--num-processes", "2"]], work / "1x2.log")
    rows.append(row("1 machine x 2 processes (accelerate)", codes, wall, out))
    # the same with DDP's unused-parameter search on
    out = work / "1x2-unused"
    extra = ["--set", "train.ddp_find_unused_parameters=true"]
    codes, wall = run([[*base_args(out, args), "--num-processes", "2", *extra]], work / "1x2-unused.log")
    rows.append(row("1 x 2, ddp_find_unused_parameters=true", codes, wall, out, "DDP walks the graph each step"))
    # 2 "machines" x 1 process on loopback
    out = work / "2x1"
    port = free_port()
    machines = [
        [*base_args(out, args), "--num-processes", "2", "--num-machines", "2", "--machine-rank", str(rank),
         "--main-process-ip", "127.0.0.1", "--main-process-port", str(port)]
        for rank in (0, 1)
    ]  # fmt: skip
    codes, wall = run(machines, work / "2x1.log")
    rows.append(row("2 machines x 1 process (loopback, static rendezvous)", codes, wall, out))
    if args.no_ray:
        return rows
    # Ray: 2 workers on a local instance
    out = work / "ray"
    ray = ["--launcher", "ray", "--num-workers", "2", "--max-failures", "1"]
    codes, wall = run([[*base_args(out, args), *ray]], work / "ray.log")
    rows.append(row("Ray Train, 2 workers (local instance)", codes, wall, out))
    uninterrupted = wall if all(c == 0 for c in codes) else None
    # Ray with one worker killed after the first checkpoint
    out = work / "ray-kill"
    state = {"victim": None, "killed": False}

    def kill_after_checkpoint(line: str) -> None:
        found = re.search(r"Ray Train: \d+ worker\(s\).* rank 1 pid (\d+)", line)
        if found and state["victim"] is None:
            state["victim"] = int(found.group(1))

    def killer() -> None:
        deadline = time.time() + 900
        while time.time() < deadline and not state["killed"]:
            if state["victim"] and any(out.glob("checkpoint-*/trainer_state.json")):
                try:
                    os.kill(state["victim"], signal.SIGKILL)
                    state["killed"] = True
                except ProcessLookupError:
                    pass
                return
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    codes, wall = run([[*base_args(out, args), *ray]], work / "ray-kill.log", on_line=kill_after_checkpoint)
    thread.join(timeout=5)
    note = "worker killed after the first checkpoint" if state["killed"] else "no worker was killed (see log)"
    if state["killed"] and uninterrupted is not None and all(c == 0 for c in codes):
        note += f"; restart overhead {wall - uninterrupted:+.1f} s over the uninterrupted Ray run"
    rows.append(row("Ray Train, 2 workers, one killed and restarted", codes, wall, out, note))
    return rows


def render(rows: list[dict], args: argparse.Namespace) -> str:
    load = os.getloadavg()
    lines = [
        "## Scale-out on one machine: processes, loopback machines, Ray",
        "",
        f"`python benchmarks/bench_scaleout.py --steps {args.steps} --batch-size {args.batch_size} "
        f"--save-steps {args.save_steps}`, {date.today().isoformat()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average before the run {args.load_before:.2f} (after: {load[0]:.2f}). "
        f"MiniLM (`sentiment-demo`), {args.steps} optimizer steps of {args.batch_size} rows per process, no "
        f"evaluation, a checkpoint every {args.save_steps} steps, `OMP_NUM_THREADS=1` per process.",
        "",
        "| launch | exit | wall s | train samples/s | note |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for r in rows:
        sps = f"{r['sps']:.1f}" if r["sps"] is not None else "-"
        lines.append(f"| {r['name']} | {','.join(map(str, r['codes']))} | {r['wall']:.1f} | {sps} | {r['note']} |")
    lines += [
        "",
        "Wall time counts the launcher, the rendezvous, loading and saving; samples/s is the Trainer's training "
        "loop alone (all processes together).",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--save-steps", type=int, default=20)
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray rows (ray not installed)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run folders and logs here")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    args.load_before = os.getloadavg()[0]
    work = args.keep or Path(tempfile.mkdtemp(prefix="llmtune-scaleout-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = bench(args, work)
    body = render(rows, args)
    print(body)
    print(f"\nlogs: {work}")
    if not args.no_write:
        update_benchmarks_md(SECTION, body)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
