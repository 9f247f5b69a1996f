"""llmtune.costmodel: memory by precision and sharding, FLOPs and the compute-optimal budget."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from llmtune.costmodel import Arch, Params, Setup, budget_optimal, get_gpu, memory, training_flops


def test_memory_arithmetic_by_precision_and_sharding():
    arch = Arch("llama", 4, 256, 4, 2, 64, 688, 32000, gated_mlp=True, rms_norm=True)
    p = Params(total=1_000_000, trainable=1_000_000, embedding=0, largest_block=100_000)
    fp32 = memory(arch, p, Setup(precision="fp32"))
    assert (fp32.weights, fp32.gradients, fp32.optimizer) == (4e6, 4e6, 8e6)
    pure = memory(arch, p, Setup(precision="pure-bf16"))
    assert (pure.weights, pure.gradients, pure.optimizer) == (2e6, 2e6, 4e6)
    ddp = memory(arch, p, Setup(precision="mixed", gpus=4, sharding="ddp"))
    assert ddp.buffers == ddp.gradients == 4e6  # DDP buckets
    z2 = memory(arch, p, Setup(precision="mixed", gpus=4, sharding="zero2"))
    assert (z2.weights, z2.gradients, z2.optimizer) == (4e6, 1e6, 2e6)
    z3 = memory(arch, p, Setup(precision="mixed", gpus=4, sharding="zero3"))
    assert (z3.weights, z3.gradients, z3.optimizer) == (1e6, 1e6, 2e6) and z3.buffers == 2 * 100_000 * 2
    ckpt = memory(arch, p, Setup(precision="mixed", gradient_checkpointing=True))
    assert ckpt.activations < memory(arch, p, Setup(precision="mixed")).activations
    assert memory(arch, p, Setup(batch_size=2)).activations == pytest.approx(
        2 * memory(arch, p, Setup(batch_size=1)).activations
    )


def test_flops_and_budget():
    arch = Arch("gpt2", 12, 768, 12, 12, 64, 3072, 50257)
    p = Params(total=124_000_000, trainable=124_000_000, embedding=786_432, largest_block=7_000_000)
    flops = training_flops(arch, p, 1e9, 1024)
    assert flops == pytest.approx(6 * (124_000_000 - 786_432) * 1e9 + 12 * 12 * 768 * 1024 * 1e9)
    n, d, c = budget_optimal(1000, get_gpu("h100"), 0.4)
    assert c == pytest.approx(1000 * 3600 * 989e12 * 0.4) and d == pytest.approx(20 * n)
    assert 6 * n * d == pytest.approx(c) and math.isclose(n, 3.44e9, rel_tol=0.01)


def test_chunked_loss_bounds_the_loss_head_peak():
    from llmtune.costmodel import GIB, activation_bytes, fitting_knobs, head_peak_bytes

    # a small model with a large vocabulary: the logits dominate
    arch = Arch("llama", 4, 512, 8, 8, 64, 1376, 128_256, gated_mlp=True, rms_norm=True)
    p = Params(total=80_000_000, trainable=80_000_000, embedding=65_000_000, largest_block=3_000_000)
    plain = Setup(batch_size=8, seq_len=2048, precision="mixed")
    chunked = Setup(batch_size=8, seq_len=2048, precision="mixed", loss_chunk_size=4096)
    tokens, per_token_head = 8 * 2048, head_peak_bytes(arch, plain, True)
    saved = activation_bytes(arch, plain) - activation_bytes(arch, chunked)
    extra = tokens * 2 * 512 * 4  # the projected positions' hidden states (a copy and its gradient)
    assert saved == pytest.approx(per_token_head * (tokens - 4096) - extra)
    assert saved > 10 * GIB
    # a slice as big as the batch changes nothing but the copy; no head (classification): no effect
    whole = Setup(batch_size=8, seq_len=2048, precision="mixed", loss_chunk_size=10**6)
    assert activation_bytes(arch, whole) - activation_bytes(arch, plain) == pytest.approx(extra)
    assert activation_bytes(arch, chunked, lm_head=False) == activation_bytes(arch, plain, lm_head=False)
    # suggested first when it makes the run fit, and only for causal LM losses
    budget = memory(arch, p, chunked).total * 1.01
    assert memory(arch, p, plain).total > budget
    knobs = fitting_knobs(arch, p, plain, budget, True, None, causal_lm=True)
    assert knobs[0].startswith("chunked cross-entropy (--set train.loss_chunk_size=4096)")
    assert not any("chunked" in k for k in fitting_knobs(arch, p, plain, budget, True, None, causal_lm=False))


def test_gradients_and_activations_do_not_all_coexist():
    """zero_grad frees the gradients: the backward pass creates them as it frees activations."""
    arch = Arch("llama", 4, 256, 4, 2, 64, 688, 32000, gated_mlp=True, rms_norm=True)
    # 1M trainable, 200k of them outside the blocks (embeddings, final norm)
    p = Params(total=1_000_000, trainable=1_000_000, embedding=200_000, largest_block=200_000,
               trainable_outside=200_000)  # fmt: skip
    one = memory(arch, p, Setup(precision="fp32", batch_size=4, seq_len=512))
    summed = one.weights + one.gradients + one.optimizer + one.activations
    assert one.overlap > 0 and one.total == pytest.approx(summed - one.overlap)
    # the start of the backward pass: every activation with the gradients outside the blocks
    start = one.weights + one.optimizer + one.activations + 0.2 * one.gradients
    assert one.total == pytest.approx(max(start, one.weights + one.optimizer + one.gradients), rel=0.05)
    assert one.total >= start
    # with accumulation, earlier micro-batches' gradients are there all along: no overlap
    accumulated = memory(arch, p, Setup(precision="fp32", batch_size=4, seq_len=512, accumulation=2))
    assert accumulated.overlap == 0 and accumulated.total == pytest.approx(summed)
    # a tiny batch: the activations are small, the peak is every gradient at the end of the pass
    small = memory(arch, p, Setup(precision="fp32", batch_size=1, seq_len=8))
    assert small.total >= small.weights + small.optimizer + small.gradients
    assert small.total < small.weights + small.optimizer + small.gradients + small.activations


def test_lora_dropout_keeps_a_copy_of_every_adapted_input():
    from llmtune.costmodel import activation_bytes

    arch = Arch("llama", 4, 256, 4, 2, 64, 688, 32000, gated_mlp=True, rms_norm=True)
    inputs = 4 * (6 * 256 + 688)  # q, k, v, o, gate, up take the hidden size, down the intermediate
    plain = Setup(precision="fp32", batch_size=2, seq_len=128, lora_inputs=inputs)
    dropped = Setup(precision="fp32", batch_size=2, seq_len=128, lora_inputs=inputs, lora_dropout=0.05)
    extra = activation_bytes(arch, dropped) - activation_bytes(arch, plain)
    assert extra == pytest.approx(2 * 128 * inputs * (4 + 1))  # the fp32 copy and a one-byte mask
    # with checkpointing only the recomputed block keeps them (no loss head: the block is the peak)
    ckpt_extra = activation_bytes(arch, replace(dropped, gradient_checkpointing=True), lm_head=False) - (
        activation_bytes(arch, replace(plain, gradient_checkpointing=True), lm_head=False)
    )
    assert ckpt_extra == pytest.approx(extra / 4)


def test_counts_outside_the_blocks_and_adapted_inputs():
    pytest.importorskip("torch")
    from transformers import LlamaConfig

    from llmtune.costmodel import count_parameters
    from llmtune.estimate import meta_model

    config = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=500, tie_word_embeddings=True)  # fmt: skip
    model = meta_model(config, "AutoModelForCausalLM")
    full = count_parameters(model)
    assert full.trainable_outside == 500 * 64 + 64  # the tied embedding and the final norm
    lora = count_parameters(model, 8, ["q_proj", "down_proj"])
    assert lora.lora_inputs == 3 * (64 + 176) and lora.trainable_outside == 0
