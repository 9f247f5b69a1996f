"""Chunked cross-entropy (``train.loss_chunk_size``): the same loss and gradients as the plain loss
(transformers' own ``ForCausalLMLoss`` through the Trainer), with no slice of the output layer
wider than the chunk.

Three levels: the maths on bare models (GPT-2, Llama, Qwen2; padded, packed, LoRA, empty
targets), the Trainer's training step built the way a run builds it (clm, sft packed and padded,
dpo; LoRA; gradient accumulation with transformers' ``num_items_in_batch``), and whole CLI runs
whose per-step losses and metrics must match.
"""

from __future__ import annotations

import json

import pytest

CHUNK = 7  # odd: slices end mid-row and mid-sequence


def tiny(kind: str, vocab: int = 97):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    if kind == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0
        )
        return GPT2LMHeadModel(cfg).eval()  # tied head
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, num_key_value_heads=2, **sizes)).eval()
    return Qwen2ForCausalLM(
        Qwen2Config(vocab_size=vocab, num_key_value_heads=1, tie_word_embeddings=False, **sizes)
    ).eval()


def padded_batch(vocab: int = 97):
    """3 rows, right-padded, prompts masked: 8, 5 and 0 targets."""
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0  # prompt only: no target
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100  # a prompt
    return {"input_ids": ids, "attention_mask": mask}, labels


def packed_batch(vocab: int = 97):
    """llmtune's padding-free layout: examples end to end, positions restarting, no mask."""
    import torch

    from llmtune.packing import PaddingFreeCollator

    g = torch.Generator().manual_seed(2)
    examples = [{"input_ids": torch.randint(0, vocab, (n,), generator=g).tolist()} for n in (9, 4, 6, 3)]
    batch = PaddingFreeCollator(pad_id=0)(examples)
    labels = batch.pop("labels")
    assert batch["use_cache"] is False  # with a KV cache, transformers would not see the restarting positions
    return batch, labels


def grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(plain: dict, chunked: dict) -> None:
    import torch

    assert plain and plain.keys() == chunked.keys()
    for name in plain:
        torch.testing.assert_close(chunked[name], plain[name], atol=1e-5, rtol=1e-5, msg=name)


class HeadSpy:
    """Records how many positions each call of the output layer projects (forward and recompute)."""

    def __init__(self, model):
        from llmtune.tasks.common.chunked_loss import output_head

        self.rows: list[int] = []
        self.handle = output_head(model).register_forward_hook(self.record)

    def record(self, module, args, output):
        self.rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0])

    def close(self):
        self.handle.remove()


