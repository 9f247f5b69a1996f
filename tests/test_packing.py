"""Padding-free batches (llmtune.packing): every document's loss in a packed batch equals its loss alone."""

from __future__ import annotations

import itertools

import pytest

from llmtune.packing import PaddingFreeCollator, first_fit_rows, layout_for


def test_first_fit_rows_fills_rows_and_keeps_every_index():
    lengths = [7, 3, 5, 2, 9, 1]
    rows = first_fit_rows(lengths, capacity=10)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 3  # 27 tokens need at least 3 rows of 10


def test_collator_positions_restart_and_labels_skip_each_start():
    feats = [{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}, {"input_ids": [1, 2, 3, 4]}]
    batch = PaddingFreeCollator(pad_id=0, row_length=6)(feats)
    assert "attention_mask" not in batch and batch["use_cache"] is False
    assert batch["input_ids"].shape == (2, 6)
    # row 0: the 4-token doc then the 2-token doc; row 1: the 3-token doc then a 3-token padding tail
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 2, 3, 4, -100, 9], [-100, 6, 7, -100, -100, -100]]
    # by default rows are as wide as the longest example: never more attention per row than padding
    narrow = PaddingFreeCollator(pad_id=0)(feats)
    assert narrow["input_ids"].shape == (3, 4)
    assert narrow["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 0, 1]]
    flat = PaddingFreeCollator(pad_id=0, row_length=6, layout="flat")(feats)
    assert flat["input_ids"].shape == (1, 9)
    assert flat["cu_seq_lens_q"].tolist() == [0, 3, 5, 9] and flat["max_length_q"] == 4
    assert layout_for("flash_attention_2") == "flat" and layout_for("sdpa") == layout_for(None) == "rows"


def _tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("layout", ["rows", "flat"])
def test_each_document_loss_in_a_packed_batch_equals_its_loss_alone(attn, layout):
    import torch

    model = _tiny_llama()
    model.set_attn_implementation(attn)
    generator = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, 97, (n,), generator=generator).tolist() for n in (23, 7, 15, 31, 4, 11)]
    batch = PaddingFreeCollator(pad_id=0, row_length=40, layout=layout)([{"input_ids": d} for d in docs])
    assert batch["input_ids"].shape[0] == (1 if layout == "flat" else 3)

    def doc_losses(logits, labels, positions):
        """Per-document summed NLL, documents found from restarting positions (the padding tail skipped)."""
        nll = torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="none")
        starts = [*(positions == 0).nonzero().flatten().tolist(), len(positions)]
        out = {}
        for a, b in itertools.pairwise(starts):
            if (labels[a:b] != -100).any():
                out[tuple(labels[a + 1 : b].tolist())] = nll[a : b - 1].sum()
        return out

    with torch.no_grad():
        out = model(**batch)
        packed = {}
        for r in range(batch["input_ids"].shape[0]):
            packed.update(doc_losses(out.logits[r], batch["labels"][r], batch["position_ids"][r]))
        alone = {}
        for d in docs:
            logits = model(torch.tensor([d])).logits[0]
            alone[tuple(d[1:])] = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(d[1:]), reduction="sum")
        # the check can fail: without restarting positions the documents attend to each other
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits
    assert packed.keys() == alone.keys()
    for key, value in alone.items():
        assert abs(float(packed[key]) - float(value)) <= 1e-5 * max(1.0, abs(float(value)))
    leaky_losses = {}
    for r in range(batch["input_ids"].shape[0]):
        leaky_losses.update(doc_losses(leaky[r], batch["labels"][r], batch["position_ids"][r]))
    assert any(abs(float(leaky_losses[k]) - float(v)) > 1e-3 for k, v in alone.items())
    # the model's own (token-mean) loss equals the token-weighted mean of the separate ones
    tokens = sum(len(d) - 1 for d in docs)
    assert abs(float(out.loss) - float(sum(alone.values())) / tokens) < 1e-5


def test_probe_refuses_a_model_that_ignores_restarting_positions():
    from llmtune.errors import LlmtuneError
    from llmtune.packing import probe_document_attention

    model = _tiny_llama()
    probe_document_attention(model, "options.packing")  # llama keeps documents apart: no error

    class Leaky(torch_module()):
        """A model whose forward drops position_ids (so documents attend to each other)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def forward(self, input_ids=None, position_ids=None, use_cache=None):
            return self.inner(input_ids=input_ids, use_cache=False)

    with pytest.raises(LlmtuneError, match="attend to each other"):
        probe_document_attention(Leaky(model), "options.packing")


def torch_module():
    import torch

    return torch.nn.Module


def test_multi_process_eval_uses_padded_batches(monkeypatch, tmp_path):
    """gather_for_metrics trims by example count: packed eval rows would be miscounted on several
    processes, so the eval loop then gets the task's padded collator (training stays packed)."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from llmtune import packing
    from llmtune.resolve import load_config
    from llmtune.tasks import get_task
    from llmtune.tasks.base import RunContext
    from llmtune.tasks.lm.collator import LMCollator
    from llmtune.trainer import llmtune_trainer

    cfg = load_config(task="clm", sets=["options.packing=documents", "options.block_size=32"], validate=False)
    task = get_task("clm")

    class Tok:
        pad_token_id, eos_token_id = 0, 1

    ctx = RunContext(cfg=cfg, tokenizer=Tok())
    assert task.eval_collator(ctx) is None  # one process: eval is packed too
    monkeypatch.setattr(packing, "multi_process", lambda: True)
    eval_collator = task.eval_collator(ctx)
    assert isinstance(eval_collator, LMCollator)
    data = Dataset.from_dict({"input_ids": [[5, 6, 7], [8, 9]]})
    args = TrainingArguments(
        str(tmp_path), per_device_train_batch_size=2, report_to="none", remove_unused_columns=False
    )
    trainer = llmtune_trainer(Trainer)(
        model=_tiny_llama(), args=args, train_dataset=data, eval_dataset=data, data_collator=task.collator(ctx)
    )
    trainer.eval_data_collator = eval_collator
    assert "position_ids" in next(iter(trainer.get_train_dataloader()))
    eval_batch = next(iter(trainer.get_eval_dataloader()))
    assert "attention_mask" in eval_batch and eval_batch["input_ids"].shape == (2, 3)
    assert isinstance(trainer.data_collator, packing.PaddingFreeCollator)  # restored after building
