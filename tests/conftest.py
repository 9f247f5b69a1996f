"""Shared fixtures: tiny models and tokenizers built locally, never fetched from the Hub."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

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


# ---- seq2seq and sft (summarization, translation, instruction tuning) ---------------------------

# A toy "English -> German" word dictionary: translation is word-by-word, so a tiny model learns it.
EN_DE = {
    "the": "der",
    "a": "ein",
    "dog": "hund",
    "cat": "katze",
    "house": "haus",
    "car": "auto",
    "big": "gross",
    "small": "klein",
    "red": "rot",
    "green": "gruen",
    "runs": "laeuft",
    "sleeps": "schlaeft",
    "sees": "sieht",
    "old": "alt",
    "new": "neu",
}
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def make_translation_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = list(EN_DE)
    rows = []
    for _ in range(n):
        en = [rng.choice(words) for _ in range(rng.randint(3, 6))]
        rows.append({"en": " ".join(en), "de": " ".join(EN_DE[w] for w in en)})
    return rows


def make_summary_rows(n: int, seed: int = 0) -> list[dict]:
    """Documents of filler plus two polarity words; the summary is those two words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        key = rng.sample(POSITIVE + NEGATIVE, 2)
        words = rng.sample(NEUTRAL, 8) + key
        rng.shuffle(words)
        rows.append({"document": " ".join(words) + ".", "summary": " ".join(key)})
    return rows


def make_sft_rows(n: int, seed: int = 0) -> list[dict]:
    """Instruction data: 'translate: <en words>' -> the toy German words."""
    return [{"prompt": f"translate {r['en']}", "response": r["de"]} for r in make_translation_rows(n, seed)]


def _seq2seq_corpus() -> list[str]:
    lines = corpus_lines(300)
    lines += [f"{r['en']} {r['de']}" for r in make_translation_rows(300, seed=5)]
    lines += [f"summarize: translate English to German: {r['document']}" for r in make_summary_rows(50, seed=6)]
    return lines


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer, d_model-32 T5 with a tiny sentencepiece-style BPE tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny-t5")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<pad>", "</s>", "<unk>"]
    tok.train_from_iterator(_seq2seq_corpus(), trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=128
    )
    config = T5Config(
        vocab_size=len(fast),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        decoder_start_token_id=fast.pad_token_id,
    )
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_chat_tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer with ChatML special tokens and a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-chat-tok")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    lines = _seq2seq_corpus() + ["user assistant system translate"] * 5
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(lines, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=256,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_chat_tokenizer_dir, tmp_path_factory) -> Path:
    """A randomly initialised 2-layer, hidden-32 Llama saved with the ChatML tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(tiny_chat_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ---- NER / QA synthetic data (learnable from single words of the tiny tokenizer's vocabulary) ----


def make_ner_rows(n: int, seed: int = 0) -> list[dict]:
    """Sentences of filler words with POS entities (one positive word) and two-word NEG entities
    ("very" + a negative word): every tag is decided by the word itself, so a tiny model learns it."""
    rng = random.Random(seed)
    filler = [w for w in NEUTRAL if w != "very"]
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(2, 4)):
            words = rng.sample(filler, rng.randint(1, 3))
            tokens += words
            tags += ["O"] * len(words)
            if rng.random() < 0.5:
                tokens.append(rng.choice(POSITIVE))
                tags.append("B-POS")
            else:
                tokens += ["very", rng.choice(NEGATIVE)]
                tags += ["B-NEG", "I-NEG"]
        rows.append({"tokens": tokens, "ner_tags": tags})
    return rows


def make_qa_rows(n: int, seed: int = 0, unanswerable_every: int = 0) -> list[dict]:
    """Contexts of neutral words holding one positive word: the answer to 'which word is good'.

    With ``unanswerable_every=k`` every k-th context has no positive word and no answer (SQuAD v2).
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(6, 14))]
        answerable = not (unanswerable_every and i % unanswerable_every == 0)
        answers: dict = {"text": [], "answer_start": []}
        if answerable:
            answer, at = rng.choice(POSITIVE), rng.randint(0, len(words))
            words.insert(at, answer)
            answers = {"text": [answer], "answer_start": [sum(len(w) + 1 for w in words[:at])]}
        context = " ".join(words)
        rows.append({"id": f"q{i}", "question": "which word is good ?", "context": context, "answers": answers})
    return rows


