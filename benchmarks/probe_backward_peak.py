"""Probe: peak resident memory of a bare forward + backward (no Trainer, no optimizer) of a model folder.

Used by issue 21's investigation to compare a plain torch step with what ``llmtune estimate
--measure`` measures inside a run. Prints, per iteration, the forward peak, the resident memory
after the forward pass, the backward peak (all over the resident memory before the step, weights
already read) and the gradients' size; gradients are freed after each step (set to None), as the
Trainer's zero_grad does. Run with glibc's mmap threshold low so resident memory follows tensors:

    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/probe_backward_peak.py MODEL_DIR 2048
"""

from __future__ import annotations

import gc
import sys
import threading
import time


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def main() -> int:
    import torch
    from transformers import AutoModelForCausalLM

    folder, seq = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.train()
    for p in model.parameters():  # weights are mapped from the file: read them before measuring
        p.data.view(-1)[::1024].sum()
    ids = torch.randint(5, model.config.vocab_size - 1, (1, seq))
    peak, stop = [0], [False]

    def sample() -> None:
        while not stop[0]:
            peak[0] = max(peak[0], rss())
            time.sleep(0.003)

    threading.Thread(target=sample, daemon=True).start()
    mib = 2**20
    for i in range(2):
        before = rss()
        peak[0] = 0
        loss = model(input_ids=ids, labels=ids).loss
        forward, after = peak[0], rss()
        peak[0] = 0
        loss.backward()
        del loss
        backward = peak[0]
        grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
        for p in model.parameters():
            p.grad = None
        gc.collect()
        print(
            f"seq {seq} step {i}: forward peak +{(forward - before) / mib:.0f} MiB, after forward "
            f"+{(after - before) / mib:.0f}, backward peak +{(backward - before) / mib:.0f}, gradients {grads / mib:.0f}"
        )
    stop[0] = True
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
