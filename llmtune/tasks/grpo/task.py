"""The grpo task's hooks (:class:`GRPOTask`): config checks, tokenizer, prompts, the policy and
its reference, the reward functions, the Trainer, evaluation metrics and records.

Module level stays torch-free (config validation imports it).
"""

from __future__ import annotations

from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.base import RunContext, Task, sequence_limit, tokenize_split
from llmtune.tasks.common.chat import apply_chat_template_option, chat_data_problems
from llmtune.tasks.common.policy import disable_dropout, prepare_policy
from llmtune.tasks.grpo.data import PromptCollator, batch_encoder, prompt_column
from llmtune.tasks.grpo.options import LOSS_TYPES, GRPOOptions
from llmtune.tasks.grpo.rewards import spec_problems


class GRPOTask(Task):
    name = "grpo"
    aliases = ("rl",)
    family = "grpo"
    description = "online RL of a causal LM with verifiable rewards (GRPO): sample groups, score, update"
    Options = GRPOOptions
    sequence_cap = "positions"
    auto_model = "AutoModelForCausalLM"
    main_metric = "reward"
    greater_is_better = True
    pipeline_tag = "text-generation"
    peft_task_type = "CAUSAL_LM"
    generative = True

    # ---- config -------------------------------------------------------------------------------
    def validate(self, cfg: Any) -> list[str]:
        from llmtune.modeling import from_config_problems

        o, p = cfg.options, from_config_problems(cfg)
        if o.loss_type not in LOSS_TYPES:
            p.append(f"options.loss_type must be one of {', '.join(LOSS_TYPES)}, got {o.loss_type!r}")
        if o.num_generations < 2:
            p.append(
                f"options.num_generations must be >= 2 (advantages compare completions of a prompt), got {o.num_generations}"
            )
        if o.max_completion_length < 1:
            p.append(f"options.max_completion_length must be >= 1, got {o.max_completion_length}")
        if o.max_completion_length >= cfg.data.max_length:
            p.append(
                f"options.max_completion_length={o.max_completion_length} leaves no room for the prompt in "
                f"data.max_length={cfg.data.max_length}: raise data.max_length"
            )
        if o.temperature <= 0:
            p.append(f"options.temperature must be > 0 (sampling), got {o.temperature}")
        if not 0 < o.top_p <= 1:
            p.append(f"options.top_p must be in (0, 1], got {o.top_p}")
        if o.beta < 0:
            p.append(f"options.beta must be >= 0 (0: no KL term, no reference model), got {o.beta}")
        if not 0 <= o.epsilon < 1:
            p.append(f"options.epsilon must be in [0, 1), got {o.epsilon}")
        if o.length_range is not None and (len(o.length_range) != 2 or not 0 <= o.length_range[0] <= o.length_range[1]):
            p.append(f"options.length_range must be [min, max] token counts with 0 <= min <= max, got {o.length_range}")
        if "regex_format" in o.rewards:
            import re

            try:
                re.compile(o.format_pattern)
            except re.error as exc:
                p.append(f"options.format_pattern is not a valid regular expression: {exc}")
        p.extend(spec_problems(list(o.rewards), o.reward_weights))
        p.extend(chat_data_problems(cfg, "grpo", "options.prompt_column / options.answer_column"))
        return p

    def load_tokenizer(self, ctx: RunContext, **kwargs: Any) -> Any:
        tokenizer = super().load_tokenizer(ctx, **kwargs)
        apply_chat_template_option(tokenizer, ctx.cfg.options.chat_template)
        if tokenizer.eos_token_id is None:
            raise LlmtuneError(f"tokenizer of '{ctx.model_path}' has no EOS token: grpo needs one to end completions")
        return tokenizer

    # ---- data ---------------------------------------------------------------------------------
    def prepare(self, ctx: RunContext, raw: Any) -> dict[str, Any]:
        o = ctx.cfg.options
        first = raw["train"] if "train" in raw else raw["validation"]
        ctx.columns = {"prompt": prompt_column(ctx, first)}
        if "math_answer" in o.rewards:
            ctx.columns["answer"] = o.answer_column
        max_prompt = sequence_limit(ctx, cap=self.sequence_cap) - o.max_completion_length
        encode = batch_encoder(ctx, max(1, max_prompt))
        out = {}
        for split, ds in raw.items():
            required = tuple(ctx.columns.values())
            for col in required:
                if col not in ds.column_names:
                    what = (
                        "options.answer_column (math_answer's reference answer)"
                        if col == o.answer_column
                        else "options.prompt_column"
                    )
                    raise LlmtuneError(
                        f"split '{split}' has no column '{col}' ({what}); columns: {', '.join(ds.column_names)}"
                    )
            out[split] = tokenize_split(ctx, ds, split, encode, with_indices=True)
        return out

    def collator(self, ctx: RunContext) -> Any:
        return PromptCollator()

    def training_args(self, ctx: RunContext) -> dict:
        # Prompt ids and the reward columns are read by the Trainer, not passed to the model.
        return {"remove_unused_columns": False}

    # ---- models -------------------------------------------------------------------------------
    def build_model(self, ctx: RunContext) -> Any:
        import copy

        from llmtune.adapters import enabled as adapters_enabled
        from llmtune.modeling import model_from_config

        m = ctx.cfg.model
        model = model_from_config(ctx, self.auto_model) if m.config and not m.name_or_path else super().build_model(ctx)
        prepare_policy(model, ctx.tokenizer)  # sampling, scoring and the update see the same model
        ctx.state["rewards"] = reward_set(ctx)
        if ctx.cfg.options.beta == 0.0:
            ctx.state["reference"] = None
        elif adapters_enabled(ctx.cfg):
            ctx.state["reference"] = "adapters"  # the runner adds adapters after build_model
        else:
            ref = copy.deepcopy(model).eval()
            ctx.state["reference"] = ref.requires_grad_(False)
        return model

    def load_trained_model(self, ctx: RunContext) -> Any:
        model = super().load_trained_model(ctx)
        disable_dropout(model)
        ctx.state["rewards"] = reward_set(ctx)
        ctx.state["reference"] = None  # evaluation scores greedy completions: no KL
        return model

    def trainer_class(self, ctx: RunContext, base: type) -> type:
        from llmtune.tasks.grpo.trainer import grpo_trainer

        return grpo_trainer(base, ctx)

    # ---- evaluation ---------------------------------------------------------------------------
    def eval_note(self, ctx: RunContext) -> str | None:
        return (
            f"grpo: one greedy completion per prompt (at most {ctx.cfg.options.max_completion_length} tokens), "
            f"scored by {', '.join(ctx.cfg.options.rewards)}"
        )

    def compute_metrics(self, ctx: RunContext) -> Any:
        rewards = ctx.state["rewards"]

        def compute(eval_pred: Any) -> dict:
            import numpy as np

            table = np.asarray(eval_pred.predictions[0], dtype=np.float64).reshape(-1, len(rewards.names))
            ids = np.asarray(eval_pred.predictions[1])
            out = {"reward": float((table * np.asarray(rewards.weights)).sum(-1).mean())}
            for i, name in enumerate(rewards.names):
                out[f"reward_{name}"] = float(table[:, i].mean())
            if rewards.math_index is not None:
                out["accuracy"] = float((table[:, rewards.math_index] > 0.5).mean())
            out["completion_length"] = float((ids != -100).sum(-1).mean()) if ids.size else 0.0
            out["prompts"] = int(table.shape[0])
            return out

        return compute

    def records(self, ctx: RunContext, raw_split: Any, split: Any, output: Any) -> list[dict]:
        import numpy as np

        rewards = ctx.state["rewards"]
        table = np.asarray(output.predictions[0], dtype=np.float64).reshape(-1, len(rewards.names))
        ids = np.asarray(output.predictions[1])
        rows = np.asarray(output.label_ids).reshape(-1).tolist()
        column, out = ctx.columns["prompt"], []
        for r, row in enumerate(rows):
            completion = ctx.tokenizer.decode([int(t) for t in ids[r] if t != -100], skip_special_tokens=True)
            values = dict(zip(rewards.names, table[r].tolist(), strict=True))
            out.append(
                {
                    "row": int(row),
                    "prompt": raw_split[int(row)][column],
                    "completion": completion,
                    "reward": float(np.dot(table[r], rewards.weights)),
                    "rewards": values,
                }
            )
        return out

    def headline(self, metrics: dict) -> dict:
        return {k: v for k, v in metrics.items() if "reward" in k or k.endswith(("accuracy", "completion_length"))}


def reward_set(ctx: RunContext) -> Any:
    from llmtune.tasks.grpo.rewards import RewardSet

    device = "cuda" if _cuda() else "cpu"
    return RewardSet(ctx.cfg.options, device=device, max_length=ctx.cfg.data.max_length)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
