"""Packing, masking, streaming and perplexity pieces of the clm/mlm tasks (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import lm_corpus_lines


@pytest.fixture(scope="module")
def bpe(tiny_bpe_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bpe_dir)


@pytest.fixture(scope="module")
def wordpiece(tiny_wordpiece_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_wordpiece_dir)


def _dataset(lines):
    from datasets import Dataset

    return Dataset.from_dict({"text": lines})


def test_clm_packing_loses_and_duplicates_nothing(bpe):
    from llmtune.tasks.lm.data import pack_dataset

    lines = lm_corpus_lines(120)
    # batch_size 50: several map batches, each with its own partial last block
    packed = pack_dataset(_dataset(lines), bpe, "clm", block_size=32, text_column="text", batch_size=50)
    blocks = packed["input_ids"]
    expected = []
    for line in lines:
        expected += bpe(line)["input_ids"] + [bpe.eos_token_id]
    assert [t for b in blocks for t in b] == expected  # exact stream: nothing lost, nothing repeated
    assert all(2 <= len(b) <= 32 for b in blocks)
    assert sum(len(b) < 32 for b in blocks) <= 3  # at most one partial block per map batch (124 rows / 50)
    # document boundaries: EOS exactly once per document, right after its last token
    assert expected.count(bpe.eos_token_id) == len(lines)
    assert packed.column_names == ["input_ids", "special_tokens_mask"]
    assert all(
        m == [int(t == bpe.eos_token_id) for t in b]
        for b, m in zip(blocks, packed["special_tokens_mask"], strict=False)
    )


def test_mlm_packing_frames_every_block(wordpiece):
    from llmtune.tasks.lm.data import pack_dataset

    lines = lm_corpus_lines(80)[:-4]  # wordpiece fixture vocabulary is ASCII only
    packed = pack_dataset(_dataset(lines), wordpiece, "mlm", block_size=24, text_column="text", whole_words=True)
    cls, sep = wordpiece.cls_token_id, wordpiece.sep_token_id
    inner = []
    for b, starts, special in zip(
        packed["input_ids"], packed["word_starts"], packed["special_tokens_mask"], strict=False
    ):
        assert len(b) <= 24 and b[0] == cls and b[-1] == sep
        assert len(starts) == len(b) == len(special)
        assert special[0] == special[-1] == 1
        inner += b[1:-1]
    expected = []
    for line in lines:
        expected += wordpiece(line, add_special_tokens=False)["input_ids"] + [sep]
    assert inner == expected


def test_streaming_and_in_memory_yield_identical_blocks(bpe, tmp_path):
    from llmtune.config import DataArgs
    from llmtune.data import load_raw
    from llmtune.tasks.lm.data import is_streaming, pack_dataset

    (tmp_path / "train.txt").write_text("\n".join(lm_corpus_lines(200)) + "\n", encoding="utf-8")
    (tmp_path / "validation.txt").write_text("\n".join(lm_corpus_lines(30, seed=9)) + "\n", encoding="utf-8")
    out = {}
    for streaming in (False, True):
        raw = load_raw(DataArgs(dataset=str(tmp_path), streaming=streaming), text_sample_by="line")
        packed = pack_dataset(raw["train"], bpe, "clm", 40, "text", batch_size=64)
        assert is_streaming(packed) is streaming
        out[streaming] = [row["input_ids"] for row in packed]
    assert out[True] == out[False] and len(out[True]) > 10


def test_streaming_validation_is_held_out_by_take_and_skip(tmp_path):
    from llmtune.config import DataArgs
    from llmtune.data import load_raw

    path = tmp_path / "one.txt"
    lines = [f"document number {i}" for i in range(50)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = load_raw(DataArgs(dataset=str(path), streaming=True, max_eval_samples=8))
    assert [r["text"] for r in raw["validation"]] == lines[:8]
    assert [r["text"] for r in raw["train"]] == lines[8:]


def _collate_many(tokenizer, options, n_blocks=400, whole_words=False, seed=0):
    from llmtune.tasks.lm.collator import LMCollator
    from llmtune.tasks.lm.data import pack_dataset

    lines = lm_corpus_lines(600)[:-4]
    packed = pack_dataset(_dataset(lines), tokenizer, "mlm", 32, "text", whole_words=whole_words)
    rows = [packed[i] for i in range(min(n_blocks, len(packed)))]
    rows[-1] = {k: v[:10] for k, v in rows[-1].items()}  # a short row: padding in the batch
    batch = LMCollator(tokenizer, "mlm", options, seed=seed)(rows)
    return rows, batch


def test_mlm_masking_statistics(wordpiece):
    from llmtune.tasks.lm.options import MlmOptions

    rows, batch = _collate_many(wordpiece, MlmOptions())
    labels, inputs = batch["labels"].numpy(), batch["input_ids"].numpy()
    special = np.ones(labels.shape, dtype=bool)
    original = np.full(labels.shape, -1)
    for i, r in enumerate(rows):
        special[i, : len(r["input_ids"])] = np.asarray(r["special_tokens_mask"], dtype=bool)
        original[i, : len(r["input_ids"])] = r["input_ids"]
    selected = labels != -100
    assert not (selected & special).any()  # [CLS]/[SEP]/[PAD] are never masked
    assert (batch["attention_mask"].numpy()[special & (original == -1)] == 0).all()
    rate = selected.sum() / (~special).sum()
    assert 0.13 < rate < 0.17, rate
    assert (labels[selected] == original[selected]).all()
    as_mask = (inputs == wordpiece.mask_token_id) & selected
    kept = (inputs == original) & selected
    n = selected.sum()
    assert 0.75 < as_mask.sum() / n < 0.85
    assert 0.06 < kept.sum() / n < 0.15  # 10% kept (plus random draws that hit the same id)
    assert (inputs[~selected & ~special] == original[~selected & ~special]).all()


def test_mlm_masking_is_seeded(wordpiece):
    from llmtune.tasks.lm.options import MlmOptions

    _, a = _collate_many(wordpiece, MlmOptions(), n_blocks=50, seed=1)
    _, b = _collate_many(wordpiece, MlmOptions(), n_blocks=50, seed=1)
    _, c = _collate_many(wordpiece, MlmOptions(), n_blocks=50, seed=2)
    assert (a["labels"] == b["labels"]).all() and not (a["labels"] == c["labels"]).all()


def test_whole_word_masking_masks_whole_words(wordpiece):
    from llmtune.tasks.lm.options import MlmOptions

    rows, batch = _collate_many(wordpiece, MlmOptions(whole_word_masking=True), whole_words=True)
    labels = batch["labels"].numpy()
    multi_piece_words = 0
    for i, r in enumerate(rows):
        selected = labels[i, : len(r["input_ids"])] != -100
        starts = r["word_starts"]
        word = []
        for pos, start in enumerate([*starts, 1]):
            if start and word:
                picks = {bool(selected[p]) for p in word}
                assert len(picks) == 1, (i, word)  # all pieces of a word, or none
                multi_piece_words += len(word) > 1
                word = []
            if pos < len(starts) and not r["special_tokens_mask"][pos]:
                word.append(pos)
    assert multi_piece_words > 20  # the check above had sub-word pieces to look at
    eligible = sum(len(r["input_ids"]) - sum(r["special_tokens_mask"]) for r in rows)
    assert 0.10 < (labels != -100).sum() / eligible < 0.20


def test_fixed_eval_masks_are_identical_across_calls_and_streaming(wordpiece):
    from llmtune.tasks.lm.data import pack_dataset
    from llmtune.tasks.lm.masking import fixed_masks
    from llmtune.tasks.lm.options import MlmOptions

    lines = lm_corpus_lines(100)[:-4]
    packed = pack_dataset(_dataset(lines), wordpiece, "mlm", 32, "text")
    a = fixed_masks(packed, wordpiece, MlmOptions(), seed=7)
    b = fixed_masks(packed, wordpiece, MlmOptions(), seed=7)
    streamed = fixed_masks(packed.to_iterable_dataset(), wordpiece, MlmOptions(), seed=7)
    assert a["labels"] == b["labels"] and a["input_ids"] == b["input_ids"]
    assert [r["labels"] for r in streamed] == a["labels"]
    assert set(a.column_names) == {"input_ids", "labels"}
    assert sum(x != -100 for row in a["labels"] for x in row) > 0


def test_clm_collator_keeps_eos_as_target_when_pad_is_eos(bpe):
    from llmtune.tasks.lm.collator import LMCollator
    from llmtune.tasks.lm.options import ClmOptions

    eos = bpe.eos_token_id
    collator = LMCollator(bpe, "clm", ClmOptions(), seed=0)
    collator.pad_id = eos  # the GPT-2 situation: no pad token, pad == eos
    batch = collator([{"input_ids": [5, 6, eos, 7]}, {"input_ids": [8, eos]}])
    assert batch["labels"].tolist() == [[5, 6, eos, 7], [8, eos, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_sliding_windows_score_every_token_once():
    from datasets import Dataset

    from llmtune.tasks.lm.data import sliding_windows

    stream = list(range(100, 203))  # 103 tokens
    packed = Dataset.from_dict({"input_ids": [stream[:40], stream[40:80], stream[80:]]})
    windows = sliding_windows(packed, block_size=32, stride=12)
    scored = []
    for row in windows:
        assert len(row["input_ids"]) <= 32
        # the model predicts position j from j-1: position 0 of a window is never a target
        scored += [t for j, t in enumerate(row["labels"]) if t != -100 and j > 0]
    assert scored == stream[1:]  # each token but the very first, in order, exactly once


def test_perplexity_is_token_weighted_not_batch_mean():
    import torch
    import torch.nn.functional as F

    from llmtune.tasks.common.lm_eval import row_nll_and_count, total_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, -100, -100, -100, -100]])
    rows = row_nll_and_count(logits, labels, shift=True)
    assert rows[:, 1].tolist() == [5.0, 1.0]
    loss, count = total_loss(rows.numpy())
    shifted = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert count == 6 and abs(loss - shifted.item()) < 1e-5
    batch_means = np.mean([(rows[i, 0] / rows[i, 1]).item() for i in range(2)])
    assert abs(loss - batch_means) > 1e-3  # the naive mean of per-batch losses differs


def test_special_frame_and_max_positions(wordpiece, bpe):
    from transformers import GPT2Config, RobertaConfig

    from llmtune.modeling import max_positions
    from llmtune.tasks.lm.data import special_frame

    assert special_frame(wordpiece) == ([wordpiece.cls_token_id], [wordpiece.sep_token_id])
    assert special_frame(bpe) == ([], [])
    assert max_positions(GPT2Config(n_positions=256)) == 256
    assert max_positions(RobertaConfig(max_position_embeddings=514)) == 512
