"""The reward task's hooks (:class:`RewardTask`): config checks, tokenizer, pairs as two token
sequences, a one-output sequence-classification model, the Trainer, pair metrics, records, and
``predict`` scoring conversations.

Module level stays torch-free (config validation imports it).
"""

from __future__ import annotations

from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.base import RunContext, Task, sequence_limit, tokenize_split
from llmtune.tasks.common.chat import apply_chat_template_option, chat_data_problems, normalize_messages, render
from llmtune.tasks.common.pairs import PAIRS_UP_FRONT, PROMPT_COLUMNS, column_layout, drop_bad_pairs, is_hh, parse_hh
from llmtune.tasks.reward.data import RewardCollator, batch_encoder, sequence_scores
from llmtune.tasks.reward.options import RewardOptions

#: predict: columns holding the answer to score after a prompt column
ANSWER_COLUMNS = ("response", "completion", "answer", "chosen")


class RewardTask(Task):
    name = "reward"
    aliases = ("reward-model", "rm")
    family = "reward"
    description = "a reward model (one score per conversation) trained on chosen/rejected pairs (Bradley-Terry)"
    Options = RewardOptions
    sequence_cap = "positions"
    auto_model = "AutoModelForSequenceClassification"
    main_metric = "accuracy"
    greater_is_better = True
    pipeline_tag = "text-classification"
    peft_task_type = "SEQ_CLS"
    head_modules = ("score", "classifier")

    # ---- config -------------------------------------------------------------------------------
    def validate(self, cfg: Any) -> list[str]:
        from llmtune.modeling import from_config_problems

        p = from_config_problems(cfg)
        p.extend(chat_data_problems(cfg, "reward", "options.prompt_column/chosen_column/...", PAIRS_UP_FRONT))
        return p

    def load_tokenizer(self, ctx: RunContext, **kwargs: Any) -> Any:
        tokenizer = super().load_tokenizer(ctx, **kwargs)
        apply_chat_template_option(tokenizer, ctx.cfg.options.chat_template)
        return tokenizer

    # ---- data ---------------------------------------------------------------------------------
    def prepare(self, ctx: RunContext, raw: Any) -> dict[str, Any]:
        o = ctx.cfg.options
        first = raw["train"] if "train" in raw else raw["validation"]
        ctx.columns = column_layout(ctx, first)
        if o.margin_column:
            ctx.columns["margin"] = o.margin_column
        encode = batch_encoder(ctx, sequence_limit(ctx, cap=self.sequence_cap))
        out = {}
        for split, ds in raw.items():
            required = tuple(c for c in ctx.columns.values() if c)
            encoded = tokenize_split(ctx, ds, split, encode, required=required, with_indices=True)
            encoded = drop_bad_pairs(ctx, encoded, split, "reward", "kept only their last data.max_length tokens")
            out[split] = encoded
        return out

    def collator(self, ctx: RunContext) -> Any:
        return RewardCollator(ctx.tokenizer.pad_token_id)

    def training_args(self, ctx: RunContext) -> dict:
        return {"remove_unused_columns": False}  # chosen_ids/rejected_ids are read by the collator

    # ---- model --------------------------------------------------------------------------------
    def build_model(self, ctx: RunContext) -> Any:
        from llmtune.loading import load_model
        from llmtune.modeling import model_architecture, model_from_config

        m = ctx.cfg.model
        head = {"num_labels": 1, "id2label": {0: "reward"}, "label2id": {"reward": 0}}
        if m.config and not m.name_or_path:
            config = model_architecture(m)
            for key, value in head.items():
                setattr(config, key, value)
            model = model_from_config(ctx, self.auto_model, config)
        else:
            model = load_model(ctx, self.auto_model, ignore_mismatched_sizes=True, **head)
        if model.config.pad_token_id is None and ctx.tokenizer.pad_token_id is not None:
            model.config.pad_token_id = ctx.tokenizer.pad_token_id
        return model

    def check_model(self, ctx: RunContext, model: Any) -> None:
        if model.config.num_labels != 1:
            raise LlmtuneError(
                f"model '{ctx.model_path}' has {model.config.num_labels} outputs: a reward model has one "
                f"(train one with --task reward)"
            )

    def trainer_class(self, ctx: RunContext, base: type) -> type:
        from llmtune.tasks.reward.trainer import reward_trainer

        return reward_trainer(base)

    # ---- evaluation ---------------------------------------------------------------------------
    def compute_metrics(self, ctx: RunContext) -> Any:
        def compute(eval_pred: Any) -> dict:
            import torch

            from llmtune.tasks.reward.trainer import pair_metrics

            return pair_metrics(torch.as_tensor(eval_pred.predictions, dtype=torch.float64).reshape(-1, 3))

        return compute

    def predict(self, ctx: RunContext, trainer: Any, raw_split: Any, split: Any) -> tuple[dict, list[dict]]:
        metrics, records = super().predict(ctx, trainer, raw_split, split)
        if "eval_pair_loss" in metrics:  # the mean over pairs (the Trainer's eval_loss weights batches)
            metrics["eval_loss"] = metrics.pop("eval_pair_loss")
        return metrics, records

    def records(self, ctx: RunContext, raw_split: Any, split: Any, output: Any) -> list[dict]:
        import numpy as np

        scores = np.asarray(output.predictions, dtype=np.float64).reshape(-1, 3)
        rows = np.asarray(output.label_ids).reshape(-1)
        return [
            {"row": int(row), "chosen_score": c, "rejected_score": r, "correct": c > r}
            for (c, r, _), row in zip(scores.tolist(), rows.tolist(), strict=True)
        ]

    def headline(self, metrics: dict) -> dict:
        keep = ("loss", "accuracy", "margin", "chosen_score", "rejected_score")
        return {k: v for k, v in metrics.items() if k.split("_", 1)[-1] in keep}

    # ---- inference: predict / serve -----------------------------------------------------------
    def prepare_inference(self, ctx: RunContext, columns: list[str]) -> None:
        """A conversation per row: ``messages`` (a chat list ending with the answer to score),
        ``text`` (Anthropic HH text), or a prompt column with an answer column."""
        o = ctx.cfg.options
        apply_chat_template_option(ctx.tokenizer, o.chat_template)
        if "messages" in columns:
            ctx.columns = {"messages": "messages"}
            return
        prompt = o.prompt_column or next((c for c in PROMPT_COLUMNS if c in columns), None)
        answer = o.chosen_column or next((c for c in ANSWER_COLUMNS if c in columns), None)
        if prompt in columns and answer in columns:
            ctx.columns = {"prompt": prompt, "answer": answer}
        elif "text" in columns:
            ctx.columns = {"text": "text"}
        else:
            raise LlmtuneError(
                f"reward predict needs a 'messages' column, a 'text' column (Human:/Assistant: text), or a prompt "
                f"column ({'/'.join(PROMPT_COLUMNS)}) with an answer column ({'/'.join(ANSWER_COLUMNS)}); "
                f"got: {', '.join(columns)}"
            )

    def conversation(self, ctx: RunContext, row: dict) -> list[dict]:
        cols = ctx.columns
        if "messages" in cols:
            return normalize_messages(row.get("messages") or [], "messages")
        if "text" in cols:
            text = str(row.get("text") or "")
            return parse_hh(text) if is_hh(text) else [{"role": "user", "content": text}]
        prompt = row.get(cols["prompt"])
        history = normalize_messages(prompt, cols["prompt"]) if isinstance(prompt, list) else None
        history = history or [{"role": "user", "content": str(prompt or "")}]
        return [*history, {"role": "assistant", "content": str(row.get(cols["answer"]) or "")}]

    def predict_batch(self, ctx: RunContext, rows: list[dict], settings: Any) -> list[dict]:
        import torch

        from llmtune.inference.generation import model_device

        tok, limit = ctx.tokenizer, sequence_limit(ctx, cap=self.sequence_cap)
        system = ctx.cfg.options.system_prompt
        seqs = []
        for row in rows:
            messages = self.conversation(ctx, row)
            if system and (not messages or messages[0]["role"] != "system"):
                messages = [{"role": "system", "content": system}, *messages]
            seqs.append(tok(render(tok, messages), add_special_tokens=False)["input_ids"][-limit:])
        width = max(len(s) for s in seqs)
        device = model_device(ctx.model)
        ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        with torch.no_grad():
            scores = sequence_scores(ctx.model, ids, mask).tolist()
        return [{"score": round(s, 6)} for s in scores]
