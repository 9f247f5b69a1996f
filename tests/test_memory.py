"""Evaluation holds per-batch reductions, never a split's logits; memory measurement helpers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest


def test_rss_sampler_sees_a_transient_peak_and_leaves_the_process_peak_alone():
    import time

    from llmtune.memory import RssSampler, current_rss, process_peak_rss

    if current_rss() is None:
        pytest.skip("no /proc/self/statm here")
    before = process_peak_rss()
    sampler = RssSampler(interval=0.001)
    sampler.start()
    base = current_rss()
    block = bytearray(200 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touched: resident
    time.sleep(0.05)
    del block
    sampler.pause()
    sampler.close()
    assert sampler.peak - base > 150 * 2**20
    assert process_peak_rss() >= max(before, sampler.peak) - 2**20  # the kernel's peak is not reset


def test_nll_chunked_over_positions_equals_one_pass():
    import torch

    from llmtune.tasks.common.lm_eval import row_nll_and_count

    torch.manual_seed(0)
    logits = torch.randn(3, 17, 50)
    labels = torch.randint(0, 50, (3, 17))
    labels[1, 10:] = -100
    whole = row_nll_and_count(logits, labels, shift=True, chunk_elements=10**9)
    chunked = row_nll_and_count(logits, labels, shift=True, chunk_elements=7)  # one position at a time
    torch.testing.assert_close(whole, chunked)
    ref = torch.nn.functional.cross_entropy(logits[1, :9], labels[1, 1:10], reduction="sum")
    assert float(whole[1, 0]) == pytest.approx(float(ref), rel=1e-5) and float(whole[1, 1]) == 9


def test_lm_eval_step_returns_two_numbers_per_row(tiny_gpt2_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from llmtune.tasks.common.lm_eval import lm_eval_step

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, dtype=torch.float32).eval()
    ids = torch.randint(5, 300, (4, 24))
    mask = torch.ones_like(ids)
    mask[2, 20:] = 0
    labels = torch.where(mask == 1, ids, -100)
    with torch.no_grad():
        loss, rows, counts = lm_eval_step(shift=True)(
            model, {"input_ids": ids, "attention_mask": mask, "labels": labels}
        )
        ref = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert rows.shape == (4, 2) and counts.shape == (4, 1)  # not (4, 24, vocab)
    assert float(rows[:, 1].sum()) == 4 * 23 - 4
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)


def test_lm_eval_batch_is_sized_to_the_vocabulary():
    from llmtune.config import RunConfig
    from llmtune.tasks.common.lm_eval import EVAL_LOGITS_BUDGET, lm_eval_batch_args

    head = SimpleNamespace(out_features=49152)
    model = SimpleNamespace(get_output_embeddings=lambda: head, config=SimpleNamespace(vocab_size=49152))
    ctx = SimpleNamespace(cfg=RunConfig(), model=model, tokenizer=None, state={})
    args = lm_eval_batch_args(ctx, 1024)
    assert args == {"per_device_eval_batch_size": 2}  # SmolLM2 at block 1024: 2 x 201 MB of logits
    assert EVAL_LOGITS_BUDGET >= 2 * 1024 * 49152 * 4
    assert "train.eval_batch_size" in ctx.state["eval_batch_note"]
    head.out_features = 400  # a tiny vocabulary: the usual twice-the-training-batch
    assert lm_eval_batch_args(ctx, 1024) == {}
    ctx.cfg.train.eval_batch_size = 64  # explicit: kept
    head.out_features = 49152
    assert lm_eval_batch_args(ctx, 1024) == {}


@pytest.mark.parametrize("version_2", [False, True])
def test_qa_nbest_candidates_give_the_full_logits_answers(version_2):
    import torch

    from llmtune.tasks.qa import postprocess_predictions, window_candidates

    rng = np.random.default_rng(0)
    windows, length = 12, 40
    start, end = rng.normal(size=(windows, length)), rng.normal(size=(windows, length))
    nulls = rng.integers(0, 3, size=windows)
    contexts = ["".join(chr(97 + i % 26) for i in range(200)) for _ in range(5)]
    offsets = [[None] * 5 + [(t, t + 1) for t in range(length - 5)] for _ in range(windows)]
    example = sorted(rng.integers(0, 5, size=windows).tolist())
    common = {"n_best_size": 6, "max_answer_length": 8, "version_2": version_2}
    full = postprocess_predictions(contexts, example, offsets, start, end, null_positions=list(nulls), **common)
    # what the eval step keeps: 4k + 1 numbers per window, computed on the device
    kept = window_candidates(torch.tensor(start), torch.tensor(end), torch.tensor(nulls), 6)
    assert kept.shape == (windows, 4 * 6 + 1)
    reduced = postprocess_predictions(contexts, example, offsets, candidates=kept.numpy(), **common)
    assert [r["text"] for r in reduced] == [r["text"] for r in full]
    for a, b in zip(reduced, full, strict=True):
        assert (a["score"] is None and b["score"] is None) or a["score"] == pytest.approx(b["score"], rel=1e-6)
