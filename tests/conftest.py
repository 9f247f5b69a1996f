"""Shared fixtures: tiny models and tokenizers built locally, never fetched from the Hub."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest

# Before any Hugging Face import: no network, caches in a throwaway folder.
_HF_HOME = tempfile.mkdtemp(prefix="llmtune-test-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", "2")

POSITIVE = [
    "great",
    "good",
    "excellent",
    "wonderful",
    "lovely",
    "superb",
    "amazing",
    "delightful",
    "fantastic",
    "enjoyable",
]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dreadful", "poor", "horrible", "dull", "disappointing", "mediocre"]
NEUTRAL = [
    "the",
    "movie",
    "film",
    "book",
    "food",
    "service",
    "room",
    "phone",
    "was",
    "is",
    "really",
    "quite",
    "very",
    "a",
    "it",
    "this",
]


def make_sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """A learnable synthetic sentiment set: polarity words decide the label."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        vocab = POSITIVE if label == "positive" else NEGATIVE
        words = rng.sample(NEUTRAL, 4) + rng.sample(vocab, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def corpus_lines(n: int = 400, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    vocab = POSITIVE + NEGATIVE + NEUTRAL
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 15))) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_wordpiece_dir(tmp_path_factory) -> Path:
    """A tiny WordPiece tokenizer (BERT special tokens) trained with `tokenizers`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-wordpiece")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(corpus_lines(), trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tiny_wordpiece_dir, tmp_path_factory) -> Path:
    """A randomly initialised 2-layer, hidden-32 BERT saved with its tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(tiny_wordpiece_dir)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
    )
    import torch

    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture()
def sentiment_csv(tmp_path) -> Path:
    import csv

    path = tmp_path / "sentiment.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(make_sentiment_rows(240))
    return path


@pytest.fixture()
def cli():
    """Invoke the real Typer app in-process; returns (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from llmtune.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, [str(a) for a in args])
        return result

    return invoke
