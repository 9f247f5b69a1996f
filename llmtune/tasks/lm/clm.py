"""Causal language-model pretraining (GPT-style): ``clm``.

Module level stays torch-free (config validation imports it).
"""

from __future__ import annotations

from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.base import RunContext
from llmtune.tasks.common.chunked_loss import check_run_model
from llmtune.tasks.common.lm_eval import generation_quality
from llmtune.tasks.lm.data import sliding_windows
from llmtune.tasks.lm.options import CLM_PACKING, REFERENCE_COLUMNS, TEXT_COLUMNS, ClmOptions, sample_by
from llmtune.tasks.lm.task import LMTask, run_block_size


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
    causal_lm_loss = True

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
        check_run_model(ctx.cfg, model)
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
        o, size = ctx.cfg.options, run_block_size(ctx)
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
        if o.stride and o.stride < size:
            windows = (
                f"windows of {size} tokens every {o.stride} (each token scored once, "
                f"with at least {size - o.stride} tokens of context after the first window)"
            )
        else:
            windows = f"non-overlapping blocks of {size} tokens (options.stride for a sliding window)"
        how = "" if mode == "rows" else f" [options.sample_by={mode}]"
        return f"perplexity over {text}{how} in {windows}"
