"""Exact resume after SIGKILL (mid-epoch, at an epoch boundary, during a checkpoint save, at a
random moment from outside), map-style and streaming data, and clean stops on SIGTERM.

Every run is a real ``python -m llmtune`` subprocess; kills are real SIGKILLs (``LLMTUNE_FAULT``
makes the process SIGKILL itself at an exact step or in the middle of a save). A resumed run must
end bit-identical (CPU, fp32, no dataloader workers) to an uninterrupted one: the same per-step
losses and the same weights.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.run_utils import env, finetune_args, llmtune, losses, same_weights, write_csv

pytestmark = pytest.mark.slow

# 48 rows, batch 4: 12 steps per epoch, 2 epochs; a checkpoint every 4 steps.
SCHEDULE = ("--batch-size", "4", "--epochs", "2", "--set", "data.validation_split=0")
SAVE_EVERY_4 = ("--set", "train.eval_strategy=no", "--set", "train.eval_steps=4")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("resume")
    data = write_csv(root / "train.csv", 48)
    ref = root / "reference"
    result = llmtune(finetune_args(tiny_bert_dir, data, ref, *SCHEDULE, *SAVE_EVERY_4))
    assert result.returncode == 0, result.stderr
    assert len(losses(ref)) == 24
    return root, data, ref


def run(setup, tiny_bert_dir, out, *extra, fault=None):
    _, data, _ = setup
    env_extra = {"LLMTUNE_FAULT": fault} if fault else {}
    return llmtune(finetune_args(tiny_bert_dir, data, out, *SCHEDULE, *SAVE_EVERY_4, *extra), **env_extra)


def assert_same_as_reference(setup, out):
    _, _, ref = setup
    assert losses(out) == losses(ref)  # bit-identical per-step losses, no step lost or repeated
    assert same_weights(out, ref, exact=True)


def test_sigkill_mid_epoch_then_during_save(setup, tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    step = random.Random().choice([s for s in range(5, 12) if s % 4])  # mid first epoch, not a save step
    killed = run(setup, tiny_bert_dir, out, fault=f"step:{step}")
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()
    # Resume, and die again while writing checkpoint-16 (second epoch).
    killed = run(setup, tiny_bert_dir, out, "--resume", "auto", fault="save:16")
    assert killed.returncode == -signal.SIGKILL
    assert (
        f"resuming from {out / 'checkpoint-4'}" in killed.stdout
        or f"resuming from {out / 'checkpoint-8'}" in killed.stdout
    )
    assert (out / ".partial-checkpoint-16").is_dir() and not (out / "checkpoint-16").exists()
    done = run(setup, tiny_bert_dir, out, "--resume", "auto")
    assert done.returncode == 0, done.stderr
    assert f"resuming from {out / 'checkpoint-12'}" in done.stdout
    assert not list(out.glob(".partial-*"))
    assert_same_as_reference(setup, out)


def test_sigkill_at_epoch_boundary(setup, tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    killed = run(setup, tiny_bert_dir, out, fault="step:13")  # newest checkpoint: 12 = end of epoch 1
    assert killed.returncode == -signal.SIGKILL
    done = run(setup, tiny_bert_dir, out, "--resume", "auto")
    assert done.returncode == 0, done.stderr
    assert f"resuming from {out / 'checkpoint-12'}" in done.stdout
    assert_same_as_reference(setup, out)


def test_sigkill_at_a_random_moment_from_outside(setup, tiny_bert_dir, tmp_path):
    """Kill -9 from another process at a random time after the first checkpoint exists."""
    _, data, _ = setup
    out = tmp_path / "run"
    args = finetune_args(tiny_bert_dir, data, out, *SCHEDULE, *SAVE_EVERY_4)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtune", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env()
    )
    deadline = time.time() + 120
    while not (out / "checkpoint-4").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(random.uniform(0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = run(setup, tiny_bert_dir, out, "--resume", "auto")
    assert done.returncode == 0, done.stderr
    assert_same_as_reference(setup, out)


def test_resume_path_and_fresh_start(setup, tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    keep = ("--set", "train.keep_checkpoints=true")
    # --resume auto with nothing to resume: a fresh start (identical to the reference)
    done = run(setup, tiny_bert_dir, out, "--resume", "auto", *keep)
    assert done.returncode == 0, done.stderr
    assert "starting from scratch" in done.stdout
    assert_same_as_reference(setup, out)
    # an explicit older checkpoint: retrains from step 20 and ends in the same place
    # save_total_limit=2 rotation; kept, the completed run also has a checkpoint of its last step (24)
    kept = sorted(p.name for p in out.glob("checkpoint-*"))
    assert kept == ["checkpoint-20", "checkpoint-24"]
    again = run(setup, tiny_bert_dir, out, "--resume", str(out / "checkpoint-20"))
    assert again.returncode == 0, again.stderr
    assert_same_as_reference(setup, out)
    assert not list(out.glob("*checkpoint-*"))  # this time not kept: the completed run removed them


def test_resuming_a_checkpoint_at_max_steps_trains_no_further(setup, tiny_bert_dir, tmp_path):
    # the Trainer checks max_steps only after a step: resumed at step == max_steps it trained one more
    out = tmp_path / "run"
    first = run(setup, tiny_bert_dir, out, "--max-steps", "4", "--set", "train.keep_checkpoints=true")
    assert first.returncode == 0, first.stderr
    assert (out / "checkpoint-4").is_dir() and len(losses(out)) == 4
    before = losses(out)
    again = run(setup, tiny_bert_dir, out, "--max-steps", "4", "--resume", "auto")
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout
    assert losses(out) == before  # no fifth step logged


def test_sigterm_saves_and_resumes(setup, tiny_bert_dir, tmp_path):
    _, data, _ = setup
    out = tmp_path / "run"
    args = finetune_args(tiny_bert_dir, data, out, "--batch-size", "4", "--epochs", "10", *SAVE_EVERY_4)
    args += ["--set", "data.validation_split=0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtune", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    deadline = time.time() + 120
    while not (out / "checkpoint-4").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and "--resume auto" in lines[0], stderr
    assert "Traceback" not in stderr
    saved = lines[0].split("checkpoint saved to ")[1].split(";")[0]
    assert os.path.isdir(saved) and (out / os.path.basename(saved) / "llmtune_checkpoint.json").is_file()
    stopped_at = int(saved.rsplit("-", 1)[1])
    assert len(losses(out)) == stopped_at
    done = llmtune([*args, "--resume", "auto"])
    assert done.returncode == 0, done.stderr
    assert f"resuming from {saved}" in done.stdout
    assert len(losses(out)) == 10 * 12  # every step exactly once
    # stopped, the run kept its checkpoints; completed, it keeps only its model
    assert not list(out.glob("*checkpoint-*")) and "checkpoints removed" in done.stdout


def test_streaming_resume_is_exact(tmp_path):
    """Streaming (iterable) data: the data position is replayed by skipping seen batches."""
    common = ["pretrain", "--recipe", "clm-smoke", "--max-steps", "12", "--set", "data.streaming=true"]
    common += ["--set", "train.logging_steps=1", "--set", "train.eval_strategy=no", "--set", "train.eval_steps=5"]
    ref = tmp_path / "ref"
    assert llmtune([*common, "-o", str(ref)]).returncode == 0
    out = tmp_path / "run"
    killed = llmtune([*common, "-o", str(out)], LLMTUNE_FAULT="step:8")
    assert killed.returncode == -signal.SIGKILL
    done = llmtune([*common, "-o", str(out), "--resume", "auto"])
    assert done.returncode == 0, done.stderr
    assert f"resuming from {out / 'checkpoint-5'}" in done.stdout
    assert losses(out) == losses(ref) and len(losses(ref)) == 12
    assert same_weights(out, ref, exact=True)


def test_lora_run_resumes_exactly(setup, tiny_bert_dir, tmp_path):
    """A LoRA run (adapters + task head in the Trainer checkpoint) killed mid-epoch resumes
    bit-identically: the same per-step losses, adapters and merged weights."""
    from safetensors.torch import load_file

    lora = ("--lora", "--set", "peft.r=4")
    ref = tmp_path / "ref"
    assert run(setup, tiny_bert_dir, ref, *lora).returncode == 0
    out = tmp_path / "run"
    killed = run(setup, tiny_bert_dir, out, *lora, fault="step:6")
    assert killed.returncode == -signal.SIGKILL
    assert "adapter_model.safetensors" in os.listdir(out / "checkpoint-4")  # the checkpoint holds adapters
    done = run(setup, tiny_bert_dir, out, *lora, "--resume", "auto")
    assert done.returncode == 0, done.stderr
    assert f"resuming from {out / 'checkpoint-4'}" in done.stdout
    assert losses(out) == losses(ref) and len(losses(ref)) == 24
    assert same_weights(out, ref, exact=True)  # the merged model
    a, b = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (out, ref))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
