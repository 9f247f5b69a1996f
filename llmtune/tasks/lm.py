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

clm ``options.packing``: ``blocks`` (the above), or ``documents`` / ``padded``: one document
per example (split into ``block_size`` pieces), batched padding-free with per-document attention
(:mod:`llmtune.packing`) or padded.

Evaluation reports perplexity = exp(total NLL / number of predicted tokens) over the whole split,
summed per row on the device (``preprocess_logits_for_metrics``) and gathered across processes
by the Trainer, not the mean of per-batch losses that ``eval_loss`` is. MLM eval masks are drawn
once with a fixed seed, so every evaluation (and ``llmtune eval``) scores the same masked tokens.

Module level stays torch-free (config validation imports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmtune.config import bounded
from llmtune.errors import LlmtuneError
from llmtune.modeling import max_positions
from llmtune.tasks.base import RunContext, Task, require_content
from llmtune.tasks.common.lm_eval import lm_eval_batch_args, lm_eval_step, perplexity, total_loss

TEXT_COLUMNS = ("text", "content", "document", "sentence", "article")
SAMPLE_BY = ("line", "paragraph", "document", "stream")
DEFAULT_BLOCK = {"clm": 1024, "mlm": 512}
# clm generation quality: the reference continuation of a prompt
REFERENCE_COLUMNS = ("reference", "completion", "response", "target")


@dataclass
class LMOptions:
    # Tokens per training block; None = the smaller of 1024 (clm) / 512 (mlm), the model's
    # maximum positions and the tokenizer's model_max_length. Flag: --block-size.
    block_size: int | None = bounded(None, ge=8)
    # How a .txt file is read: each line a document (followed by EOS), each blank-line separated
    # paragraph, the whole file one document, or "stream" (clm): the text exactly as it is, one
    # token stream without EOS, the way published perplexities (WikiText) are computed.
    # None = line when training, stream when `llmtune eval` scores a clm model.
    sample_by: str | None = None
    # Evaluate once before training, reported as eval_initial_* in metrics.json.
    eval_on_start: bool = True
    # Rows per batched map call when tokenizing/packing (one partial block per batch).
    pack_batch_size: int = bounded(1000, ge=1)


CLM_PACKING = ("blocks", "documents", "padded")


@dataclass
class ClmOptions(LMOptions):
    # How documents become training rows:
    # blocks    - concatenated (EOS between documents) and cut into block_size blocks; attention
    #             crosses document boundaries (GPT-style pretraining; no padding).
    # documents - one example per document (split into block_size pieces), batches packed
    #             padding-free with per-document attention and positions (llmtune.packing).
    # padded    - one example per document (split the same way), batches padded: the baseline
    #             "documents" is measured against.
    packing: str = "blocks"
    # Sliding-window perplexity for evaluation: windows of block_size tokens advancing by
    # `stride`, each token scored once with up to block_size - stride tokens of left context.
    # None = non-overlapping blocks. Materialises the eval split's token ids (bounded).
    stride: int | None = bounded(None, ge=1)
    # Generation quality at evaluation when the eval rows also hold a prompt and a reference
    # continuation: greedy continuations of this many rows (-1 = all, 0 = off), up to
    # max_new_tokens, scored with eval_generation_metrics. Columns: prompt_column /
    # reference_column (None = prompt / reference, completion, response, target).
    eval_generation_rows: int = 0
    eval_generation_metrics: list[str] = field(default_factory=lambda: ["rougeL", "bleu", "exact_match"])
    prompt_column: str | None = None
    reference_column: str | None = None
    max_new_tokens: int = 64


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
        if o.sample_by is not None and o.sample_by not in SAMPLE_BY:
            p.append(f"options.sample_by must be one of {', '.join(SAMPLE_BY)}, got {o.sample_by!r}")
        if o.sample_by == "stream" and self.objective != "clm":
            p.append("options.sample_by=stream is for clm; mlm reads a .txt by line, paragraph or document")
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
            tokenizer = load_tokenizer(m.tokenizer or ctx.model_path, m)
        self.check_tokenizer(tokenizer, m.tokenizer or m.name_or_path or ctx.model_path)
        return tokenizer

    def check_tokenizer(self, tokenizer: Any, where: str | None) -> None:
        """Objective-specific requirements (raise LlmtuneError naming the tokenizer)."""

    def _model_config(self, ctx: RunContext) -> Any:
        """The architecture: ``model.config`` (preset, config.json, Hub config) or the model's own."""
        from llmtune.modeling import load_config, model_architecture

        m = ctx.cfg.model
        if m.config:
            return model_architecture(m)
        return load_config(m.name_or_path, m)

    def load_data(self, ctx: RunContext) -> Any:
        from llmtune.data import load_raw

        cfg = ctx.cfg
        return load_raw(cfg.data, seed=cfg.train.seed, carve_validation=ctx.training, text_sample_by=sample_by(ctx))

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
                desc=f"tokenizing and packing {split}", layout=getattr(cfg.options, "packing", "blocks"),
                stream=sample_by(ctx) == "stream",
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
            **lm_eval_batch_args(ctx, ctx.cfg.options.block_size),
        }

    def collator(self, ctx: RunContext) -> Any:
        return LMCollator(ctx.tokenizer, objective=self.objective, options=ctx.cfg.options, seed=ctx.cfg.train.seed)

    # ---- evaluation -------------------------------------------------------------------------
    def eval_step(self, ctx: RunContext) -> Any:
        return lm_eval_step(shift=self.objective == "clm")

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
        return {k: v for k, v in metrics.items() if k.split("_", 1)[-1] in keep or k.startswith("eval_gen_")}


