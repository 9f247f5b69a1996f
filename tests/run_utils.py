"""Helpers for tests that run llmtune in real subprocesses (resume, multi-process, launch)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_sentiment_rows

NO_DROPOUT = "model.config_overrides={hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}"


def write_csv(path: Path, n: int, seed: int = 0) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(make_sentiment_rows(n, seed=seed))
    return path


def finetune_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """A tiny, fully deterministic sentiment run: fp32, no dataloader workers, loss logged every step."""
    return [
        "finetune",
        "--task",
        "sentiment",
        "--model",
        str(model),
        "--dataset",
        str(data),
        "--output-dir",
        str(out),
        "--lr",
        "1e-3",
        "--seed",
        "0",
        "--set",
        "train.logging_steps=1",
        "--set",
        "data.max_length=32",
        *extra,
    ]


def env(**extra: str) -> dict:
    out = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    out.pop("LLMTUNE_FAULT", None)
    out.update(extra)
    return out


def llmtune(args: list[str], timeout: int = 300, **env_extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmtune", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(**env_extra),
    )


def torchrun(args: list[str], nproc: int = 2, timeout: int = 300, **env_extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "-m", "llmtune", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(**env_extra),
    )


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def same_weights(a: Path, b: Path, exact: bool = True, atol: float = 1e-6) -> bool:
    import torch

    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    if exact:
        return all(torch.equal(wa[k], wb[k]) for k in wa)
    return all(torch.allclose(wa[k], wb[k], atol=atol, rtol=0) for k in wa)
