"""Memory measurement: peak resident memory (CPU) and peak allocated GPU memory.

CPU: a background thread samples this process's resident memory (``/proc/self/statm``, a few
microseconds a read) every few milliseconds while a training step runs, so the peak of the steps
is measured without touching the kernel's own high-water mark (resetting it would hide earlier
peaks from anyone measuring the whole process, e.g. ``wait4`` in the benchmarks). Where
``/proc`` is missing, the process's lifetime peak (``getrusage``) is reported instead, named so.

Module level stays torch-free.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
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


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
#: Seconds between samples of the resident memory during a training step.
SAMPLE_INTERVAL = 0.005


def current_rss() -> int | None:
    """Resident memory of this process now, in bytes (None where unknown)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def process_peak_rss() -> int:
    """This process's lifetime peak resident memory, in bytes."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


class RssSampler:
    """Highest resident memory seen while active (sampled by a daemon thread)."""

    def __init__(self, interval: float = SAMPLE_INTERVAL) -> None:
        self.interval = interval
        self.peak = 0
        self._active = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        rss = current_rss()
        if rss is not None and rss > self.peak:
            self.peak = rss

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._active.wait(0.1):
                self._sample()
                self._stop.wait(self.interval)

    def start(self) -> None:
        self._sample()
        self._active.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llmtune-rss", daemon=True)
            self._thread.start()

    def pause(self) -> None:
        self._sample()
        self._active.clear()

    def close(self) -> None:
        self._stop.set()
        self._active.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
            self._thread = None


def _touch(model: Any) -> None:
    """Read one value per memory page of every parameter and buffer.

    transformers loads safetensors weights as memory-mapped file pages, which count as resident
    only once read: untouched, the weights would show up in the first step's memory instead of the
    starting point (measured: a 135M fp32 model resident at 0.4 GiB after loading, 0.9 GiB after one
    pass over its parameters). Reading them here makes "when training began" hold the weights, as
    the estimate's weights row does; the first forward pass would read them all a moment later.
    """
    if model is None:
        return
    import torch

    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.device.type == "cpu" and tensor.numel():
                flat = tensor.detach().reshape(-1)
                flat[:: max(1, 4096 // tensor.element_size())].sum()


def step_memory_callback() -> Any:
    """A ``TrainerCallback`` measuring the peak memory of the training steps (not of evaluation,
    saving or logging between them): resident memory on CPU (sampled), or
    ``torch.cuda.max_memory_allocated`` on a GPU; and the same memory when training begins (the
    model loaded, no gradients or optimizer states yet), so that the difference is what training
    adds; and the same memory right after an optimizer step (gradients and optimizer states live,
    activations freed: the step's static part). :meth:`metrics` reports them in MiB (this process;
    rank 0's in a launched run)."""
    from transformers import TrainerCallback

    class StepMemory(TrainerCallback):
        def __init__(self) -> None:
            self.peak = 0
            self.begin: int | None = None
            self.states: int | None = None  # after an optimizer step, before the gradients are zeroed
            self.kind: str | None = None
            self.sampler: RssSampler | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            import torch

            if torch.cuda.is_available() and getattr(args.device, "type", "") == "cuda":
                self.kind = "gpu_max_allocated"
                self.begin = int(torch.cuda.memory_allocated(args.device))
            elif current_rss() is not None:
                self.kind = "rss"
                self.sampler = RssSampler()
                _touch(kwargs.get("model"))
                self.begin = current_rss()
            else:
                self.kind = "rss_process_peak"
            return control

        def on_step_begin(self, args, state, control, **kwargs):
            if self.kind == "gpu_max_allocated":
                import torch

                torch.cuda.reset_peak_memory_stats(args.device)
            elif self.sampler is not None:
                self.sampler.start()
            return control

        def on_optimizer_step(self, args, state, control, **kwargs):
            now = None
            if self.kind == "gpu_max_allocated":
                import torch

                now = int(torch.cuda.memory_allocated(args.device))
            elif self.kind == "rss":
                now = current_rss()
            if now is not None:
                self.states = max(self.states or 0, now)
            return control

        def on_step_end(self, args, state, control, **kwargs):
            if self.kind == "gpu_max_allocated":
                import torch

                self.peak = max(self.peak, int(torch.cuda.max_memory_allocated(args.device)))
            elif self.sampler is not None:
                self.sampler.pause()
                self.peak = max(self.peak, self.sampler.peak)
            elif self.kind == "rss_process_peak":
                self.peak = max(self.peak, process_peak_rss())
            return control

        def on_train_end(self, args, state, control, **kwargs):
            if self.sampler is not None:
                self.sampler.close()
            return control

        def metrics(self) -> dict:
            if self.kind is None or not self.peak:
                return {}
            name = {
                "gpu_max_allocated": "train_step_peak_gpu_allocated_mb",
                "rss": "train_step_peak_rss_mb",
                "rss_process_peak": "train_process_peak_rss_mb",
            }[self.kind]
            out = {name: round(self.peak / MIB, 1)}
            if self.begin is not None:
                begin = "train_begin_gpu_allocated_mb" if self.kind == "gpu_max_allocated" else "train_begin_rss_mb"
                out[begin] = round(self.begin / MIB, 1)
            if self.states is not None:
                states = "train_states_gpu_allocated_mb" if self.kind == "gpu_max_allocated" else "train_states_rss_mb"
                out[states] = round(self.states / MIB, 1)
            return out

    return StepMemory()
