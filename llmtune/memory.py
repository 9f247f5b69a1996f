"""Memory measurement: peak resident memory (CPU) and peak allocated GPU memory.

On Linux the kernel keeps a process's peak RSS (``VmHWM``) and lets the process reset it to the
current RSS (writing ``5`` to ``/proc/self/clear_refs``), so the peak of one stretch of work (a
training step, an evaluation) is measured exactly, without a sampling thread. Elsewhere the peak
falls back to ``getrusage``'s lifetime maximum (then it includes model loading).

Module level stays torch-free.
"""

from __future__ import annotations

import resource
import sys
from typing import Any

MIB = 2**20


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss() -> int | None:
    """Resident memory of this process now, in bytes (None where unknown)."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else None


def reset_peak_rss() -> bool:
    """Start a new peak-RSS measurement; False where the peak cannot be reset (non-Linux)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident memory in bytes since the last :func:`reset_peak_rss` (or process start)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def step_memory_callback() -> Any:
    """A ``TrainerCallback`` measuring the peak memory of the training steps (not of evaluation,
    saving or logging between them): peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on a
    GPU. Reported by :meth:`metrics` in MiB (this process; rank 0's in a launched run)."""
    from transformers import TrainerCallback

    class StepMemory(TrainerCallback):
        def __init__(self) -> None:
            self.peak = 0
            self.kind: str | None = None

        def _cuda(self, args: Any) -> bool:
            import torch

            return torch.cuda.is_available() and getattr(args.device, "type", "") == "cuda"

        def on_step_begin(self, args, state, control, **kwargs):
            if self._cuda(args):
                import torch

                torch.cuda.reset_peak_memory_stats(args.device)
                self.kind = "gpu_max_allocated"
            else:
                self.kind = "rss" if reset_peak_rss() else "rss_process_peak"
            return control

        def on_step_end(self, args, state, control, **kwargs):
            if self.kind == "gpu_max_allocated":
                import torch

                self.peak = max(self.peak, int(torch.cuda.max_memory_allocated(args.device)))
            elif self.kind is not None:
                self.peak = max(self.peak, peak_rss())
            return control

        def metrics(self) -> dict:
            if self.kind is None:
                return {}
            name = {
                "gpu_max_allocated": "train_step_peak_gpu_allocated_mb",
                "rss": "train_step_peak_rss_mb",
                "rss_process_peak": "train_process_peak_rss_mb",
            }[self.kind]
            return {name: round(self.peak / MIB, 1)}

    return StepMemory()
