"""What clm and mlm share: config checks, tokenizer and model config, block size, packed data,
model building and perplexity evaluation (:class:`LMTask`).

Module level stays torch-free (config validation imports it).
"""

from __future__ import annotations

from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.modeling import max_positions
from llmtune.tasks.base import Default, RunContext, Task, from_scratch, require_content
from llmtune.tasks.common.lm_eval import lm_eval_batch_args, lm_eval_step, perplexity, total_loss
from llmtune.tasks.lm.collator import LMCollator
from llmtune.tasks.lm.data import is_streaming, pack_dataset
from llmtune.tasks.lm.options import DEFAULT_BLOCK, SAMPLE_BY, TEXT_COLUMNS, sample_by


def run_block_size(ctx: RunContext) -> int:
    """The run's block size: resolved by ``prepare`` from the model and tokenizer, or as saved."""
    return ctx.resolved.get("options.block_size", ctx.cfg.options.block_size)


def _stream_with_steps(cfg: Any) -> bool:
    return bool(cfg.data.streaming and cfg.train.max_steps > 0)


class LMTask(Task):
    family = "lm"
    greater_is_better = False
    objective = ""

    defaults = (
        Default("train.group_by_length", False, "packed blocks all have one length: grouping only costs a pass"),
        Default(
            "train.learning_rate", 5e-4, "random initialisation wants a larger step than continued pretraining",
            when=from_scratch,
        ),
        Default("train.eval_strategy", "steps", "a stream has no epochs to evaluate at", when=_stream_with_steps),
        Default(
            "train.eval_steps", lambda cfg: max(1, cfg.train.max_steps // 4), "a stream evaluates 4 times in max_steps",
            when=_stream_with_steps, unless_set=("train.eval_strategy",),
        ),
    )  # fmt: skip

    # ---- config time (torch-free) -------------------------------------------------------

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
        ctx.resolved["options.block_size"] = block_size  # saved in llmtune_config.yaml: eval reuses it
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
        from llmtune.loading import load_model
        from llmtune.modeling import model_from_config

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
        if limit is not None and run_block_size(ctx) > limit:
            raise LlmtuneError(
                f"options.block_size {run_block_size(ctx)} exceeds the model's {limit} positions: "
                f"pass --block-size {limit} or less"
            )
        return model

    def training_args(self, ctx: RunContext) -> dict:
        return {
            # The collator needs special_tokens_mask/word_starts; it returns only model inputs.
            "remove_unused_columns": False,
            "eval_on_start": bool(ctx.cfg.options.eval_on_start and ctx.training and ctx.state.get("has_validation")),
            **lm_eval_batch_args(ctx, run_block_size(ctx)),
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
