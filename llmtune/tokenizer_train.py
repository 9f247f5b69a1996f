"""Train a fast sub-word tokenizer with Hugging Face ``tokenizers`` (``llmtune tokenizer train``).

Texts are streamed from ``datasets`` in batches (``train_from_iterator``), so a corpus larger than
memory works. The result is saved as a ``PreTrainedTokenizerFast`` that
``AutoTokenizer.from_pretrained(DIR)`` loads, with the special tokens the objective needs:

- ``clm``: ``<s>`` (bos), ``</s>`` (eos, appended after every document when packing), ``<pad>``
  (distinct from eos so padding never hides a real end of document), ``<unk>`` (not used by
  byte-level BPE, which has no unknowns).
- ``mlm``: BERT's ``[PAD] [UNK] [CLS] [SEP] [MASK]`` with the ``[CLS] A [SEP] (B [SEP])``
  post-processor.

Types: ``bpe`` is byte-level BPE (GPT-2 style: every byte is in the base alphabet, so any UTF-8
text round-trips exactly: Chinese, Arabic, emoji); ``wordpiece`` is BERT's; ``unigram`` is the
SentencePiece-style unigram LM with Metaspace pre-tokenization.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.config import bounded, choice, field_problems
from llmtune.errors import ConfigError, LlmtuneError

TYPES = ("bpe", "wordpiece", "unigram")
OBJECTIVES = ("clm", "mlm")
DEFAULT_TYPE = {"clm": "bpe", "mlm": "wordpiece"}

CLM_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
MLM_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
TEXT_COLUMNS = ("text", "content", "document", "sentence", "article")


@dataclass
class TokenizerSpec:
    """What ``llmtune tokenizer train`` builds; each field is the flag of the same name."""

    type: str = choice("bpe", *TYPES)
    vocab_size: int = bounded(32_000, ge=1)
    objective: str = choice("clm", *OBJECTIVES)
    min_frequency: int = bounded(2, ge=1)
    lowercase: bool = False
    model_max_length: int | None = bounded(None, ge=1)
    # Train on the first N rows only.
    max_samples: int | None = bounded(None, ge=1)

    def check(self) -> None:
        problems = field_problems(self, lambda name: "--" + ("type" if name == "type" else name.replace("_", "-")))
        floor = 300 if self.type == "bpe" else 50  # byte-level BPE starts from 256 bytes + specials
        if not problems and self.vocab_size < floor:
            problems.append(f"--vocab-size must be >= {floor} for {self.type}, got {self.vocab_size}")
        if problems:
            raise ConfigError(problems)


def special_tokens(objective: str) -> dict[str, str]:
    return dict(CLM_SPECIALS if objective == "clm" else MLM_SPECIALS)


def build_tokenizer(spec: TokenizerSpec) -> tuple[Any, Any]:
    """An untrained ``tokenizers.Tokenizer`` and its trainer for ``spec``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = special_tokens(spec.objective)
    # Order fixes the ids: pad first (id 0) is what most model configs assume.
    names = ("pad_token", "unk_token", "bos_token", "eos_token", "cls_token", "sep_token", "mask_token")
    special_list = [specials[n] for n in names if n in specials]
    unk = specials["unk_token"]
    norm: list[Any] = [normalizers.NFC()]
    if spec.lowercase:
        norm.append(normalizers.Lowercase())

    if spec.type == "bpe":
        tok = Tokenizer(models.BPE())  # byte-level: no unknown token needed
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=spec.vocab_size,
            min_frequency=spec.min_frequency,
            special_tokens=special_list,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        # No normalizer: byte-level BPE then gives back exactly the bytes it was given.
        if spec.lowercase:
            tok.normalizer = normalizers.Lowercase()
    elif spec.type == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=unk))
        # handle_chinese_chars splits CJK ideographs into single-character words, as BERT does.
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=spec.lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=spec.vocab_size,
            min_frequency=spec.min_frequency,
            special_tokens=special_list,
            continuing_subword_prefix="##",
            show_progress=False,
        )
    else:  # unigram
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence(norm)
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=spec.vocab_size, special_tokens=special_list, unk_token=unk, show_progress=False
        )
    return tok, trainer


def _post_processor(tok: Any, spec: TokenizerSpec) -> Any:
    from tokenizers import processors

    steps = []
    if spec.type == "bpe":
        steps.append(processors.ByteLevel(trim_offsets=False))
    if spec.objective == "mlm":
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        steps.append(
            processors.TemplateProcessing(
                single="[CLS] $A [SEP]",
                pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
            )
        )
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else processors.Sequence(steps)


def train_tokenizer(texts: Iterator[list[str]] | Iterator[str], spec: TokenizerSpec) -> Any:
    """Train on ``texts`` (strings or batches of strings) and wrap as ``PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    spec.check()
    tok, trainer = build_tokenizer(spec)
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() <= len(special_tokens(spec.objective)):
        raise LlmtuneError("the dataset has no text to train a tokenizer on (all rows empty?)")
    post = _post_processor(tok, spec)
    if post is not None:
        tok.post_processor = post
    extra: dict[str, Any] = {}
    if spec.model_max_length:
        extra["model_max_length"] = spec.model_max_length
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        clean_up_tokenization_spaces=False,  # decode must give back the text, not "fix" spaces
        **special_tokens(spec.objective),
        **extra,
    )


def iter_text_batches(
    dataset: str,
    text_column: str | None = None,
    config_name: str | None = None,
    split: str = "train",
    max_samples: int | None = None,
    batch_size: int = 1000,
) -> Iterator[list[str]]:
    """Stream batches of non-empty texts from any dataset llmtune can load (nothing materialised)."""
    from llmtune.config import DataArgs
    from llmtune.data import load_raw, pick_column

    data = DataArgs(
        dataset=dataset,
        config_name=config_name,
        train_split=split,
        streaming=True,
        max_train_samples=max_samples,
        text_column=text_column,
    )
    raw = load_raw(data, carve_validation=False, text_sample_by="line")
    if "train" not in raw:
        raise LlmtuneError(f"dataset '{dataset}' has no '{split}' split to train the tokenizer on")
    ds = raw["train"]
    column = pick_column(ds, text_column, TEXT_COLUMNS, "text", "--text-column")
    for batch in ds.select_columns([column]).iter(batch_size=batch_size):
        texts = [t for t in batch[column] if isinstance(t, str) and t.strip()]
        if texts:
            yield texts


def train_and_save(
    dataset: str,
    output_dir: str | Path,
    spec: TokenizerSpec,
    text_column: str | None = None,
    config_name: str | None = None,
    overwrite: bool = False,
) -> Any:
    """The ``llmtune tokenizer train`` command: stream, train, save, reload to check."""
    from transformers import AutoTokenizer

    from llmtune.outputs import check_output_dir

    spec.check()
    out = Path(output_dir)
    check_output_dir(out, overwrite)
    seen = {"texts": 0}

    def counted() -> Iterator[list[str]]:
        for batch in iter_text_batches(dataset, text_column, config_name, max_samples=spec.max_samples):
            seen["texts"] += len(batch)
            yield batch

    tokenizer = train_tokenizer(counted(), spec)
    if not seen["texts"]:
        raise LlmtuneError(
            f"dataset {dataset}: the text column is empty in every row: nothing to train a tokenizer on "
            f"(name the column with --text-column)"
        )
    tokenizer.save_pretrained(str(out))
    return AutoTokenizer.from_pretrained(str(out))  # what users will do: fail here, not later
