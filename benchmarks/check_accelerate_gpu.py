"""Do the shipped accelerate configs still run? (a GPU check, not a benchmark)

Runs ``llmtune pretrain --recipe clm-smoke`` for a few steps under each config in
``recipes/accelerate/`` (DDP, FSDP2, DeepSpeed ZeRO-2/3) with one process per visible GPU, and
prints a pass/fail table. DeepSpeed configs are skipped when the deepspeed package is missing.
Then DDP over NCCL across 2 "machines" on this host (half the GPUs each, llmtune's multi-node flags
on 127.0.0.1), on machines with 2 GPUs or more.
Exit code: 0 all ran, 1 some failed, 2 no CUDA GPU here (nothing checked).

    python benchmarks/check_accelerate_gpu.py [--steps 5] [--configs ddp fsdp]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM first: llmtune passes it to the launcher, which passes it to the workers (torch's
    elastic agent starts them in sessions of their own, out of reach of a process-group kill).
    Whatever is left after 20 s is killed."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def two_machines(gpus: int, args: argparse.Namespace, work: Path, env: dict) -> str:
    """DDP over NCCL across 2 "machines" on this host (half the GPUs each, rendezvous on
    127.0.0.1): the multi-node path with a GPU backend. Needs 2 GPUs or more."""
    name = "ddp, 2 machines x half the GPUs (127.0.0.1)"
    if gpus < 2:
        return f"| {name} | skipped: needs 2 GPUs, this machine has {gpus} | |"
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    half, procs, started = gpus // 2, [], time.perf_counter()
    out = work / "two-machines"
    for rank in (0, 1):
        devices = ",".join(str(rank * half + i) for i in range(half))
        cmd = [
            sys.executable, "-m", "llmtune", "pretrain", "--recipe", "clm-smoke", "-o", str(out),
            "--max-steps", str(args.steps), "--set", "train.eval_strategy=no", "--set", "options.eval_on_start=false",
            "--num-processes", str(2 * half), "--num-machines", "2", "--machine-rank", str(rank),
            "--main-process-ip", "127.0.0.1", "--main-process-port", str(port), "--rdzv-timeout", "60",
        ]  # fmt: skip
        log = open(work / f"two-machines-{rank}.log", "w")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                       env=dict(env, CUDA_VISIBLE_DEVICES=devices)), log))  # fmt: skip
    codes = []
    for proc, log in procs:
        try:
            codes.append(proc.wait(timeout=args.timeout))
        except subprocess.TimeoutExpired:
            codes.append("timeout")
            stop(proc)
        log.close()
    secs = time.perf_counter() - started
    ok = codes == [0, 0] and (out / "metrics.json").is_file()
    print(f"== two machines: {'ok' if ok else 'FAILED'} in {secs:.0f} s", flush=True)
    return f"| {name} | {'ok' if ok else f'FAILED (exit {codes})'} | {secs:.0f} |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--configs", nargs="*", default=None, help="config names (default: every shipped one)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds each config may take")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to check (the configs need GPUs)", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count()
    names = args.configs or sorted(p.stem for p in (ROOT / "recipes" / "accelerate").glob("*.yaml"))
    work = Path(tempfile.mkdtemp(prefix="llmtune-accel-check-"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    rows, failed = [], 0
    for name in names:
        if name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
            rows.append(f"| {name} | skipped: deepspeed not installed | |")
            continue
        cmd = [
            sys.executable, "-m", "llmtune", "pretrain", "--recipe", "clm-smoke", "--accelerate-config", name,
            "--num-processes", str(gpus), "--max-steps", str(args.steps), "-o", str(work / name),
            "--set", "train.eval_strategy=no", "--set", "options.eval_on_start=false",
        ]  # fmt: skip
        started = time.perf_counter()
        log = work / f"{name}.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                code = proc.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                code = f"timed out after {args.timeout:.0f} s"
                stop(proc)
        secs = time.perf_counter() - started
        ok = code == 0 and (work / name / "metrics.json").is_file()
        failed += not ok
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1:] or [""]
        why = f"exit {code}" if isinstance(code, int) else code
        rows.append(f"| {name} | {'ok' if ok else f'FAILED ({why}): {last[0][:160]}'} | {secs:.0f} |")
        print(f"== {name}: {'ok' if ok else 'FAILED'} in {secs:.0f} s", flush=True)
        if not ok:  # the log stays on the machine: print its end here
            print("\n".join(lines[-25:]), flush=True)
    rows.append(two_machines(gpus, args, work, env))
    failed += "FAILED" in rows[-1]
    print(f"accelerate configs on {gpus} x {torch.cuda.get_device_name(0)}, {args.steps} steps of clm-smoke:\n")
    print("| config | result | seconds |\n|---|---|---|\n" + "\n".join(rows))
    print(f"\nlogs in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