# ---- the maths on bare models ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_loss_and_gradients_equal_transformers_loss(kind, layout):
    import torch

    from llmtune.tasks.common.chunked_loss import causal_lm_nll

    model = tiny(kind)
    inputs, labels = padded_batch() if layout == "padded" else packed_batch()
    # the plain loss: the model's own (mean over targets), and normalised by a larger item count as
    # the Trainer does under gradient accumulation
    for items in (None, torch.tensor(50)):
        model.zero_grad()
        extra = {} if items is None else {"num_items_in_batch": items}
        plain = model(**inputs, labels=labels, **extra).loss
        plain.backward()
        expected = grads(model)
        model.zero_grad()
        spy = HeadSpy(model)
        total, count = causal_lm_nll(model, inputs, labels, CHUNK)
        loss = total / (count if items is None else items)
        loss.backward()
        spy.close()
        assert count == (labels[:, 1:] != -100).sum()
        torch.testing.assert_close(loss, plain, atol=1e-6, rtol=1e-6)
        assert_same_grads(expected, grads(model))
        # forward: the empty projection, then slices; backward: each slice recomputed
        slices = -(-int(count) // CHUNK)
        assert spy.rows[0] == 0 and max(spy.rows) == CHUNK and len(spy.rows) == 1 + 2 * slices


def test_with_gradient_checkpointing_of_the_model():
    from llmtune.tasks.common.chunked_loss import causal_lm_nll

    model = tiny("llama")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()  # checkpointing is active in training mode (Llama has no dropout by default)
    inputs, labels = padded_batch()
    model(**inputs, labels=labels).loss.backward()
    expected = grads(model)
    model.zero_grad()
    total, count = causal_lm_nll(model, inputs, labels, CHUNK)
    (total / count).backward()
    assert_same_grads(expected, grads(model))


def test_lora_gradients_equal(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from llmtune.tasks.common.chunked_loss import causal_lm_nll

    model = get_peft_model(tiny("llama"), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():  # non-zero B matrices: every adapter gets a gradient
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    inputs, labels = padded_batch()
    model(**inputs, labels=labels).loss.backward()
    expected = grads(model)
    model.zero_grad()
    total, count = causal_lm_nll(model, inputs, labels, CHUNK)
    (total / count).backward()
    assert all("lora_" in n for n in expected) and len(expected) == 2 * 7 * 2  # A and B, 7 linears, 2 layers
    assert_same_grads(expected, grads(model))


def test_sequence_logps_equal_the_row_by_row_scores():
    import torch

    from llmtune.tasks.dpo.loss import sequence_logps

    model = tiny("llama")
    inputs, labels = padded_batch()
    batch = {**inputs, "labels": labels}
    plain, counts = sequence_logps(model, batch)
    plain.sum().backward()
    expected = grads(model)
    model.zero_grad()
    chunked, chunked_counts = sequence_logps(model, batch, chunk_size=CHUNK)
    chunked.sum().backward()
    assert chunked_counts.tolist() == counts.tolist() == [8, 5, 0]
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=1e-6)
    assert chunked[2] == 0  # a row without answer tokens scores 0
    assert_same_grads(expected, grads(model))


def test_a_batch_without_targets_keeps_the_head_in_the_graph():
    import torch

    from llmtune.tasks.common.chunked_loss import causal_lm_nll

    model = tiny("llama")
    inputs, labels = padded_batch()
    labels = torch.full_like(labels, -100)
    total, count = causal_lm_nll(model, inputs, labels, CHUNK)
    (total / 10).backward()  # as with num_items_in_batch from other micro-batches: no error, zero grads
    assert count == 0 and total == 0
    assert all(float(g.abs().max()) == 0 for g in grads(model).values())
    assert model.lm_head.weight.grad is not None


def test_models_whose_logits_are_not_the_head_are_refused():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from llmtune.errors import LlmtuneError
    from llmtune.tasks.common.chunked_loss import check_model

    check_model(tiny("gpt2"))  # exact: no error
    config = Gemma2Config(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, final_logit_softcapping=0.5,
    )  # fmt: skip
    with pytest.raises(LlmtuneError, match=r"train.loss_chunk_size: Gemma2ForCausalLM's logits .* soft-caps") as err:
        check_model(Gemma2ForCausalLM(config))
    assert "\n" not in str(err.value)


# ---- the Trainer's training step, built as a run builds it -------------------------------------------


def build_trainer(tmp_path, recipe: str | None, sets: list[str], task: str | None = None):
    from transformers import set_seed

    from llmtune import hardware
    from llmtune.adapters import apply_adapters
    from llmtune.resolve import load_config
    from llmtune.tasks import get_task
    from llmtune.tasks.base import RunContext
    from llmtune.trainer import build_trainer

    sets = [*sets, "train.report_to=[none]", "train.progress=quiet", f"train.output_dir={tmp_path / 'out'}"]
    cfg = load_config(recipe=recipe, task=task, sets=sets)
    set_seed(0)
    task_ = get_task(cfg.task)
    ctx = RunContext(cfg=cfg, training=True, model_path=cfg.model.name_or_path)
    ctx.state["performance"] = hardware.preflight(cfg)
    ctx.tokenizer = task_.load_tokenizer(ctx)
    processed = task_.prepare(ctx, task_.load_data(ctx))
    ctx.model = task_.build_model(ctx)
    task_.check_model(ctx, ctx.model)
    task_.finalize_model(ctx, ctx.model)
    ctx.model = apply_adapters(ctx, ctx.model, task_)
    trainer = build_trainer(ctx, task_, tmp_path / "out", processed, "validation" in processed)
    assert trainer.loss_chunk_size == cfg.train.loss_chunk_size
    return trainer


def step_grads(trainer, batches, items, chunk):
    """Per-micro-batch losses and the accumulated gradients of one optimizer step."""
    import torch

    trainer.loss_chunk_size = chunk
    model = trainer.model
    model.zero_grad(set_to_none=True)
    spy = HeadSpy(model)
    torch.manual_seed(0)  # the same dropout masks for both
    losses = [float(trainer.training_step(model, dict(b), items)) for b in batches]
    spy.close()
    return losses, grads(model), spy.rows


CASES = {
    "clm blocks": ("clm-smoke", ["train.batch_size=4"]),
    "clm documents": ("clm-smoke", ["train.batch_size=4", "options.packing=documents"]),
    "sft packed": ("sft-smoke", ["train.batch_size=4"]),
    "sft padded": ("sft-smoke", ["train.batch_size=4", "options.packing=false"]),
    "dpo": ("dpo-smoke", ["train.batch_size=2"]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("accumulation", [1, 2])
def test_training_step_equals_the_plain_loss(case, accumulation, tmp_path):
    recipe, sets = CASES[case]
    sets = [*sets, f"train.gradient_accumulation_steps={accumulation}", f"train.loss_chunk_size={CHUNK}"]
    check_training_step(build_trainer(tmp_path, recipe, sets), accumulation)


@pytest.mark.parametrize("task", ["sft", "dpo"])
def test_training_step_with_lora_equals_the_plain_loss(task, tiny_llama_dir, tmp_path):
    data = {"sft": "builtin:sft_demo", "dpo": "builtin:dpo_demo"}[task]
    sets = [
        f"model.name_or_path={tiny_llama_dir}", f"data.dataset={data}", "data.max_length=128", "data.validation_split=0",
        "train.batch_size=2", "train.gradient_accumulation_steps=2", "peft.method=lora", "peft.r=4",
        f"train.loss_chunk_size={CHUNK}",
    ]  # fmt: skip
    trainer = build_trainer(tmp_path, None, sets, task=task)
    import torch

    for name, p in trainer.model.named_parameters():  # non-zero B: every adapter gets a gradient
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    expected = check_training_step(trainer, 2)
    assert expected and all("lora_" in n for n in expected)


def check_training_step(trainer, accumulation: int) -> dict:
    import torch

    batches, items = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), accumulation, trainer.args.device)
    assert len(batches) == accumulation
    trainer.current_gradient_accumulation_steps = accumulation
    # clm/sft: transformers divides the loss by the step's item count (dpo: a mean over pairs)
    assert (items is not None) == trainer.model_accepts_loss_kwargs == (not hasattr(trainer, "dpo_options"))
    plain_losses, expected, plain_rows = step_grads(trainer, batches, items, None)
    losses, got, rows = step_grads(trainer, batches, items, CHUNK)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses), atol=1e-5, rtol=1e-5)
    assert_same_grads(expected, got)
    assert max(plain_rows) > 4 * CHUNK  # the plain loss projects whole batches ...
    assert max(rows) == CHUNK and 0 in rows  # ... the chunked one never more than a slice
    return expected


