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

``options.packing``: padding-free batches via ``DataCollatorWithFlattening`` (a batch is one
row; ``position_ids`` restart at 0 for each example). transformers' masking utilities turn
restarting position ids into a block-diagonal causal mask (eager/sdpa, used when no attention
mask is passed) and FlashAttention reads them directly, so examples never attend to each other.

``options.lora``: LoRA adapters via ``peft``; merged into the base weights when saving
(``options.merge_lora``, default) with the adapters also kept in ``adapter/``, or saved as
adapters only (loaded on top of the base model by ``llmtune eval``).

Evaluation: token-weighted loss and perplexity over the assistant tokens, plus greedy
generations for the first ``options.num_samples`` validation prompts (predictions.jsonl).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.config import bounded
from llmtune.errors import LlmtuneError, one_line
from llmtune.tasks.base import RunContext, Task, require_content, tokenize_split

PROMPT_COLUMNS = ("prompt", "instruction", "question", "query", "input")
INPUT_COLUMNS = ("input", "context")
RESPONSE_COLUMNS = ("response", "output", "answer", "completion")
MESSAGES_COLUMNS = ("messages", "conversations", "conversation")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

# Named chat templates for tokenizers without one (Jinja, as in tokenizer_config.json).
CHAT_TEMPLATES = {
    # ChatML (OpenAI, Qwen, SmolLM2): <|im_start|>role\ncontent<|im_end|>\n
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # No markup: every non-assistant turn is followed by a newline; the EOS appended to each
    # answer ends it. For base models whose tokenizer lacks chat tokens.
    "plain": (
        "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ message['content'] }}"
        "{% if not loop.last %}{{ '\\n' }}{% endif %}{% else %}{{ message['content'] + '\\n' }}{% endif %}{% endfor %}"
    ),
}
# End-of-turn markers stripped from generated text when they are not special tokens.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


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
    # Validation prompts whose greedy generations are exported, and their length limit.
    num_samples: int = bounded(16, ge=0)
    max_new_tokens: int = bounded(128, ge=1)
    # LoRA (pip install 'llmtune[peft]'): rank, scaling alpha, dropout and the module names to
    # adapt (None = peft's default for the architecture; [all-linear] = every linear layer).
    lora: bool = False
    lora_r: int = bounded(16, ge=1)
    lora_alpha: int = bounded(32, gt=0)
    lora_dropout: float = bounded(0.05, ge=0, lt=1)
    lora_target_modules: list[str] | None = None
    # Save the base model with the adapters merged in (plus adapter/); false = adapters only.
    merge_lora: bool = True