class CausalLMTask(LMTask):
    name = "clm"
    aliases = ("causal-lm", "pretrain-clm")
    objective = "clm"
    description = "causal language-model pretraining (GPT-style), from scratch or continued"
    Options = ClmOptions
    auto_model = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    main_metric = "perplexity"
    pipeline_tag = "text-generation"
    preset_types = ("gpt2", "llama")
    metric_names = ("loss", "perplexity", "tokens")
    generative = True

    def _block_problems(self, o: Any) -> list[str]:
        if o.packing not in CLM_PACKING:
            return [f"options.packing must be one of {', '.join(CLM_PACKING)}, got {o.packing!r}"]
        if o.stride is None:
            return []
        if o.block_size is not None and o.stride > o.block_size:
            return [f"options.stride ({o.stride}) must not exceed options.block_size ({o.block_size})"]
        if o.packing != "blocks":
            return [f"options.stride (sliding-window eval) needs options.packing=blocks, got {o.packing}"]
        return []

    def predict(self, ctx: RunContext, trainer: Any, raw_split: Any, split: Any) -> tuple[dict, list[dict]]:
        metrics, records = super().predict(ctx, trainer, raw_split, split)
        o = ctx.cfg.options
        if not o.eval_generation_rows or not trainer.is_world_process_zero():
            return metrics, records
        from llmtune.data import column_names, pick_column
        from llmtune.inference.generation import generate_texts
        from llmtune.inference.predict import greedy_settings
        from llmtune.tasks.common.lm_eval import generation_quality

        cols = column_names(raw_split)
        prompt_col = pick_column(cols, o.prompt_column, ("prompt",), "prompt", "options.prompt_column")
        ref_col = pick_column(cols, o.reference_column, REFERENCE_COLUMNS, "reference", "options.reference_column")
        rows = (
            list(raw_split)
            if o.eval_generation_rows == -1
            else list(raw_split.select(range(min(o.eval_generation_rows, len(raw_split)))))
        )
        prompts = [str(r[prompt_col] or "") for r in rows]
        model = trainer.accelerator.unwrap_model(trainer.model)
        run = generate_texts(
            model, ctx.tokenizer, prompts, greedy_settings(o.max_new_tokens),
            batch_size=trainer.args.per_device_eval_batch_size, add_special_tokens=True,
        )  # fmt: skip
        records = [
            {"input": p, "reference": str(r[ref_col] or ""), "prediction": g.text}
            for p, r, g in zip(prompts, rows, run.outputs, strict=True)
        ]
        metrics.update(generation_quality(records, run, o))
        return metrics, records

    def validate_options(self, o: Any) -> list[str]:
        from llmtune.metrics.generation import GENERATION_METRICS

        p = self._block_problems(o)
        if o.eval_generation_rows < -1:
            p.append(
                f"options.eval_generation_rows must be -1 (all), 0 (off) or a row count, got {o.eval_generation_rows}"
            )
        if o.max_new_tokens < 1:
            p.append(f"options.max_new_tokens must be >= 1, got {o.max_new_tokens}")
        unknown = [m for m in o.eval_generation_metrics if m not in GENERATION_METRICS]
        if unknown or not o.eval_generation_metrics:
            p.append(
                f"options.eval_generation_metrics: {', '.join(unknown) or 'empty'} not known; pick from "
                f"{', '.join(GENERATION_METRICS)}"
            )
        return p

    # ---- inference ----------------------------------------------------------------------------
    def prepare_inference(self, ctx: RunContext, columns: list[str]) -> None:
        from llmtune.data import pick_column

        col = pick_column(columns, ctx.cfg.data.text_column, ("prompt", *TEXT_COLUMNS), "text", "data.text_column")
        ctx.columns = {"text": col}

    def predict_batch(self, ctx: RunContext, rows: list[dict], settings: Any) -> list[dict]:
        from llmtune.inference.generation import generate_texts
        from llmtune.inference.predict import greedy_settings

        texts = [str(r.get(ctx.columns["text"]) or "") for r in rows]
        gen = settings.generation or greedy_settings(settings.max_new_tokens or ctx.cfg.options.max_new_tokens)
        run = generate_texts(ctx.model, ctx.tokenizer, texts, gen, batch_size=len(texts), add_special_tokens=True)
        return [{"text": t, "generated_text": g.text} for t, g in zip(texts, run.outputs, strict=True)]

    def check_model(self, ctx: RunContext, model: Any) -> None:
        if ctx.cfg.options.packing == "documents":
            from llmtune.packing import check_model_takes_positions, probe_document_attention

            check_model_takes_positions(model, "options.packing=documents")
            probe_document_attention(model, "options.packing=documents")

    def eval_collator(self, ctx: RunContext) -> Any:
        from llmtune.packing import multi_process

        if ctx.cfg.options.packing == "documents" and multi_process():
            return super().collator(ctx)  # padded rows of the same documents
        return None

    def collator(self, ctx: RunContext) -> Any:
        if ctx.cfg.options.packing != "documents":
            return super().collator(ctx)
        from llmtune.packing import PaddingFreeCollator, layout_for

        tok = ctx.tokenizer
        return PaddingFreeCollator(
            pad_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            layout=layout_for(ctx.cfg.model.attn_implementation),
        )

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
        if sample_by(ctx) == "stream":
            # One stream: re-cut it into exact blocks (packing restarts a block every map batch).
            return sliding_windows(packed, block_size, min(stride or block_size, block_size))
        if not stride:
            return packed
        return sliding_windows(packed, block_size, min(stride, block_size))

    def eval_note(self, ctx: RunContext) -> str | None:
        o = ctx.cfg.options
        mode = sample_by(ctx)
        from llmtune.data import is_text_data

        if not is_text_data(ctx.cfg.data.dataset) and mode != "stream":
            mode = "rows"
        text = {
            "rows": "each row a document followed by EOS",
            "stream": "the text as one token stream (no EOS between lines)",
            "line": "each line a document followed by EOS",
            "paragraph": "each paragraph a document followed by EOS",
            "document": "each file one document followed by EOS",
        }[mode]
        if o.stride and o.stride < o.block_size:
            windows = (
                f"windows of {o.block_size} tokens every {o.stride} (each token scored once, "
                f"with at least {o.block_size - o.stride} tokens of context after the first window)"
            )
        else:
            windows = f"non-overlapping blocks of {o.block_size} tokens (options.stride for a sliding window)"
        how = "" if mode == "rows" else f" [options.sample_by={mode}]"
        return f"perplexity over {text}{how} in {windows}"


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
    layout: str = "blocks",
    stream: bool = False,
) -> Any:
    """Tokenize ``text_column`` and pack it into blocks (columns: input_ids, special_tokens_mask
    [, word_starts]). Works on ``Dataset`` (cached) and ``IterableDataset`` (lazy) alike.

    ``layout`` (clm only): ``blocks`` concatenates documents into full blocks; ``documents`` and
    ``padded`` keep one document per row, split into pieces of at most ``block_size`` tokens
    (the collator then packs or pads them).

    ``stream`` (clm): rows are pieces of one text (lines with their line breaks); each map batch
    is joined and tokenized as one string, without EOS, the tokenizer's leading special tokens
    (e.g. BOS) only at the start of the first batch."""
    from llmtune.data import column_names

    if layout != "blocks" and objective != "clm":
        raise ValueError("per-document layouts are for clm")

    eos = tokenizer.eos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else eos
    prefix, suffix = special_frame(tokenizer) if objective == "mlm" else ([], [])
    content = block_size - len(prefix) - len(suffix)
    if content < 2:
        raise LlmtuneError(f"options.block_size {block_size} leaves no room for text after the special tokens")
    special_ids = set(tokenizer.all_special_ids)

    lead = special_frame(tokenizer)[0] if stream else []

    def pack(batch: dict, indices: list[int]) -> dict:
        if stream:
            joined = "".join(t for t in batch[text_column] if isinstance(t, str))
            texts = [joined] if joined else []
        else:
            texts = [t for t in batch[text_column] if isinstance(t, str) and t.strip()]
        if not texts:
            return {"input_ids": [], "special_tokens_mask": [], **({"word_starts": []} if whole_words else {})}
        # clm: the tokenizer's own template (e.g. Llama's BOS) + EOS; mlm: framing is per block.
        enc = tokenizer(texts, add_special_tokens=objective == "clm" and not stream)
        if stream:
            head = lead if indices and indices[0] == 0 else []
            ids = head + enc["input_ids"][0]
            blocks = [ids[b : b + content] for b in range(0, len(ids), content)]
            blocks = [b for b in blocks if len(b) >= 2]
            return {
                "input_ids": blocks,
                "special_tokens_mask": [[1 if t in special_ids else 0 for t in b] for b in blocks],
            }
        stream_ids: list[int] = []
        starts: list[int] = []
        for i, ids in enumerate(enc["input_ids"]):
            closer = eos if objective == "clm" else sep
            tail = [] if ids and ids[-1] == closer else [closer]
            stream_ids.extend(ids)
            stream_ids.extend(tail)
            if whole_words:
                words = enc.word_ids(i)
                prev = None
                for w in words:
                    starts.append(1 if w is None or w != prev else 0)
                    prev = w
                starts.extend([1] * len(tail))
        if layout != "blocks":
            docs = []
            for ids in enc["input_ids"]:
                ids = ids if ids and ids[-1] == eos else [*ids, eos]
                docs.extend(p for p in (ids[b : b + content] for b in range(0, len(ids), content)) if len(p) >= 2)
            return {"input_ids": docs, "special_tokens_mask": [[int(t in special_ids) for t in d] for d in docs]}
        blocks, block_starts = [], []
        for begin in range(0, len(stream_ids), content):
            chunk = stream_ids[begin : begin + content]
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

    from llmtune.datacache import map_fingerprint

    extra = {}
    fingerprint = map_fingerprint(
        ds, tokenizer, (__name__,), objective=objective, block_size=block_size, text_column=text_column,
        batch_size=batch_size, whole_words=whole_words, layout=layout, stream=stream,
    )  # fmt: skip
    if fingerprint is not None:  # a Dataset: cached by what the blocks depend on (llmtune.datacache)
        extra["new_fingerprint"] = fingerprint
    return _map(
        ds,
        pack,
        batched=True,
        with_indices=True,
        batch_size=batch_size,
        remove_columns=column_names(ds),
        num_proc=num_proc,
        desc=desc,
        **extra,
    )


