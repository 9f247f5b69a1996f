"""Shared runner pieces: the length-grouped sampler and the exact classification eval loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmtune.metrics import classification_loss
from llmtune.trainer import LengthGroupedSampler, length_grouped_indices, longest_batches_first


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


def test_longest_batches_first_moves_only_the_longest_batches():
    # packed blocks: all full (8) but two partial ones (3, 5), as clm packing leaves them
    lengths = [8] * 10 + [3, 5]
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0)).tolist()
    moved = longest_batches_first(order, lengths, 2, 3)
    assert sorted(moved) == list(range(12))
    assert all(lengths[i] == 8 for i in moved[:6])  # the first three batches hold no partial block
    batches = [order[k : k + 2] for k in range(0, 12, 2)]
    rest = [b for b in batches if b not in [moved[k : k + 2] for k in range(0, 6, 2)]]
    assert [moved[k : k + 2] for k in range(6, 12, 2)] == rest  # the others keep their order
    # longest first; the partial batch (an odd count) stays last
    assert longest_batches_first([0, 1, 2, 3, 4], [1, 2, 9, 4, 7], 2, 1) == [2, 3, 0, 1, 4]


def test_sampler_longest_first_applies_to_the_first_epoch_only():
    lengths = [4] * 30 + [1] * 34  # many short rows: a plain shuffle starts with some of them
    plain = LengthGroupedSampler(lengths, 4, 0, seed=0)
    assert any(lengths[i] == 1 for i in list(plain)[:8])
    sampler = LengthGroupedSampler(lengths, 4, 0, seed=0, longest_first=2)
    first = list(sampler)
    assert sorted(first) == list(range(64))
    sums = sorted((sum(lengths[i] for i in list(plain)[k : k + 4]) for k in range(0, 64, 4)), reverse=True)
    assert sum(lengths[i] for i in first[:8]) == sums[0] + sums[1] > sum(lengths[i] for i in list(plain)[:8])
    sampler.set_epoch(1)
    assert list(sampler) == list(LengthGroupedSampler(lengths, 4, 0, seed=1))  # epoch 1: plain order


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


# ---- DDP's find_unused_parameters (llmtune.trainer.settle_find_unused_parameters) -------------


def _gpt2(cross_attention: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2, add_cross_attention=cross_attention
    )
    return GPT2LMHeadModel(config)


def _trainer(model, tmp_path, cls=None):
    import datasets
    from transformers import Trainer, TrainingArguments

    rows = [
        {"input_ids": [i % 50 for i in range(s, s + 8)], "labels": [i % 50 for i in range(s, s + 8)]} for s in range(4)
    ]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, report_to="none", use_cpu=True)
    return (cls or Trainer)(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows))


def test_probe_finds_parameters_without_gradient(tmp_path):
    import random

    from llmtune.trainer import parameters_without_gradient

    trainer = _trainer(_gpt2(cross_attention=True), tmp_path)
    model = trainer.model
    model.eval()
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    missing = parameters_without_gradient(trainer)
    assert missing and all("crossattention" in name or "ln_cross_attn" in name for name in missing)
    assert len(missing) == 8  # c_attn, q_attn, c_proj and ln_cross_attn: weights and biases, one layer
    # The run is unchanged: RNGs, gradients and the model's mode as they were.
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert all(p.grad is None for p in model.parameters()) and not model.training
    # Frozen parameters are no concern of DDP's: freezing the unused layers leaves nothing to find.
    for name, p in model.named_parameters():
        if name in missing:
            p.requires_grad_(False)
    assert parameters_without_gradient(trainer) == []
    assert parameters_without_gradient(_trainer(_gpt2(cross_attention=False), tmp_path)) == []


def test_probe_leaves_the_trainer_as_it_was(tmp_path):
    """Losses with side effects (DPO sums its rewards for the next log line) do not keep the probe's."""
    from transformers import Trainer

    from llmtune.trainer import parameters_without_gradient

    class Counting(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            self.sums = getattr(self, "sums", 0) + 1
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = _trainer(_gpt2(cross_attention=False), tmp_path, cls=Counting)
    assert parameters_without_gradient(trainer) == []
    assert not hasattr(trainer, "sums")


def test_stochastic_structure():
    from transformers import MixtralConfig, Wav2Vec2Config, Wav2Vec2ForCTC

    from llmtune.trainer import stochastic_structure

    tiny = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8,),
                conv_stride=(5,), conv_kernel=(10,), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)  # fmt: skip
    assert "layerdrop=0.1" in stochastic_structure(Wav2Vec2ForCTC(Wav2Vec2Config(layerdrop=0.1, **tiny)))
    assert stochastic_structure(Wav2Vec2ForCTC(Wav2Vec2Config(layerdrop=0.0, **tiny))) is None
    moe = type("M", (), {"config": MixtralConfig(num_local_experts=4)})()
    assert "4 experts" in stochastic_structure(moe)
    assert stochastic_structure(_gpt2(cross_attention=False)) is None


def test_ddp_reduction_error_names_the_parameters():
    from types import SimpleNamespace

    from llmtune.trainer import unused_parameters_message

    model = _gpt2(cross_attention=True)
    trainer = SimpleNamespace(model=model, accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    text = (
        "Expected to have finished reduction in the prior iteration before starting a new one. This error indicates "
        "that your module has parameters that were not used in producing loss. ...\n"
        "Parameter indices which did not receive grad for rank 1: 10 11 12\n In addition, you can set ..."
    )
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    message = unused_parameters_message(trainer, text)
    assert message is not None and f"(e.g. {names[10]}, {names[11]}, {names[12]})" in message
    assert "crossattention" in names[10]
    assert message.endswith("set --set train.ddp_find_unused_parameters=true")
    assert unused_parameters_message(trainer, "CUDA out of memory") is None
