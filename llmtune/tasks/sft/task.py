"""The sft task's hooks (:class:`SFTTask`): config checks, tokenizer with its chat template, data,
model and collators, evaluation (token-weighted perplexity, generated answers) and predict.

Module level stays torch-free (config validation imports it).
"""

from __future__ import annotations

import itertools
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.base import (
    Default,
    RunContext,
    Task,
    require_content,
    sequence_limit,
    tokenize_split,
    unused_data_columns,
)
from llmtune.tasks.common.chat import apply_chat_template_option, chat_template_problem
from llmtune.tasks.common.chunked_loss import check_run_model
from llmtune.tasks.common.lm_eval import generation_quality, lm_eval_batch_args, lm_eval_step, perplexity, total_loss
from llmtune.tasks.sft.data import batch_encoder, column_layout, inference_layout, row_conversation
from llmtune.tasks.sft.generation import answer_rows, generate_samples, num_samples
from llmtune.tasks.sft.options import SFTOptions


class SFTTask(Task):
    name = "sft"
    aliases = ("instruction-tuning", "chat")
    family = "sft"
    description = "supervised instruction tuning of a causal LM (prompt/response or chat messages), loss on answers"
    Options = SFTOptions
    auto_model = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    main_metric = "perplexity"
    greater_is_better = False
    pipeline_tag = "text-generation"
    generative = True
    causal_lm_loss = True

    sequence_cap = "positions"
    defaults = (
        Default(
            "train.group_by_length", False, "packed batches have no padding to save: grouping only makes them less random",
            when=lambda cfg: bool(cfg.options.packing),
        ),
    )  # fmt: skip

    # ---- config -------------------------------------------------------------------------------

    def validate(self, cfg: Any) -> list[str]:
        from llmtune.modeling import from_config_problems

        o, p = cfg.options, from_config_problems(cfg)
        if o.eval_generation_rows < -1:
            p.append(
                f"options.eval_generation_rows must be -1 (all), 0 (off) or a row count, got {o.eval_generation_rows}"
            )
        from llmtune.metrics.generation import GENERATION_METRICS

        unknown = [m for m in o.eval_generation_metrics if m not in GENERATION_METRICS]
        if unknown or not o.eval_generation_metrics:
            p.append(
                f"options.eval_generation_metrics: {', '.join(unknown) or 'empty'} not known; pick from "
                f"{', '.join(GENERATION_METRICS)}"
            )
        problem = chat_template_problem(o.chat_template)
        if problem:
            p.append(problem)
        if o.messages_column and (o.prompt_column or o.response_column):
            p.append("set options.messages_column or options.prompt_column/response_column, not both")
        p.extend(unused_data_columns(cfg, "sft", "options.prompt_column/response_column"))
        return p

    # ---- tokenizer and chat template ----------------------------------------------------------
    def load_tokenizer(self, ctx: RunContext, **kwargs: Any) -> Any:
        tokenizer = super().load_tokenizer(ctx, **kwargs)
        if apply_chat_template_option(tokenizer, ctx.cfg.options.chat_template):
            ctx.state["chat_template_note"] = "tokenizer has no chat template: using chatml"
        if tokenizer.eos_token_id is None:
            raise LlmtuneError(f"tokenizer of '{ctx.model_path}' has no EOS token: sft needs one to teach stopping")
        return tokenizer

    # ---- data ---------------------------------------------------------------------------------

    def conversation(self, ctx: RunContext, row: dict) -> list[dict]:
        """One row as chat messages (system prompt first when configured)."""
        return row_conversation(ctx, row)

    def prepare(self, ctx: RunContext, raw: Any) -> dict[str, Any]:
        cfg = ctx.cfg
        first = raw["train"] if "train" in raw else raw["validation"]
        ctx.columns = column_layout(ctx, first)
        max_length = sequence_limit(ctx, cap=self.sequence_cap)

        out = {}
        for split, ds in raw.items():
            layout = ctx.columns
            require_content(ds, layout.get("response"), split, "response", "options.response_column")
            require_content(ds, layout.get("messages"), split, "messages", "options.messages_column")
            encoded = tokenize_split(ctx, ds, split, batch_encoder(ctx, max_length))
            # Rows whose answers were truncated away teach nothing (and would divide by zero).
            out[split] = encoded.filter(
                lambda b: [any(x != -100 for x in labels) for labels in b["labels"]],
                batched=True,
                desc="dropping empty",
            )
            if not cfg.data.streaming and len(out[split]) == 0:
                fix = (
                    "raise data.max_length or shorten the prompts"
                    if max_length == cfg.data.max_length
                    else "shorten the prompts (the model takes no more positions)"
                )
                raise LlmtuneError(
                    f"split '{split}' has no example with answer tokens within {max_length} tokens "
                    f"(data.max_length={cfg.data.max_length}): {fix}"
                )
        return out

    # ---- model --------------------------------------------------------------------------------
    def build_model(self, ctx: RunContext) -> Any:
        from llmtune.modeling import model_from_config

        m = ctx.cfg.model
        model = model_from_config(ctx, self.auto_model) if m.config and not m.name_or_path else super().build_model(ctx)
        if model.config.pad_token_id is None and ctx.tokenizer.pad_token_id is not None:
            model.config.pad_token_id = ctx.tokenizer.pad_token_id
        if ctx.cfg.options.packing:
            from llmtune.packing import check_model_takes_positions

            check_model_takes_positions(model, "options.packing")
        return model

    def check_model(self, ctx: RunContext, model: Any) -> None:
        check_run_model(ctx.cfg, model)
        if ctx.cfg.options.packing:
            from llmtune.packing import probe_document_attention

            probe_document_attention(model, "options.packing")

    def eval_collator(self, ctx: RunContext) -> Any:
        from llmtune.packing import multi_process

        if ctx.cfg.options.packing and multi_process():
            return self.padded_collator(ctx)
        return None

    def padded_collator(self, ctx: RunContext) -> Any:
        from transformers import DataCollatorForSeq2Seq

        # Pads input_ids/attention_mask with the pad token and labels with -100 (decoder-only is fine).
        return DataCollatorForSeq2Seq(ctx.tokenizer, label_pad_token_id=-100, padding=True)

    def collator(self, ctx: RunContext) -> Any:
        if ctx.cfg.options.packing:
            from llmtune.packing import PaddingFreeCollator, layout_for

            tok = ctx.tokenizer
            return PaddingFreeCollator(
                pad_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                layout=layout_for(ctx.cfg.model.attn_implementation),
            )
        return self.padded_collator(ctx)

    # ---- evaluation ---------------------------------------------------------------------------
    def training_args(self, ctx: RunContext) -> dict:
        # Packed or padded, an eval batch holds at most batch x max_length tokens.
        return lm_eval_batch_args(ctx, sequence_limit(ctx, cap=self.sequence_cap))

    def eval_step(self, ctx: RunContext) -> Any:
        # Two numbers per row ([summed NLL, tokens]) instead of [B, L, vocab] logits.
        return lm_eval_step(shift=True)

    def eval_note(self, ctx: RunContext) -> str | None:
        if ctx.cfg.options.num_samples is None and num_samples(ctx) == 0:
            return "no generated answers on CPU (slow): set options.num_samples=N to export N greedy answers"
        return None

    def compute_metrics(self, ctx: RunContext) -> Any:
        def compute(eval_pred: Any) -> dict:
            loss, count = total_loss(eval_pred.predictions)
            # "token_loss": the Trainer overwrites eval_loss with its mean of batch means.
            return {"token_loss": loss, "perplexity": perplexity(loss), "tokens": count}

        return compute

    def predict(self, ctx: RunContext, trainer: Any, raw_split: Any, split: Any) -> tuple[dict, list[dict]]:
        output = trainer.predict(split, metric_key_prefix="eval")
        metrics = dict(output.metrics)
        if "eval_token_loss" in metrics:  # token-weighted, over the answer tokens
            metrics["eval_loss"] = metrics.pop("eval_token_loss")
        o = ctx.cfg.options
        scored = o.eval_generation_rows
        n = -1 if scored == -1 else max(num_samples(ctx), scored)
        if n == 0 or not trainer.is_world_process_zero():
            return metrics, []
        rows = list(raw_split) if n == -1 else list(itertools.islice(iter(raw_split), n))
        model = trainer.accelerator.unwrap_model(trainer.model)
        records, run = generate_samples(ctx, model, rows, trainer.args.per_device_eval_batch_size)
        if scored:
            metrics.update(generation_quality(records if scored == -1 else records[:scored], run, o))
        return metrics, records

    # ---- inference ----------------------------------------------------------------------------
    def prepare_inference(self, ctx: RunContext, columns: list[str]) -> None:
        """A messages column (the conversation so far) or a prompt column (+ input); txt: the line."""
        ctx.columns = inference_layout(ctx, columns)

    def predict_batch(self, ctx: RunContext, rows: list[dict], settings: Any) -> list[dict]:
        return answer_rows(ctx, rows, settings)

    def headline(self, metrics: dict) -> dict:
        keep = ("loss", "perplexity", "tokens")
        return {k: v for k, v in metrics.items() if k.split("_", 1)[-1] in keep or k.startswith("eval_gen_")}