# ---- language-model pretraining (clm / mlm) ------------------------------------------------------

MULTILINGUAL = [
    "Byte-level BPE keeps every byte: café, naïve, Zürich.",
    "今天天气很好，我们去公园散步吧。",
    "مرحبا بالعالم، هذه جملة عربية قصيرة.",
    "Emoji too: 🤖🎉👍🏽 and a family 👨‍👩‍👧‍👦.",
]


def lm_corpus_lines(n: int = 300, seed: int = 3) -> list[str]:
    """Short documents with learnable structure (word order matters) plus a few non-Latin lines."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        noun = rng.choice(["movie", "film", "book", "phone", "room"])
        good = rng.choice(POSITIVE)
        lines.append(f"the {noun} was really {good} and the service was {rng.choice(NEGATIVE)} .")
    return lines + MULTILINGUAL


@pytest.fixture(scope="session")
def tiny_bpe_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer for clm (<s> </s> <pad> <unk>) trained by llmtune itself."""
    from llmtune.tokenizer_train import TokenizerSpec, train_tokenizer

    out = tmp_path_factory.mktemp("tiny-bpe")
    tok = train_tokenizer(iter(lm_corpus_lines()), TokenizerSpec(type="bpe", vocab_size=400, objective="clm"))
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tiny_bpe_dir, tmp_path_factory) -> Path:
    """A randomly initialised 2-layer, hidden-32 GPT-2 saved with the tiny BPE tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("tiny-gpt2")
    tok = AutoTokenizer.from_pretrained(tiny_bpe_dir)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture()
def lm_corpus_txt(tmp_path) -> Path:
    """A folder with train.txt / validation.txt, one document per line."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    lines = lm_corpus_lines()
    (folder / "train.txt").write_text("\n".join(lines[:260]) + "\n", encoding="utf-8")
    (folder / "validation.txt").write_text("\n".join(lines[260:300]) + "\n", encoding="utf-8")
    return folder


# ---- GGUF: a tiny llama.cpp-style file written from the tiny Llama --------------------------------


def write_tiny_gguf(model_dir: Path, out_file: Path) -> None:
    """Write a Llama model folder (byte-level BPE tokenizer) as an F32 GGUF file the way llama.cpp's
    converter does: llama.cpp tensor names, q/k rows permuted, the tokenizer as tokens + merges."""
    import json

    import gguf
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    c = model.config
    w = gguf.GGUFWriter(str(out_file), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    rope = getattr(c, "rope_parameters", None) or {}
    w.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    spec = json.loads(tok.backend_tokenizer.to_str())
    tokens = [""] * len(spec["model"]["vocab"])
    for text, i in spec["model"]["vocab"].items():
        tokens[i] = text
    special = {a["id"] for a in spec.get("added_tokens", [])}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)

    def permute(x: Any, heads: int) -> Any:
        return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    sd = {k: v.numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not c.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for i in range(c.num_hidden_layers):
        for hf, gg in names.items():
            x = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                x = permute(x, c.num_attention_heads)
            elif gg == "attn_k":
                x = permute(x, c.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gg}.weight", x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="session")
def tiny_gguf_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """A folder holding only ``model.gguf`` (the tiny Llama), like a GGUF model package."""
    out = tmp_path_factory.mktemp("tiny-gguf")
    write_tiny_gguf(tiny_llama_dir, out / "model.gguf")
    return out
