"""Shared runner pieces: the length-grouped sampler and the exact classification eval loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmtune.metrics import classification_loss
from llmtune.trainer import LengthGroupedSampler, length_grouped_indices


def test_length_grouped_indices_is_a_permutation_with_homogeneous_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=1003).tolist()
    idx = length_grouped_indices(lengths, 16, 8, torch.Generator().manual_seed(0))
    assert sorted(idx) == list(range(1003))
    batches = [idx[i : i + 16] for i in range(0, len(idx), 16)]
    assert len(batches[-1]) == 1003 % 16  # the partial batch stays last
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches[:-1]])
    random_spread = np.mean(
        [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in np.array_split(np.arange(992), 62)]
    )
    assert spread < random_spread / 3  # far less padding than random batches


def test_length_grouped_order_shuffles_batches_and_is_seeded():
    lengths = list(range(1, 257))
    a = length_grouped_indices(lengths, 8, 4, torch.Generator().manual_seed(1))
    b = length_grouped_indices(lengths, 8, 4, torch.Generator().manual_seed(1))
    c = length_grouped_indices(lengths, 8, 4, torch.Generator().manual_seed(2))
    assert a == b and a != c
    firsts = [lengths[a[i]] for i in range(0, 256, 8)]
    assert firsts != sorted(firsts, reverse=True)  # batches are not served longest first


def test_sampler_reseeds_per_epoch():
    sampler = LengthGroupedSampler(list(range(1, 65)), 8, 2, seed=3)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == sorted(first)


@pytest.mark.parametrize("problem", ["single_label", "multi_label", "regression"])
def test_classification_loss_matches_torch(problem):
    torch.manual_seed(0)
    logits = torch.randn(13, 3 if problem != "regression" else 1, dtype=torch.float64)
    if problem == "single_label":
        labels = torch.randint(0, 3, (13,))
        ref = torch.nn.functional.cross_entropy(logits, labels)
    elif problem == "multi_label":
        labels = torch.randint(0, 2, (13, 3)).double()
        ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    else:
        labels = torch.randn(13, dtype=torch.float64)
        ref = torch.nn.functional.mse_loss(logits.squeeze(-1), labels)
    got = classification_loss(problem, logits.numpy(), labels.numpy())
    assert got == pytest.approx(ref.item(), abs=1e-12)


# ---- what a completed run keeps ------------------------------------------------------------------


@pytest.fixture()
def sentiment_dir(tmp_path):
    from tests.run_utils import write_csv

    folder = tmp_path / "data"
    folder.mkdir()
    write_csv(folder / "train.csv", 216)  # batch 32: 7 steps per epoch
    write_csv(folder / "validation.csv", 24, seed=1)
    return folder


def sentiment_run(cli, model, data, out, *extra):
    result = cli(
        "finetune", "--task", "sentiment", "--model", model, "--dataset", data, "-o", out, "--batch-size", "32",
        "--lr", "1e-3", "--set", "data.max_length=32", "--set", "train.report_to=[none]", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output


def optimizer_files(out) -> list:
    return [p for p in out.rglob("*") if p.name in ("optimizer.pt", "scheduler.pt") or p.name.startswith("rng_state")]


def test_a_completed_run_keeps_its_model_and_no_checkpoint(cli, tiny_bert_dir, sentiment_dir, tmp_path):
    """Evaluation every epoch and the best model loaded at the end (the demo's setup): checkpoints
    are written while it trains (the Trainer reloads the best one from them), then removed."""
    import json

    from tests.run_utils import weights

    out = tmp_path / "run"
    output = sentiment_run(cli, tiny_bert_dir, sentiment_dir, out, "--epochs", "2")
    # a checkpoint at each evaluation (every 7 steps)
    assert "checkpoints removed (checkpoint-7, checkpoint-14)" in output
    assert not list(out.glob("*checkpoint-*")) and not optimizer_files(out)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert json.loads((out / "run_status.json").read_text())["status"] == "finished"
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "eval_loss" in e] == [7, 14]
    # the saved model is the one the run reports: scoring it again gives the reported metrics
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    again = cli("eval", "--model", out, "--dataset", sentiment_dir / "validation.csv", "-o", tmp_path / "ev")
    assert again.exit_code == 0, again.output
    rescored = json.loads((tmp_path / "ev" / "metrics.json").read_text())["eval"]
    assert rescored["eval_accuracy"] == metrics["eval_accuracy"]
    assert rescored["eval_loss"] == pytest.approx(metrics["eval_loss"], abs=1e-6)
    assert weights(out)  # weights were saved


def test_keep_checkpoints_keeps_them_and_resume_extends_the_run(cli, tiny_bert_dir, sentiment_dir, tmp_path):
    import json

    out = tmp_path / "run"
    keep = ("--set", "train.keep_checkpoints=true")
    output = sentiment_run(cli, tiny_bert_dir, sentiment_dir, out, "--epochs", "1", *keep)
    assert "checkpoints removed" not in output
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-7"]
    names = {p.name for p in (out / "checkpoint-7").iterdir()}
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json", "llmtune_config.yaml"} <= names
    # extend the finished run by one epoch: it continues from its last step
    output = sentiment_run(cli, tiny_bert_dir, sentiment_dir, out, "--epochs", "2", "--resume", "auto", *keep)
    assert f"resuming from {out / 'checkpoint-7'}" in output
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert max(e["step"] for e in log) == 14 and json.loads((out / "run_status.json").read_text())["step"] == 14
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-14", "checkpoint-7"]


def test_keep_checkpoints_old_name_is_still_read(cli):
    import yaml

    result = cli("pretrain", "--recipe", "clm-smoke", "--set", "train.save_final_checkpoint=true", "--dry-run")
    assert result.exit_code == 0, result.output
    train = yaml.safe_load(result.output.split("\n#")[0])["train"]
    assert train["keep_checkpoints"] is True and "save_final_checkpoint" not in train
    result = cli(
        "pretrain", "--recipe", "clm-smoke", "--set", "train.save_final_checkpoint=true",
        "--set", "train.keep_checkpoints=false", "--dry-run",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "train.save_final_checkpoint is the old name of train.keep_checkpoints" in result.output