def sliding_windows(packed: Any, block_size: int, stride: int) -> Any:
    """Eval windows over the split's whole token stream (the usual strided perplexity: each token
    is a target once, with up to ``block_size - stride`` tokens of context; ``stride ==
    block_size``: consecutive blocks). Built as Arrow arrays from numpy: memory is a few bytes
    per token of the split, never Python lists of it."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset

    if getattr(packed, "_indices", None) is not None:
        packed = packed.flatten_indices()
    column = packed.data.column("input_ids")
    stream = pc.list_flatten(column).to_numpy() if len(column) else np.zeros(0, dtype=np.int64)
    stream = np.asarray(stream, dtype=np.int64)
    n = len(stream)
    begins, ends = [], []
    for begin in range(0, n, stride):
        end = min(begin + block_size, n)
        begins.append(begin)
        ends.append(end)
        if end == n:
            break
    begins_a, ends_a = np.asarray(begins, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    previous = np.concatenate([[0], ends_a[:-1]]) if len(ends_a) else ends_a
    lengths = ends_a - begins_a
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate([stream[b:e] for b, e in zip(begins, ends, strict=True)]) if begins else stream
    labels = ids.copy()
    # Within each window, only the tokens past the previous window's end are targets.
    context = lengths - (ends_a - previous)
    position = np.arange(len(ids), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    labels[position < np.repeat(context, lengths)] = -100
    table = pa.table(
        {
            "input_ids": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(ids)),
            "labels": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(labels)),
        }
    )
    return Dataset(table)


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


def sample_by(ctx: RunContext) -> str:
    """How a .txt is read: ``options.sample_by``, else stream when `llmtune eval` scores a clm."""
    from llmtune.data import is_text_data

    chosen = ctx.cfg.options.sample_by
    if chosen is not None:
        return chosen
    if not ctx.training and ctx.cfg.task == "clm" and is_text_data(ctx.cfg.data.dataset):
        return "stream"
    return "line"
