"""Supervised fine-tuning (instruction tuning) of a causal LM: ``sft``.

Data: prompt/response columns (``prompt``/``instruction`` [+ ``input``]/``question`` ->
``response``/``output``/``answer``/``completion``) or a ``messages`` column of chat turns
(``[{"role": ..., "content": ...}]``; ShareGPT's ``conversations`` with ``from``/``value`` too).
A prompt/response row is a one-turn conversation, so both go through one path: the tokenizer's
chat template renders the conversation (a named fallback, ChatML by default, when the tokenizer
has none; the template used is saved with the tokenizer so inference renders the same way).

Loss only on assistant tokens: each assistant turn's span is found by rendering the
conversation up to that turn with ``add_generation_prompt=True`` and with the turn itself; the
text in between is the turn's tokens (labels kept), everything else gets label -100. Segments
are tokenized one by one without special tokens (as ``apply_chat_template`` does), so the
prompt's tokens are exactly what inference feeds the model. An EOS is appended to each
assistant turn that lacks one, so the model learns to stop.

``options.packing``: padding-free batches (:mod:`llmtune.packing`): each batch's examples are
laid end to end in a few rows, ``position_ids`` restart at 0 for each example and attention
stays within an example (block-diagonal on sdpa/eager/flex, varlen on FlashAttention-2), so the
loss equals that of padded batches of the same examples, for less compute. Used for the eval
loop too.

LoRA/DoRA/IA3 and QLoRA: the shared ``peft:`` section (:mod:`llmtune.adapters`), as for every task.

Evaluation: token-weighted loss and perplexity over the assistant tokens, plus greedy
generations for the first ``options.num_samples`` validation prompts (predictions.jsonl).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from llmtune.config import bounded
from llmtune.errors import LlmtuneError
from llmtune.inference.generation import END_OF_TURN, cut_at_end_of_turn, stop_token_ids  # noqa: F401 (re-exported)
from llmtune.tasks.base import RunContext, Task, require_content, tokenize_split
from llmtune.tasks.common.chat import (
    apply_chat_template_option,
    chat_template_problem,
    normalize_messages,
    render,
    segment_ids,
)
from llmtune.tasks.common.lm_eval import generation_quality

PROMPT_COLUMNS = ("prompt", "instruction", "question", "query", "input")
INPUT_COLUMNS = ("input", "context")
RESPONSE_COLUMNS = ("response", "output", "answer", "completion")
MESSAGES_COLUMNS = ("messages", "conversations", "conversation")


@dataclass
class SFTOptions:
    # Columns; None = auto-detect. messages_column wins when present.
    prompt_column: str | None = None
    # Optional extra input appended to the prompt (Alpaca's "input"), after a blank line.
    input_column: str | None = None
    response_column: str | None = None
    messages_column: str | None = None
    # A system message put first in every conversation that has none.
    system_prompt: str | None = None
    # Chat template: a name (chatml, plain), a Jinja template string, or None = the tokenizer's
    # own, falling back to chatml when it has none.
    chat_template: str | None = None
    # Padding-free packing of each batch (no cross-example attention; see the module doc).
    packing: bool = False
    # Validation prompts whose greedy generations are exported (predictions.jsonl), and their
    # length limit. None = 16 on a GPU, 0 on CPU, where generating dominates evaluation time.
    num_samples: int | None = bounded(None, ge=0)
    max_new_tokens: int = bounded(128, ge=1)
    # Generation quality at evaluation (end of training and `llmtune eval`): greedy answers to
    # this many eval rows (-1 = all, 0 = off) scored against the reference answers with
    # eval_generation_metrics (rouge1/rouge2/rougeL/rougeLsum, bleu, chrf, exact_match).
    eval_generation_rows: int = 0
    eval_generation_metrics: list[str] = field(default_factory=lambda: ["rougeL", "bleu", "exact_match"])


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

    # ---- config -------------------------------------------------------------------------------
    def apply_defaults(self, cfg: Any, tree: dict) -> None:
        # Packed batches have no padding to save: length grouping would only make them less random.
        if cfg.options.packing and "group_by_length" not in (tree.get("train") or {}):
            cfg.train.group_by_length = False

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
        for key in ("text_column", "text_pair_column", "label_column"):
            if getattr(cfg.data, key):
                p.append(f"data.{key} is not used by sft: name columns with options.prompt_column/response_column")
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
    def _layout(self, ctx: RunContext, ds: Any) -> dict:
        """Which columns hold the conversation: {"messages": col} or prompt/input/response."""
        from llmtune.data import column_names, pick_column

        o, cols = ctx.cfg.options, column_names(ds)
        if o.messages_column or (not o.prompt_column and any(c in cols for c in MESSAGES_COLUMNS)):
            return {
                "messages": pick_column(ds, o.messages_column, MESSAGES_COLUMNS, "messages", "options.messages_column")
            }
        prompt = pick_column(ds, o.prompt_column, PROMPT_COLUMNS, "prompt", "options.prompt_column")
        response = pick_column(ds, o.response_column, RESPONSE_COLUMNS, "response", "options.response_column")
        extra = o.input_column or next(
            (c for c in INPUT_COLUMNS if c in cols and c != prompt and o.prompt_column is None), None
        )
        if o.input_column and o.input_column not in cols:
            raise LlmtuneError(
                f"input column '{o.input_column}' (options.input_column) not found; columns: {', '.join(cols)}"
            )
        return {"prompt": prompt, "input": extra, "response": response}

    def conversation(self, ctx: RunContext, row: dict) -> list[dict]:
        """One row as chat messages (system prompt first when configured)."""
        layout = ctx.columns
        if "messages" in layout:
            messages = normalize_messages(row[layout["messages"]], layout["messages"])
        else:
            prompt = str(row[layout["prompt"]] or "")
            extra = row.get(layout["input"]) if layout.get("input") else None
            if extra:
                prompt = f"{prompt}\n\n{extra}"
            messages = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": str(row[layout["response"]] or "")},
            ]
        system = ctx.cfg.options.system_prompt
        if system and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": system}, *messages]
        return messages

    def prepare(self, ctx: RunContext, raw: Any) -> dict[str, Any]:
        cfg, tokenizer = ctx.cfg, ctx.tokenizer
        first = raw["train"] if "train" in raw else raw["validation"]
        ctx.columns = self._layout(ctx, first)
        from llmtune.modeling import sequence_limit

        max_length = sequence_limit(ctx)

        def encode(batch: dict) -> dict:
            out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "length": []}
            keys = list(batch)
            for i in range(len(batch[keys[0]])):
                row = {k: batch[k][i] for k in keys}
                ids, labels = encode_conversation(tokenizer, self.conversation(ctx, row), max_length)
                out["input_ids"].append(ids)
                out["attention_mask"].append([1] * len(ids))
                out["labels"].append(labels)
                out["length"].append(len(ids))
            return out

        out = {}
        for split, ds in raw.items():
            layout = ctx.columns
            require_content(ds, layout.get("response"), split, "response", "options.response_column")
            require_content(ds, layout.get("messages"), split, "messages", "options.messages_column")
            encoded = tokenize_split(ctx, ds, split, encode)
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
        from llmtune.modeling import sequence_limit
        from llmtune.tasks.common.lm_eval import lm_eval_batch_args

        # Packed or padded, an eval batch holds at most batch x max_length tokens.
        return lm_eval_batch_args(ctx, sequence_limit(ctx))

    def eval_step(self, ctx: RunContext) -> Any:
        from llmtune.tasks.common.lm_eval import lm_eval_step

        # Two numbers per row ([summed NLL, tokens]) instead of [B, L, vocab] logits.
        return lm_eval_step(shift=True)

    def eval_note(self, ctx: RunContext) -> str | None:
        if ctx.cfg.options.num_samples is None and num_samples(ctx) == 0:
            return "no generated answers on CPU (slow): set options.num_samples=N to export N greedy answers"
        return None

    def compute_metrics(self, ctx: RunContext) -> Any:
        from llmtune.tasks.common.lm_eval import perplexity, total_loss

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
        records, run = self.generate_samples(ctx, model, rows, trainer.args.per_device_eval_batch_size)
        if scored:
            metrics.update(generation_quality(records if scored == -1 else records[:scored], run, o))
        return metrics, records

    def generate_samples(self, ctx: RunContext, model: Any, rows: list[dict], batch_size: int) -> tuple[list, Any]:
        """Greedy answers to the last user turn of each row: records {input, reference, prediction}
        and the :class:`~llmtune.inference.generation.GenerationRun` (token counts, seconds)."""
        from llmtune.inference.generation import generate_texts
        from llmtune.inference.predict import greedy_settings

        prompts, records = [], []
        for row in rows:
            messages = self.conversation(ctx, row)
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            history = messages[:last] if last is not None else messages
            prompts.append(render(ctx.tokenizer, history, add_generation_prompt=True))
            shown = history[-1]["content"] if "messages" not in ctx.columns else history
            reference = messages[last]["content"] if last is not None else None
            records.append({"input": shown, "reference": reference})
        run = generate_texts(model, ctx.tokenizer, prompts, greedy_settings(ctx.cfg.options.max_new_tokens), batch_size)
        for record, out in zip(records, run.outputs, strict=True):
            record["prediction"] = out.text
        return records, run

    # ---- inference ----------------------------------------------------------------------------
    def prepare_inference(self, ctx: RunContext, columns: list[str]) -> None:
        """A messages column (the conversation so far) or a prompt column (+ input); txt: the line."""
        from llmtune.data import pick_column

        o = ctx.cfg.options
        if o.messages_column or (not o.prompt_column and any(c in columns for c in MESSAGES_COLUMNS)):
            col = pick_column(columns, o.messages_column, MESSAGES_COLUMNS, "messages", "options.messages_column")
            ctx.columns = {"messages": col}
            return
        prompt = pick_column(columns, o.prompt_column, (*PROMPT_COLUMNS, "text"), "prompt", "options.prompt_column")
        extra = o.input_column or next((c for c in INPUT_COLUMNS if c in columns and c != prompt), None)
        if o.input_column and o.input_column not in columns:
            raise LlmtuneError(
                f"input column '{o.input_column}' (options.input_column) not found; columns: {', '.join(columns)}"
            )
        ctx.columns = {"prompt": prompt, "input": extra}

    def predict_batch(self, ctx: RunContext, rows: list[dict], settings: Any) -> list[dict]:
        from llmtune.inference.generation import generate_texts
        from llmtune.inference.predict import greedy_settings

        prompts, shown = [], []
        for row in rows:
            if "messages" in ctx.columns:
                messages = normalize_messages(row.get(ctx.columns["messages"]), ctx.columns["messages"])
                while messages and messages[-1]["role"] == "assistant":
                    messages = messages[:-1]  # answer the last user turn
                shown.append({"messages": messages})
            else:
                prompt = str(row.get(ctx.columns["prompt"]) or "")
                extra = row.get(ctx.columns["input"]) if ctx.columns.get("input") else None
                shown.append({"prompt": prompt, **({"input": extra} if extra else {})})
                messages = [{"role": "user", "content": f"{prompt}\n\n{extra}" if extra else prompt}]
            system = ctx.cfg.options.system_prompt
            if system and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": system}, *messages]
            prompts.append(render(ctx.tokenizer, messages, add_generation_prompt=True))
        gen = settings.generation or greedy_settings(settings.max_new_tokens or ctx.cfg.options.max_new_tokens)
        run = generate_texts(ctx.model, ctx.tokenizer, prompts, gen, batch_size=len(prompts))
        return [{**s, "generated_text": g.text} for s, g in zip(shown, run.outputs, strict=True)]

    def headline(self, metrics: dict) -> dict:
        keep = ("loss", "perplexity", "tokens")
        return {k: v for k, v in metrics.items() if k.split("_", 1)[-1] in keep or k.startswith("eval_gen_")}


def num_samples(ctx: RunContext) -> int:
    """Generated answers to export: options.num_samples, else 16 on a GPU and none on CPU."""
    chosen = ctx.cfg.options.num_samples
    if chosen is not None:
        return chosen
    import torch

    return 16 if torch.cuda.is_available() else 0


# ---------------------------------------------------------------------------------------------
# conversations -> token ids and labels


def encode_conversation(tokenizer: Any, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels for one conversation: labels are -100 except on assistant turns.

    Each assistant turn is the text between the conversation rendered up to it with a
    generation prompt and rendered with it; turns that do not contain EOS get one appended.
    Turns after the last assistant message are dropped (nothing to learn from them).
    """
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:k], add_generation_prompt=True)
        full = render(tokenizer, messages[: k + 1])
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise LlmtuneError(
                "the chat template does not render conversations prefix by prefix (earlier turns change when a "
                "turn is added), so answers cannot be located: set options.chat_template (chatml or plain)"
            )
        context = segment_ids(tokenizer, prompt[len(done) :])
        answer = segment_ids(tokenizer, full[len(prompt) :])
        if eos not in answer:
            answer.append(eos)
        ids += context + answer
        labels += [-100] * len(context) + answer
        done = full
    if not ids:
        raise LlmtuneError("a conversation has no assistant message to learn from: every row needs an answer")
    return ids[:max_length], labels[:max_length]


TASKS = [SFTTask()]