class SFTTask(Task):
    name = "sft"
    aliases = ("instruction-tuning", "chat")
    family = "sft"
    description = "supervised instruction tuning of a causal LM (prompt/response or chat messages), loss on answers"
    Options = SFTOptions
    auto_model = "AutoModelForCausalLM"
    main_metric = "perplexity"
    greater_is_better = False
    pipeline_tag = "text-generation"

    # ---- config -------------------------------------------------------------------------------
    def validate(self, cfg: Any) -> list[str]:
        from llmtune.modeling import from_config_problems

        o, p = cfg.options, from_config_problems(cfg)
        tpl = o.chat_template
        if tpl is not None and tpl not in CHAT_TEMPLATES and "{{" not in tpl and "{%" not in tpl:
            p.append(
                f"options.chat_template '{tpl}' is neither a template name ({', '.join(CHAT_TEMPLATES)}) nor Jinja"
            )
        if o.messages_column and (o.prompt_column or o.response_column):
            p.append("set options.messages_column or options.prompt_column/response_column, not both")
        for key in ("text_column", "text_pair_column", "label_column"):
            if getattr(cfg.data, key):
                p.append(f"data.{key} is not used by sft: name columns with options.prompt_column/response_column")
        return p

    # ---- tokenizer and chat template ----------------------------------------------------------
    def load_tokenizer(self, ctx: RunContext, **kwargs: Any) -> Any:
        tokenizer = super().load_tokenizer(ctx, **kwargs)
        wanted = ctx.cfg.options.chat_template
        if wanted is not None:
            tokenizer.chat_template = CHAT_TEMPLATES.get(wanted, wanted)
        elif not tokenizer.chat_template:
            tokenizer.chat_template = CHAT_TEMPLATES["chatml"]  # saved with the model: inference matches
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
        from llmtune.modeling import tokenizer_max_length

        max_length = min(cfg.data.max_length, tokenizer_max_length(tokenizer))

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
                raise LlmtuneError(
                    f"split '{split}' has no example with answer tokens within data.max_length={max_length}: "
                    f"raise data.max_length or shorten the prompts"
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
            import inspect

            if "position_ids" not in inspect.signature(model.forward).parameters:
                raise LlmtuneError(
                    f"options.packing needs a model that takes position_ids; {type(model).__name__} does not: "
                    f"set options.packing=false"
                )
        if ctx.cfg.options.lora:
            model = self._add_lora(ctx, model)
        return model

    def _add_lora(self, ctx: RunContext, model: Any) -> Any:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise LlmtuneError("options.lora needs peft: pip install 'llmtune[peft]'") from None
        o = ctx.cfg.options
        targets: Any = o.lora_target_modules
        if targets in (["all-linear"], ["all_linear"]):
            targets = "all-linear"
        config = LoraConfig(
            task_type="CAUSAL_LM",
            r=o.lora_r,
            lora_alpha=o.lora_alpha,
            lora_dropout=o.lora_dropout,
            target_modules=targets,
        )
        try:
            model = get_peft_model(model, config)
        except ValueError as exc:
            text = one_line(exc)
            raise LlmtuneError(
                f"LoRA cannot wrap {type(model).__name__}: {text}; set options.lora_target_modules "
                f"(e.g. [q_proj, v_proj] or [all-linear])"
            ) from exc
        if ctx.cfg.train.gradient_checkpointing:
            model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
        return model

    def load_trained_model(self, ctx: RunContext) -> Any:
        path = Path(ctx.model_path)
        if not (path / "adapter_config.json").is_file() or (path / "config.json").is_file():
            return super().load_trained_model(ctx)
        # Adapters only (options.merge_lora=false): the base model, then the adapters on top.
        import torch
        import transformers

        from llmtune.config import CONFIG_FILENAME, read_yaml

        try:
            from peft import PeftConfig, PeftModel
        except ImportError:
            raise LlmtuneError(f"{path} holds LoRA adapters: pip install 'llmtune[peft]' to load them") from None
        trained = read_yaml(path / CONFIG_FILENAME).get("model", {}) if (path / CONFIG_FILENAME).is_file() else {}
        base = trained.get("name_or_path") or PeftConfig.from_pretrained(str(path)).base_model_name_or_path
        extra = {"gguf_file": trained["gguf_file"]} if trained.get("gguf_file") else {}
        from llmtune.modeling import model_location

        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                model_location(base), dtype=torch.float32, **extra
            )
        except OSError as exc:
            raise LlmtuneError(f"base model '{base}' of the adapters in {path} cannot be loaded: {exc}") from exc
        return PeftModel.from_pretrained(model, str(path))

    def collator(self, ctx: RunContext) -> Any:
        if ctx.cfg.options.packing:
            return PackedCollator()
        from transformers import DataCollatorForSeq2Seq

        # Pads input_ids/attention_mask with the pad token and labels with -100 (decoder-only is fine).
        return DataCollatorForSeq2Seq(ctx.tokenizer, label_pad_token_id=-100, padding=True)

    def save_extras(self, ctx: RunContext, output_dir: Any) -> None:
        o = ctx.cfg.options
        if not (o.lora and o.merge_lora):
            return
        import shutil

        # The Trainer saved adapters at the top level: keep them in adapter/, put the merged model there.
        output_dir = Path(output_dir)
        adapter_dir = output_dir / "adapter"
        adapter_dir.mkdir(exist_ok=True)
        for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
            if (output_dir / name).is_file():
                shutil.move(str(output_dir / name), str(adapter_dir / name))
        merged = ctx.model.merge_and_unload()
        merged.save_pretrained(output_dir)
        ctx.model = merged

    # ---- evaluation ---------------------------------------------------------------------------
    def preprocess_logits_for_metrics(self, ctx: RunContext) -> Any:
        from llmtune.tasks.lm import row_nll_and_count

        # Two numbers per row ([summed NLL, tokens]) instead of [B, L, vocab] logits.
        return lambda logits, labels: row_nll_and_count(logits, labels, shift=True)

    def compute_metrics(self, ctx: RunContext) -> Any:
        from llmtune.tasks.lm import perplexity, total_loss

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
        n = ctx.cfg.options.num_samples
        if n == 0 or not trainer.is_world_process_zero():
            return metrics, []
        rows = list(itertools.islice(iter(raw_split), n))
        model = trainer.accelerator.unwrap_model(trainer.model)
        return metrics, self.generate_samples(ctx, model, rows, trainer.args.per_device_eval_batch_size)

    def generate_samples(self, ctx: RunContext, model: Any, rows: list[dict], batch_size: int) -> list[dict]:
        """Greedy answers to the last user turn of each row: {input, reference, prediction}."""
        import torch

        tokenizer = ctx.tokenizer
        prompts, records = [], []
        for row in rows:
            messages = self.conversation(ctx, row)
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            history = messages[:last] if last is not None else messages
            prompts.append(render(tokenizer, history, add_generation_prompt=True))
            shown = history[-1]["content"] if "messages" not in ctx.columns else history
            reference = messages[last]["content"] if last is not None else None
            records.append({"input": shown, "reference": reference})
        stop = stop_token_ids(tokenizer, model)
        side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues on the right
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(prompts), max(1, batch_size)):
                chunk = prompts[start : start + batch_size]
                enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
                with torch.no_grad():
                    out = model.generate(
                        **enc,
                        max_new_tokens=ctx.cfg.options.max_new_tokens,
                        do_sample=False,
                        num_beams=1,
                        eos_token_id=stop,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                new_tokens = out[:, enc["input_ids"].shape[1] :]
                for j, text in enumerate(tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                    records[start + j]["prediction"] = cut_at_end_of_turn(text)
        finally:
            tokenizer.padding_side = side
            model.train(was_training)
        return records

    def headline(self, metrics: dict) -> dict:
        keep = ("loss", "perplexity", "tokens")
        return {k: v for k, v in metrics.items() if k.split("_", 1)[-1] in keep}


# ---------------------------------------------------------------------------------------------
# packing


class PackedCollator:
    """``DataCollatorWithFlattening`` (one row per batch, ``position_ids`` restarting at 0 for each
    example, label -100 at each example start) that also passes ``use_cache=False``.

    transformers derives the block-diagonal mask from restarting position ids only when no
    attention mask and no KV cache are given; a model whose config has ``use_cache=True`` would
    otherwise build a cache in forward and silently let examples attend to each other. (The
    Trainer sets ``use_cache=False`` too; this keeps the collator correct on its own.)
    """

    def __init__(self) -> None:
        from transformers import DataCollatorWithFlattening

        self.flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)

    def __call__(self, features: list[dict]) -> dict:
        batch = self.flatten(features)
        batch["use_cache"] = False
        return batch


# ---------------------------------------------------------------------------------------------
# conversations -> token ids and labels


def normalize_messages(value: Any, column: str) -> list[dict]:
    """A messages cell as [{"role", "content"}], accepting ShareGPT's {"from", "value"}."""
    if not isinstance(value, list) or not value:
        raise LlmtuneError(f"column '{column}' must hold a non-empty list of messages, got {value!r:.80}")
    out = []
    for turn in value:
        if not isinstance(turn, dict):
            raise LlmtuneError(
                f"column '{column}': a message must be a mapping with role and content, got {turn!r:.80}"
            )
        role = turn.get("role") or turn.get("from")
        content = turn.get("content") if "content" in turn else turn.get("value")
        role = SHAREGPT_ROLES.get(str(role).lower(), role) if role is not None else None
        if not role:
            raise LlmtuneError(f"column '{column}': message without a role: {turn!r:.80}")
        out.append({"role": role, "content": "" if content is None else str(content)})
    return out


def render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja2 TemplateError (e.g. "roles must alternate") and friends
        text = one_line(exc) if str(exc).strip() else type(exc).__name__
        roles = "/".join(m["role"] for m in messages)
        raise LlmtuneError(
            f"the chat template cannot render a conversation with roles {roles or '(none)'}: {text}; "
            f"fix the data or choose options.chat_template (chatml, plain)"
        ) from exc


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
        context = _tokens(tokenizer, prompt[len(done) :])
        answer = _tokens(tokenizer, full[len(prompt) :])
        if eos not in answer:
            answer.append(eos)
        ids += context + answer
        labels += [-100] * len(context) + answer
        done = full
    if not ids:
        raise LlmtuneError("a conversation has no assistant message to learn from: every row needs an answer")
    return ids[:max_length], labels[:max_length]


def _tokens(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """EOS ids of the generation config and tokenizer, plus single-token end-of-turn markers."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        ids += value if isinstance(value, list) else ([value] if value is not None else [])
    vocab = tokenizer.get_vocab()
    ids += [vocab[marker] for marker in END_OF_TURN if marker in vocab]
    return list(dict.fromkeys(ids))


def cut_at_end_of_turn(text: str) -> str:
    """Generated text up to the first end-of-turn marker (when it is plain text, not special)."""
    for marker in END_OF_TURN:
        text = text.split(marker, 1)[0]
    return text.strip()


TASKS = [SFTTask()]
