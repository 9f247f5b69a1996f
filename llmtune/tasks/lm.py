"""Language-model pretraining: causal (``clm``, GPT-style) and masked (``mlm``, BERT-style).

Data: texts are tokenized and packed into fixed ``block_size`` blocks by one batched
``datasets.map`` (Arrow-cached for a ``Dataset``, lazy for a streamed ``IterableDataset``: the
same function, so both yield the same blocks in the same order). Packing never drops text: the
partial last block of each map batch is kept and padded by the collator.

- clm: every document is followed by EOS (after the tokenizer's own template, e.g. Llama's BOS),
  documents are concatenated and cut into blocks; labels are the inputs (the model shifts).
- mlm: documents are joined with SEP, cut into ``block_size - specials`` pieces and each piece
  is framed like a single sequence (``[CLS] ... [SEP]``), so every block looks like what the
  model sees at fine-tuning time.

Evaluation reports perplexity = exp(total NLL / number of predicted tokens) over the whole split,
summed per row on the device (``preprocess_logits_for_metrics``) and gathered across processes
by the Trainer, not the mean of per-batch losses that ``eval_loss`` is. MLM eval masks are drawn
once with a fixed seed, so every evaluation (and ``llmtune eval``) scores the same masked tokens.

Module level stays torch-free (config validation imports it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llmtune.config import bounded, choice
from llmtune.errors import LlmtuneError
from llmtune.tasks.base import RunContext, Task, require_content

TEXT_COLUMNS = ("text", "content", "document", "sentence", "article")
SAMPLE_BY = ("line", "paragraph", "document")
DEFAULT_BLOCK = {"clm": 1024, "mlm": 512}


@dataclass
class LMOptions:
    # Tokens per training block; None = the smaller of 1024 (clm) / 512 (mlm), the model's
    # maximum positions and the tokenizer's model_max_length. Flag: --block-size.
    block_size: int | None = bounded(None, ge=8)
    # How a .txt file is split into documents: one per line, per blank-line separated
    # paragraph, or the whole file.
    sample_by: str = choice("line", *SAMPLE_BY)
    # Evaluate once before training, reported as eval_initial_* in metrics.json.
    eval_on_start: bool = True
    # Rows per batched map call when tokenizing/packing (one partial block per batch).
    pack_batch_size: int = bounded(1000, ge=1)


@dataclass
class ClmOptions(LMOptions):
    # Sliding-window perplexity for evaluation: windows of block_size tokens advancing by
    # `stride`, each token scored once with up to block_size - stride tokens of left context.
    # None = non-overlapping blocks. Materialises the eval split's token ids (bounded).
    stride: int | None = bounded(None, ge=1)


@dataclass
class MlmOptions(LMOptions):
    mlm_probability: float = bounded(0.15, gt=0, lt=1)
    # Of the selected tokens: share replaced by [MASK], share by a random token (rest unchanged).
    mask_replace_prob: float = bounded(0.8, ge=0, le=1)
    random_replace_prob: float = bounded(0.1, ge=0, le=1)
    # Select whole words (the tokenizer's pre-tokenizer words) instead of single sub-words.
    whole_word_masking: bool = False


class LMTask(Task):
    family = "lm"
    greater_is_better = False
    objective = ""

    # ---- config time (torch-free) -------------------------------------------------------
    def apply_defaults(self, cfg: Any, tree: dict) -> None:
        train_keys = tree.get("train") or {}
        # Packed blocks all have one length: grouping by length only costs a pass over the data.
        if "group_by_length" not in train_keys:
            cfg.train.group_by_length = False
        # Random initialisation wants a larger step than continued pretraining.
        if "learning_rate" not in train_keys and cfg.model.config and not cfg.model.name_or_path:
            cfg.train.learning_rate = 5e-4
        # A stream has no epochs to evaluate at: evaluate a few times during max_steps.
        if cfg.data.streaming and "eval_strategy" not in train_keys and cfg.train.max_steps > 0:
            cfg.train.eval_strategy = "steps"
            if not cfg.train.eval_steps:
                cfg.train.eval_steps = max(1, cfg.train.max_steps // 4)

    def validate(self, cfg: Any) -> list[str]:
        from llmtune.modeling import from_config_problems
        from llmtune.presets import get_preset

        p: list[str] = []
        o, m = cfg.options, cfg.model
        p.extend(from_config_problems(cfg))
        preset = get_preset(m.config) if m.config else None
        if preset is not None and preset["model_type"] not in self.preset_types:
            kind = "an encoder (bert-*)" if self.objective == "mlm" else "a decoder (gpt2-*, llama-*)"
            p.append(f"preset '{m.config}' does not fit --objective {self.objective}: pick {kind} preset")
        p.extend(self.validate_options(o))
        return p

    preset_types: tuple[str, ...] = ()

    def validate_options(self, o: Any) -> list[str]:
        return []

    # ---- tokenizer, config, data --------------------------------------------------------
    def load_tokenizer(self, ctx: RunContext) -> Any:
        from llmtune.modeling import load_tokenizer

        m = ctx.cfg.model
        if ctx.training:
            if not m.name_or_path and not m.config:
                raise LlmtuneError(
                    "no model given: pass --model (continued pretraining) or --model-config with --tokenizer "
                    "(from scratch: a preset like gpt2-small, a config.json or a Hub config name)"
                )
            spec = m.tokenizer or m.name_or_path
            tokenizer = load_tokenizer(spec, m)
            ctx.state["model_config"] = self._model_config(ctx)  # fail on a bad config before data work
        else:
            tokenizer = load_tokenizer(ctx.model_path)
        self.check_tokenizer(tokenizer, m.tokenizer or m.name_or_path or ctx.model_path)
        return tokenizer

    def check_tokenizer(self, tokenizer: Any, where: str | None) -> None:
        """Objective-specific requirements (raise LlmtuneError naming the tokenizer)."""

    def _model_config(self, ctx: RunContext) -> Any:
        """The architecture: ``model.config`` (preset, config.json, Hub config) or the model's own."""
        from transformers import AutoConfig

        from llmtune.modeling import _hub_error, model_architecture, model_location

        m = ctx.cfg.model
        if m.config:
            return model_architecture(m)
        location = model_location(m.name_or_path)
        try:
            return AutoConfig.from_pretrained(location, trust_remote_code=m.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise _hub_error("model", m.name_or_path, exc) from exc

    def load_data(self, ctx: RunContext) -> Any:
        from llmtune.data import load_raw

        cfg = ctx.cfg
        return load_raw(
            cfg.data, seed=cfg.train.seed, carve_validation=ctx.training, text_sample_by=cfg.options.sample_by
        )

    def resolve_block_size(self, ctx: RunContext) -> int:
        config = ctx.model.config if ctx.model is not None else ctx.state.get("model_config")
        limit = max_positions(config) if config is not None else None
        explicit = ctx.cfg.options.block_size
        if explicit is not None:
            if limit is not None and explicit > limit:
                raise LlmtuneError(
                    f"options.block_size (--block-size) {explicit} exceeds the model's {limit} positions: "
                    f"pass --block-size {limit} or less"
                )
            return explicit
        candidates = [DEFAULT_BLOCK[self.objective]]
        if limit is not None:
            candidates.append(limit)
        tok_max = getattr(ctx.tokenizer, "model_max_length", None)
        if tok_max and tok_max < 10**8:
            candidates.append(int(tok_max))
        return min(candidates)

    def prepare(self, ctx: RunContext, raw: Any) -> dict[str, Any]:
        from llmtune.data import column_names, pick_column

        cfg = ctx.cfg
        first = raw["train"] if "train" in raw else raw["validation"]
        text_col = pick_column(first, cfg.data.text_column, TEXT_COLUMNS, "text", "data.text_column")
        ctx.columns = {"text": text_col}
        block_size = self.resolve_block_size(ctx)
        cfg.options.block_size = block_size  # saved in llmtune_config.yaml: eval reuses it
        ctx.state["has_validation"] = "validation" in raw
        out = {}
        for split, ds in raw.items():
            if text_col not in column_names(ds):
                raise LlmtuneError(
                    f"split '{split}' has no column '{text_col}'; columns: {', '.join(column_names(ds))}"
                )
            require_content(ds, text_col, split, "text", "data.text_column")
            packed = pack_dataset(
                ds, ctx.tokenizer, self.objective, block_size, text_col, cfg.options.pack_batch_size,
                whole_words=getattr(cfg.options, "whole_word_masking", False), num_proc=cfg.data.num_proc,
                desc=f"tokenizing and packing {split}",
            )  # fmt: skip
            if split == "train":
                if is_streaming(packed):
                    # In-memory data is shuffled by the Trainer's sampler; a stream with a buffer.
                    packed = packed.shuffle(seed=cfg.train.seed, buffer_size=cfg.data.shuffle_buffer_size)
            else:
                packed = self.eval_view(ctx, packed, block_size)
            out[split] = packed
        return out

    def eval_view(self, ctx: RunContext, packed: Any, block_size: int) -> Any:
        """How an eval split is scored (fixed masks for mlm, sliding windows for clm)."""
        return packed

    # ---- model ------------------------------------------------------------------------------
    def build_model(self, ctx: RunContext) -> Any:
        from llmtune.modeling import load_model, model_from_config

        tok = ctx.tokenizer
        m = ctx.cfg.model
        if m.config:
            model = model_from_config(ctx, self.auto_model, ctx.state["model_config"])
        else:
            model = load_model(ctx, self.auto_model)
            if len(tok) > model.get_input_embeddings().num_embeddings:
                # A tokenizer with added tokens: grow the embedding matrix to cover them.
                model.resize_token_embeddings(len(tok))
        if model.config.pad_token_id is None and tok.pad_token_id is not None:
            model.config.pad_token_id = tok.pad_token_id
        limit = max_positions(model.config)
        if limit is not None and ctx.cfg.options.block_size > limit:
            raise LlmtuneError(
                f"options.block_size {ctx.cfg.options.block_size} exceeds the model's {limit} positions: "
                f"pass --block-size {limit} or less"
            )
        return model

    def training_args(self, ctx: RunContext) -> dict:
        return {
            # The collator needs special_tokens_mask/word_starts; it returns only model inputs.
            "remove_unused_columns": False,
            "eval_on_start": bool(ctx.cfg.options.eval_on_start and ctx.training and ctx.state.get("has_validation")),
        }

    def collator(self, ctx: RunContext) -> Any:
        return LMCollator(ctx.tokenizer, objective=self.objective, options=ctx.cfg.options, seed=ctx.cfg.train.seed)

    # ---- evaluation -------------------------------------------------------------------------
    def preprocess_logits_for_metrics(self, ctx: RunContext) -> Any:
        shift = self.objective == "clm"

        def per_row_nll(logits: Any, labels: Any) -> Any:
            return row_nll_and_count(logits, labels, shift)

        return per_row_nll

    def compute_metrics(self, ctx: RunContext) -> Any:
        names = self.metric_names

        def compute(eval_pred: Any) -> dict:
            loss, count = total_loss(eval_pred.predictions)
            return {names[0]: loss, names[1]: perplexity(loss), names[2]: count}

        return compute

    #: (loss, perplexity, token count) metric names without the eval_ prefix
    metric_names: tuple[str, str, str] = ("loss", "perplexity", "tokens")

    def predict(self, ctx: RunContext, trainer: Any, raw_split: Any, split: Any) -> tuple[dict, list[dict]]:
        output = trainer.predict(split, metric_key_prefix="eval")
        metrics = dict(output.metrics)
        loss_key = f"eval_{self.metric_names[0]}"
        # Trainer's eval_loss is a mean of batch means; report the token-weighted one instead.
        metrics["eval_loss"] = metrics.get(loss_key, metrics.get("eval_loss"))
        if ctx.training:
            for entry in trainer.state.log_history:
                if entry.get("step") == 0 and f"eval_{self.metric_names[1]}" in entry:
                    metrics[f"eval_initial_{self.metric_names[1]}"] = entry[f"eval_{self.metric_names[1]}"]
                    break
        return metrics, []

    def headline(self, metrics: dict) -> dict:
        keep = {"loss", *self.metric_names, f"initial_{self.metric_names[1]}", "runtime"}
        return {k: v for k, v in metrics.items() if k.split("_", 1)[-1] in keep}


class CausalLMTask(LMTask):
    name = "clm"
    aliases = ("causal-lm", "pretrain-clm")
    objective = "clm"
    description = "causal language-model pretraining (GPT-style), from scratch or continued"
    Options = ClmOptions
    auto_model = "AutoModelForCausalLM"
    main_metric = "perplexity"
    pipeline_tag = "text-generation"
    preset_types = ("gpt2", "llama")
    metric_names = ("loss", "perplexity", "tokens")

    def validate_options(self, o: Any) -> list[str]:
        if o.stride is None:
            return []
        if o.block_size is not None and o.stride > o.block_size:
            return [f"options.stride ({o.stride}) must not exceed options.block_size ({o.block_size})"]
        return []

    def check_tokenizer(self, tokenizer: Any, where: str | None) -> None:
        if tokenizer.eos_token_id is None:
            raise LlmtuneError(
                f"tokenizer {where} has no eos token, which clm packing puts between documents: "
                f"train one with `llmtune tokenizer train --objective clm`"
            )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # labels come from attention_mask, so EOS stays a target

    def eval_view(self, ctx: RunContext, packed: Any, block_size: int) -> Any:
        stride = ctx.cfg.options.stride
        if not stride:
            return packed
        return sliding_windows(packed, block_size, min(stride, block_size))


class MaskedLMTask(LMTask):
    name = "mlm"
    aliases = ("masked-lm", "pretrain-mlm")
    objective = "mlm"
    description = "masked language-model pretraining (BERT-style), from scratch or continued"
    Options = MlmOptions
    auto_model = "AutoModelForMaskedLM"
    main_metric = "mlm_perplexity"
    pipeline_tag = "fill-mask"
    preset_types = ("bert",)
    metric_names = ("mlm_loss", "mlm_perplexity", "masked_tokens")

    def validate_options(self, o: Any) -> list[str]:
        if o.mask_replace_prob + o.random_replace_prob > 1:
            return [
                "options.mask_replace_prob and options.random_replace_prob must sum to at most 1, "
                f"got {o.mask_replace_prob} and {o.random_replace_prob}"
            ]
        return []

    def check_tokenizer(self, tokenizer: Any, where: str | None) -> None:
        if tokenizer.mask_token_id is None:
            raise LlmtuneError(
                f"tokenizer {where} has no mask token, which mlm needs: train one with "
                f"`llmtune tokenizer train --objective mlm`"
            )
        if tokenizer.pad_token_id is None:
            raise LlmtuneError(f"tokenizer {where} has no pad token, which mlm batches need")

    def eval_view(self, ctx: RunContext, packed: Any, block_size: int) -> Any:
        return fixed_masks(packed, ctx.tokenizer, ctx.cfg.options, ctx.cfg.train.seed)


TASKS = [CausalLMTask(), MaskedLMTask()]


# =============================================================================================
# data helpers (module functions so tests and benchmarks can call them directly)


def is_streaming(ds: Any) -> bool:
    from datasets import IterableDataset

    return isinstance(ds, IterableDataset)


def _map(ds: Any, fn: Any, **kwargs: Any) -> Any:
    """``ds.map`` for both kinds: only in-memory datasets take ``desc``/``num_proc``."""
    desc = kwargs.pop("desc", None)
    num_proc = kwargs.pop("num_proc", None)
    if is_streaming(ds):
        return ds.map(fn, **kwargs)
    return ds.map(fn, desc=desc, num_proc=num_proc, **kwargs)


def max_positions(config: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
                return value - 2  # positions start after the padding index
            return value
    return None


def special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sequence (``[CLS]``, ``[SEP]``)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    framed = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(framed) - len(plain) + 1):
        if framed[start : start + len(plain)] == plain:
            return framed[:start], framed[start + len(plain) :]
    return [], []


def pack_dataset(
    ds: Any,
    tokenizer: Any,
    objective: str,
    block_size: int,
    text_column: str,
    batch_size: int = 1000,
    whole_words: bool = False,
    num_proc: int | None = None,
    desc: str | None = None,
) -> Any:
    """Tokenize ``text_column`` and pack it into blocks (columns: input_ids, special_tokens_mask
    [, word_starts]). Works on ``Dataset`` (cached) and ``IterableDataset`` (lazy) alike."""
    from llmtune.data import column_names

    eos = tokenizer.eos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else eos
    prefix, suffix = special_frame(tokenizer) if objective == "mlm" else ([], [])
    content = block_size - len(prefix) - len(suffix)
    if content < 2:
        raise LlmtuneError(f"options.block_size {block_size} leaves no room for text after the special tokens")
    special_ids = set(tokenizer.all_special_ids)

    def pack(batch: dict) -> dict:
        texts = [t for t in batch[text_column] if isinstance(t, str) and t.strip()]
        if not texts:
            return {"input_ids": [], "special_tokens_mask": [], **({"word_starts": []} if whole_words else {})}
        # clm: the tokenizer's own template (e.g. Llama's BOS) + EOS; mlm: framing is per block.
        enc = tokenizer(texts, add_special_tokens=objective == "clm")
        stream: list[int] = []
        starts: list[int] = []
        for i, ids in enumerate(enc["input_ids"]):
            closer = eos if objective == "clm" else sep
            tail = [] if ids and ids[-1] == closer else [closer]
            stream.extend(ids)
            stream.extend(tail)
            if whole_words:
                words = enc.word_ids(i)
                prev = None
                for w in words:
                    starts.append(1 if w is None or w != prev else 0)
                    prev = w
                starts.extend([1] * len(tail))
        blocks, block_starts = [], []
        for begin in range(0, len(stream), content):
            chunk = stream[begin : begin + content]
            if objective == "clm" and len(chunk) < 2:
                continue  # a lone trailing token has nothing to predict (a block's first token is context)
            if objective == "mlm" and all(t in special_ids for t in chunk):
                continue
            blocks.append(prefix + chunk + suffix)
            if whole_words:
                block_starts.append([1] * len(prefix) + starts[begin : begin + content] + [1] * len(suffix))
        out = {
            "input_ids": blocks,
            "special_tokens_mask": [[1 if t in special_ids else 0 for t in b] for b in blocks],
        }
        if whole_words:
            out["word_starts"] = block_starts
        return out

    return _map(
        ds,
        pack,
        batched=True,
        batch_size=batch_size,
        remove_columns=column_names(ds),
        num_proc=num_proc,
        desc=desc,
    )


def sliding_windows(packed: Any, block_size: int, stride: int) -> Any:
    """Overlapping eval windows over the split's whole token stream (the usual strided perplexity:
    each token is a target once, with up to ``block_size - stride`` tokens of context)."""
    import numpy as np
    from datasets import Dataset

    stream = np.fromiter((t for row in packed for t in row["input_ids"]), dtype=np.int64)
    windows, labels = [], []
    prev_end = 0
    for begin in range(0, len(stream), stride):
        end = min(begin + block_size, len(stream))
        target = end - prev_end
        ids = stream[begin:end]
        lab = ids.copy()
        lab[: len(ids) - target] = -100
        windows.append(ids.tolist())
        labels.append(lab.tolist())
        prev_end = end
        if end == len(stream):
            break
    return Dataset.from_dict({"input_ids": windows, "labels": labels})


def fixed_masks(packed: Any, tokenizer: Any, options: Any, seed: int) -> Any:
    """MLM eval blocks with their masks drawn once (seeded by row position): every evaluation
    scores the same tokens, so numbers are comparable across steps and runs."""
    import numpy as np

    whole = bool(getattr(options, "whole_word_masking", False))

    def apply(batch: dict, indices: list[int]) -> dict:
        rng = np.random.default_rng([seed, indices[0] if indices else 0])
        ids_out, labels_out = [], []
        for row, ids in enumerate(batch["input_ids"]):
            arr = np.asarray([ids], dtype=np.int64)
            special = np.asarray([batch["special_tokens_mask"][row]], dtype=bool)
            starts = np.asarray([batch["word_starts"][row]], dtype=bool) if whole else None
            masked, labels = mask_tokens(arr, special, starts, rng, options, tokenizer.mask_token_id, len(tokenizer))
            ids_out.append(masked[0].tolist())
            labels_out.append(labels[0].tolist())
        return {"input_ids": ids_out, "labels": labels_out}

    drop = ["special_tokens_mask"] + (["word_starts"] if whole else [])
    return _map(packed, apply, batched=True, with_indices=True, remove_columns=drop, desc="masking eval blocks")


def mask_tokens(
    input_ids: Any, special: Any, word_starts: Any, rng: Any, options: Any, mask_id: int, vocab_size: int
) -> tuple[Any, Any]:
    """BERT masking on a padded batch (numpy): select ``mlm_probability`` of the non-special
    tokens (or of the words, then all their sub-words), replace 80% of the selected by [MASK],
    10% by a random token, keep 10%; labels are -100 everywhere else.

    Own code rather than ``DataCollatorForLanguageModeling`` because that collator's whole-word
    mode drops the 80/10/10 replacement, finds words from character offsets (gluing punctuation
    to words), and draws from one generator shared by training and evaluation.
    """
    import numpy as np

    inputs = input_ids.copy()
    labels = input_ids.copy()
    eligible = ~special
    p = options.mlm_probability
    if word_starts is None:
        selected = (rng.random(inputs.shape) < p) & eligible
    else:
        starts = word_starts | special
        starts[:, 0] = True  # a block may begin mid-word
        word_index = np.cumsum(starts, axis=1) - 1
        drawn = (rng.random(inputs.shape) < p) & starts & eligible
        chosen = np.zeros(inputs.shape, dtype=bool)
        rows, cols = np.nonzero(drawn)
        chosen[rows, word_index[rows, cols]] = True
        selected = np.take_along_axis(chosen, word_index, axis=1) & eligible
    labels[~selected] = -100
    draw = rng.random(inputs.shape)
    to_mask = selected & (draw < options.mask_replace_prob)
    to_random = (
        selected
        & (draw >= options.mask_replace_prob)
        & (draw < options.mask_replace_prob + options.random_replace_prob)
    )
    inputs[to_mask] = mask_id
    inputs[to_random] = rng.integers(0, vocab_size, size=int(to_random.sum()))
    return inputs, labels


class LMCollator:
    """Pads packed blocks (only a batch's partial last block is short) and makes labels:
    clm = the inputs where attention_mask is 1 (so EOS stays a target even when pad == eos,
    which ``DataCollatorForLanguageModeling(mlm=False)`` would hide); mlm = :func:`mask_tokens`;
    rows that already carry labels (fixed eval masks, sliding windows) keep them."""

    def __init__(self, tokenizer: Any, objective: str, options: Any, seed: int):
        self.tokenizer = tokenizer
        self.objective = objective
        self.options = options
        self.seed = seed
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._rng = None
        self._rng_key = None

    def rng(self) -> Any:
        """One generator per process / dataloader worker, seeded from the run seed."""
        import os

        import numpy as np
        import torch

        info = torch.utils.data.get_worker_info()
        key = (os.getpid(), info.id if info else -1)
        if self._rng is None or self._rng_key != key:
            self._rng = np.random.default_rng([self.seed, key[1] + 1])
            self._rng_key = key
        return self._rng

    def __call__(self, features: list[dict]) -> dict:
        import numpy as np
        import torch

        n, width = len(features), max(len(f["input_ids"]) for f in features)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        attention = np.zeros((n, width), dtype=np.int64)
        has_labels = "labels" in features[0]
        labels = np.full((n, width), -100, dtype=np.int64) if has_labels else None
        special = np.ones((n, width), dtype=bool)
        starts = np.ones((n, width), dtype=bool) if "word_starts" in features[0] else None
        for i, f in enumerate(features):
            length = len(f["input_ids"])
            ids[i, :length] = f["input_ids"]
            attention[i, :length] = 1
            if has_labels:
                labels[i, :length] = f["labels"]
            if "special_tokens_mask" in f:
                special[i, :length] = np.asarray(f["special_tokens_mask"], dtype=bool)
            else:
                special[i, :length] = False
            if starts is not None:
                starts[i, :length] = np.asarray(f["word_starts"], dtype=bool)
        if not has_labels:
            if self.objective == "mlm":
                ids, labels = mask_tokens(
                    ids, special, starts, self.rng(), self.options, self.tokenizer.mask_token_id, len(self.tokenizer)
                )
            else:
                labels = np.where(attention == 1, ids, -100)
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(labels),
        }


# =============================================================================================
# perplexity


def row_nll_and_count(logits: Any, labels: Any, shift: bool) -> Any:
    """Per row: [summed NLL of the predicted tokens, number of predicted tokens] (float32 [B, 2]).

    Runs on the device batch by batch, so the Trainer keeps two numbers per row instead of
    [B, L, vocab] logits, and gathers them across processes for :func:`total_loss`.
    """
    import torch
    import torch.nn.functional as F

    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if shift:
        logits, labels = logits[:, :-1, :], labels[:, 1:]
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(labels.shape)
    valid = labels != -100
    return torch.stack([(nll * valid).sum(dim=1), valid.sum(dim=1).float()], dim=1)


def total_loss(rows: Any) -> tuple[float, int]:
    """Token-weighted mean NLL over all rows from :func:`row_nll_and_count`, and the token count."""
    import numpy as np

    rows = np.asarray(rows[0] if isinstance(rows, tuple) else rows, dtype=np.float64).reshape(-1, 2)
    count = rows[:, 1].sum()
    if count <= 0:
        raise LlmtuneError("the evaluation split has no tokens to predict: give it more text")
    return float(rows[:, 0].sum() / count), int(count)


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")