def test_dpo_evaluation_is_unchanged(tmp_path):
    import torch

    trainer = build_trainer(tmp_path, "dpo-smoke", ["train.batch_size=4", f"train.loss_chunk_size={CHUNK}"])
    chunked = trainer.evaluate()
    trainer.loss_chunk_size = None
    plain = trainer.evaluate()
    keys = [k for k in plain if not k.endswith(("runtime", "per_second"))]
    assert "eval_reward_margin" in keys and "eval_chosen_logps" in keys
    torch.testing.assert_close(
        torch.tensor([chunked[k] for k in keys]), torch.tensor([plain[k] for k in keys]), atol=1e-5, rtol=1e-5
    )


# ---- whole runs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command,recipe,extra",
    [("pretrain", "clm-smoke", []), ("finetune", "sft-smoke", ["--set", "options.num_samples=0"])],
)
def test_cli_run_gives_the_same_losses_and_metrics(command, recipe, extra, cli, tmp_path):
    import yaml

    from tests.run_utils import losses

    def run(out, *more):
        result = cli(
            command, "--recipe", recipe, "--max-steps", "4", "-o", out, "--set", "train.logging_steps=1",
            "--set", "train.report_to=[none]", *extra, *more,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return losses(out), json.loads((out / "metrics.json").read_text())["eval"]

    plain_losses, plain_eval = run(tmp_path / "plain")
    chunked_losses, chunked_eval = run(tmp_path / "chunked", "--set", "train.loss_chunk_size=16")
    assert len(plain_losses) == 4
    assert chunked_losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-6)
    assert chunked_eval["eval_loss"] == pytest.approx(plain_eval["eval_loss"], rel=1e-5)
    assert chunked_eval["eval_perplexity"] == pytest.approx(plain_eval["eval_perplexity"], rel=1e-5)
    saved = yaml.safe_load((tmp_path / "chunked" / "llmtune_config.yaml").read_text())
    assert saved["train"]["loss_chunk_size"] == 16


@pytest.mark.parametrize(
    "args,needle",
    [
        (["finetune", "--recipe", "sentiment-demo"], "train.loss_chunk_size applies to causal language-model losses"),
        (["pretrain", "--recipe", "mlm-smoke"], "task mlm has none"),
        (
            ["pretrain", "--recipe", "clm-smoke", "--set", "train.liger_kernel=true"],
            "Liger's fused linear cross-entropy",
        ),
    ],
)
def test_refused_where_it_cannot_apply(args, needle, cli):
    result = cli(*args, "--set", "train.loss_chunk_size=16", "--dry-run")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output
    assert "drop train.loss_chunk_size" in lines[0]


def test_bounds(cli):
    result = cli("pretrain", "--recipe", "clm-smoke", "--set", "train.loss_chunk_size=0", "--dry-run")
    assert result.exit_code == 2 and "train.loss_chunk_size must be >= 1, got 0" in result.output


@pytest.mark.slow
def test_two_processes_give_the_same_run(tmp_path):
    """DDP: the chunked loss runs the wrapped model's forward, so gradients are averaged across
    processes as with the plain loss (a rank-local gradient would drift apart within steps)."""
    from tests.run_utils import llmtune, losses, same_weights

    common = ["pretrain", "--recipe", "clm-smoke", "--max-steps", "4", "--batch-size", "4", "--num-processes", "2"]
    common += ["--set", "train.logging_steps=1", "--set", "train.report_to=[none]"]
    plain, chunked = tmp_path / "plain", tmp_path / "chunked"
    result = llmtune([*common, "-o", str(plain)])
    assert result.returncode == 0, result.stderr
    result = llmtune([*common, "-o", str(chunked), "--set", "train.loss_chunk_size=16"])
    assert result.returncode == 0, result.stderr
    assert len(losses(plain)) == 4
    assert losses(chunked) == pytest.approx(losses(plain), rel=1e-5, abs=1e-6)
    assert same_weights(chunked, plain, exact=False, atol=1e-5)
