"""DPO through real subprocesses: exact resume after SIGKILL, and 2-process parity (losses,
weights, evaluation metrics counting each pair once), as for full fine-tuning."""

from __future__ import annotations

import json
import signal

import pytest

from tests.run_utils import llmtune, losses, same_weights, weights
from tests.test_dpo import make_preference_rows, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo-runs")
    write_jsonl(root / "train.jsonl", make_preference_rows(32, seed=5, form="messages"))
    # 13 pairs: not a multiple of the 2 x 2 eval batch, so the last distributed batch is padded
    write_jsonl(root / "validation.jsonl", make_preference_rows(13, seed=6, form="messages"))
    return root


def dpo_args(model, data, out, *extra: str) -> list[str]:
    return [
        "finetune", "--task", "dpo", "--model", str(model), "--dataset", str(data), "--output-dir", str(out),
        "--lr", "1e-3", "--seed", "0", "--epochs", "2", "--grad-accum", "1", "--set", "train.warmup_ratio=0",
        "--set", "train.logging_steps=1", "--set", "data.max_length=64", "--set", "train.eval_batch_size=2",
        *extra,
    ]  # fmt: skip


def test_resume_after_sigkill_is_exact(tiny_llama_dir, data, tmp_path):
    # batch 8: 4 steps per epoch, 8 in all; a checkpoint every 3 steps, no evaluation
    sched = ("--batch-size", "8", "--set", "train.eval_strategy=no", "--set", "train.eval_steps=3")
    ref = tmp_path / "ref"
    data = data / "train.jsonl"
    sched += ("--set", "data.validation_split=0")
    done = llmtune(dpo_args(tiny_llama_dir, data, ref, *sched))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "run"
    killed = llmtune(dpo_args(tiny_llama_dir, data, out, *sched), LLMTUNE_FAULT="step:5")
    assert killed.returncode == -signal.SIGKILL
    done = llmtune(dpo_args(tiny_llama_dir, data, out, *sched, "--resume", "auto"))
    assert done.returncode == 0, done.stderr
    assert f"resuming from {out / 'checkpoint-3'}" in done.stdout
    assert len(losses(ref)) == 8 and losses(out) == losses(ref)  # bit-identical, no step lost or repeated
    assert same_weights(out, ref, exact=True)


def test_two_processes_match_one(tiny_llama_dir, data, tmp_path):
    import torch

    one, two = tmp_path / "one", tmp_path / "two"
    result = llmtune(dpo_args(tiny_llama_dir, data, one, "--batch-size", "8"))
    assert result.returncode == 0, result.stderr
    result = llmtune(dpo_args(tiny_llama_dir, data, two, "--batch-size", "4", "--num-processes", "2"))
    assert result.returncode == 0, result.stderr
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 8
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5, (a, b)
    # Weights: DPO's gradient is a difference of two nearly equal terms (chosen minus rejected), so a
    # parameter with a near-zero gradient can carry float noise from the different reduction order,
    # which Adam's normalisation turns into an lr-sized step: a few elements may differ by ~lr * 1e-2.
    wa, wb = weights(one), weights(two)
    diffs = torch.cat([(wa[k] - wb[k]).abs().flatten() for k in wa])
    assert diffs.max() < 1e-4 and (diffs > 1e-5).float().mean() < 1e-3, (diffs.max(), (diffs > 1e-5).sum())
    # training-log reward metrics are summed over both processes
    logs = [[json.loads(line) for line in (d / "training_log.jsonl").read_text().splitlines()] for d in (one, two)]
    for x, y in zip(*[[r for r in log if "reward_margin" in r] for log in logs], strict=True):
        assert x["reward_accuracy"] == y["reward_accuracy"] and abs(x["reward_margin"] - y["reward_margin"]) < 1e-3
    # evaluation saw each of the 13 pairs exactly once, in order, with the same metrics
    m1, m2 = (json.loads((d / "metrics.json").read_text())["eval"] for d in (one, two))
    assert m1["eval_pairs"] == m2["eval_pairs"] == 13
    for key in ("eval_loss", "eval_reward_accuracy", "eval_reward_margin", "eval_chosen_logps"):
        assert abs(m1[key] - m2[key]) < 1e-5, key
    rows = [json.loads(line)["row"] for line in (two / "predictions.jsonl").read_text().splitlines()]
    assert rows == list(range(13))
