"""grpo and reward through real subprocesses: exact resume after SIGKILL, and 2-process parity
(grpo: the same sampled completions, rewards and losses; reward: the same losses and metrics)."""

from __future__ import annotations

import json
import signal

import pytest

from tests.run_utils import llmtune, losses, same_weights, weights
from tests.test_dpo import make_preference_rows, write_jsonl
from tests.test_grpo import make_sum_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl-runs")
    write_jsonl(root / "sums" / "train.jsonl", make_sum_rows(16, 1))
    write_jsonl(root / "sums" / "validation.jsonl", make_sum_rows(5, 2))
    write_jsonl(root / "pairs.jsonl", make_preference_rows(32, seed=5, form="messages"))
    return root


def grpo_args(model, data, out, *extra: str) -> list[str]:
    return [
        "finetune", "--task", "grpo", "--model", str(model), "--dataset", str(data), "--output-dir", str(out),
        "--lr", "1e-3", "--seed", "0", "--epochs", "2", "--grad-accum", "1", "--set", "train.warmup_ratio=0",
        "--set", "train.logging_steps=1", "--set", "data.max_length=64", "--set", "options.max_completion_length=10",
        "--set", "options.num_generations=4", "--set", "options.rewards=[math_answer,length]",
        "--set", "options.length_range=[1,4]", *extra,
    ]  # fmt: skip


def logs(out):
    return [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]


def test_grpo_resume_after_sigkill_is_exact(tiny_llama_dir, data, tmp_path):
    # 16 prompts, batch 4: 4 steps per epoch, 8 in all; a checkpoint every 3 steps
    sched = ("--batch-size", "4", "--set", "train.eval_strategy=no", "--set", "train.eval_steps=3")
    sched += ("--set", "data.validation_split=0")
    train = data / "sums" / "train.jsonl"
    ref = tmp_path / "ref"
    assert llmtune(grpo_args(tiny_llama_dir, train, ref, *sched)).returncode == 0
    out = tmp_path / "run"
    killed = llmtune(grpo_args(tiny_llama_dir, train, out, *sched), LLMTUNE_FAULT="step:5")
    assert killed.returncode == -signal.SIGKILL
    done = llmtune(grpo_args(tiny_llama_dir, train, out, *sched, "--resume", "auto"))
    assert done.returncode == 0, done.stderr
    assert f"resuming from {out / 'checkpoint-3'}" in done.stdout
    assert len(losses(ref)) == 8 and losses(out) == losses(ref)
    rewards = [[r["reward"] for r in logs(d) if "reward" in r] for d in (out, ref)]
    assert rewards[0] == rewards[1]  # the same completions were sampled again
    assert same_weights(out, ref, exact=True)


def test_grpo_two_processes_match_one(tiny_llama_dir, data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    result = llmtune(grpo_args(tiny_llama_dir, data / "sums", one, "--batch-size", "4"))
    assert result.returncode == 0, result.stderr
    result = llmtune(grpo_args(tiny_llama_dir, data / "sums", two, "--batch-size", "2", "--num-processes", "2"))
    assert result.returncode == 0, result.stderr
    a, b = (logs(d) for d in (one, two))
    steps = [[r for r in log if "reward" in r] for log in (a, b)]
    assert len(steps[0]) == len(steps[1]) == 8
    for x, y in zip(*steps, strict=True):
        # each process samples the groups of its own prompts, seeded by row and step: the same completions
        assert x["reward"] == y["reward"] and x["completion_length"] == y["completion_length"], (x, y)
        assert abs(x["loss"] - y["loss"]) < 1e-5 and abs(x["kl"] - y["kl"]) < 1e-5
    wa, wb = weights(one), weights(two)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    m1, m2 = (json.loads((d / "metrics.json").read_text())["eval"] for d in (one, two))
    assert m1["eval_prompts"] == m2["eval_prompts"] == 5
    assert m1["eval_reward"] == pytest.approx(m2["eval_reward"], abs=1e-6)
    rows = [json.loads(line)["row"] for line in (two / "predictions.jsonl").read_text().splitlines()]
    assert rows == list(range(5))


def reward_args(model, data, out, *extra: str) -> list[str]:
    return [
        "finetune", "--task", "reward", "--model", str(model), "--dataset", str(data), "--output-dir", str(out),
        "--lr", "1e-3", "--seed", "0", "--epochs", "2", "--set", "train.warmup_ratio=0", "--set", "train.logging_steps=1",
        "--set", "data.max_length=64", "--set", "train.eval_batch_size=2", *extra,
    ]  # fmt: skip


def test_reward_resume_and_two_processes(tiny_llama_dir, data, tmp_path):
    sched = ("--batch-size", "8", "--set", "train.eval_strategy=no", "--set", "train.eval_steps=3")
    sched += ("--set", "data.validation_split=0")
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert llmtune(reward_args(tiny_llama_dir, data / "pairs.jsonl", ref, *sched)).returncode == 0
    killed = llmtune(reward_args(tiny_llama_dir, data / "pairs.jsonl", out, *sched), LLMTUNE_FAULT="step:5")
    assert killed.returncode == -signal.SIGKILL
    done = llmtune(reward_args(tiny_llama_dir, data / "pairs.jsonl", out, *sched, "--resume", "auto"))
    assert done.returncode == 0, done.stderr
    assert len(losses(ref)) == 8 and losses(out) == losses(ref)
    assert same_weights(out, ref, exact=True)
    # 2 processes x batch 4 == 1 process x batch 8
    two = tmp_path / "two"
    result = llmtune(
        reward_args(tiny_llama_dir, data / "pairs.jsonl", two, "--batch-size", "4", "--num-processes", "2", *sched[2:])
    )
    assert result.returncode == 0, result.stderr
    a, b = losses(ref), losses(two)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5, (a, b)
    accuracy = [[r["accuracy"] for r in logs(d) if "accuracy" in r] for d in (ref, two)]
    assert accuracy[0] == accuracy[1]
