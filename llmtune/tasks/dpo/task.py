"""The dpo task's hooks (:class:`DPOTask`): config checks, tokenizer, data (pairs checked and
counted), policy and reference models, the Trainer, evaluation metrics and per-pair records.

Module level stays torch-free (config validation imports it).
"""

from __future__ import annotations

from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.base import RunContext, Task, sequence_limit, tokenize_split
from llmtune.tasks.common.chat import apply_chat_template_option, chat_data_problems
from llmtune.tasks.common.chunked_loss import check_run_model
from llmtune.tasks.common.pairs import PAIRS_UP_FRONT, drop_bad_pairs
from llmtune.tasks.common.policy import disable_dropout, prepare_policy
from llmtune.tasks.dpo.collator import PairCollator
from llmtune.tasks.dpo.data import REF_COLUMNS, batch_encoder, column_layout
from llmtune.tasks.dpo.loss import pair_metrics, rewards
from llmtune.tasks.dpo.options import LOSS_TYPES, REFERENCE_FREE, DPOOptions
from llmtune.tasks.dpo.reference import eval_reference, load_reference, training_reference


class DPOTask(Task):
    name = "dpo"
    aliases = ("preference",)
    family = "dpo"
    description = "preference tuning of a causal LM on chosen/rejected pairs (DPO, IPO, SimPO)"
    Options = DPOOptions
    sequence_cap = "positions"
    auto_model = "AutoModelForCausalLM"
    main_metric = "reward_accuracy"
    greater_is_better = True
    pipeline_tag = "text-generation"
    peft_task_type = "CAUSAL_LM"
    causal_lm_loss = True  # the answers' log-probabilities

    # ---- config -------------------------------------------------------------------------------
    def validate(self, cfg: Any) -> list[str]:
        from llmtune.modeling import from_config_problems

        o, p = cfg.options, from_config_problems(cfg)
        if o.loss_type not in LOSS_TYPES:
            p.append(f"options.loss_type must be one of {', '.join(LOSS_TYPES)}, got {o.loss_type!r}")
        if o.beta <= 0:
            p.append(f"options.beta must be > 0, got {o.beta}")
        if o.simpo_gamma < 0:
            p.append(f"options.simpo_gamma must be >= 0, got {o.simpo_gamma}")
        elif o.simpo_gamma != DPOOptions.simpo_gamma and o.loss_type != "simpo":
            p.append(f"options.simpo_gamma is only used by loss_type=simpo (loss_type is {o.loss_type})")
        if o.max_prompt_length is not None and not 1 <= o.max_prompt_length < cfg.data.max_length:
            p.append(
                f"options.max_prompt_length must be in [1, data.max_length={cfg.data.max_length}), "
                f"got {o.max_prompt_length}"
            )
        if o.loss_type in REFERENCE_FREE and (o.reference_model or o.precompute_reference):
            p.append(
                f"loss_type={o.loss_type} uses no reference model: drop options.reference_model / "
                f"options.precompute_reference"
            )
        if o.reference_model and o.precompute_reference:
            p.append("set options.reference_model or options.precompute_reference, not both")
        p.extend(chat_data_problems(cfg, "dpo", "options.prompt_column/chosen_column/...", PAIRS_UP_FRONT))
        return p

    # ---- tokenizer ----------------------------------------------------------------------------
    def load_tokenizer(self, ctx: RunContext, **kwargs: Any) -> Any:
        tokenizer = super().load_tokenizer(ctx, **kwargs)
        apply_chat_template_option(tokenizer, ctx.cfg.options.chat_template)
        if tokenizer.eos_token_id is None:
            raise LlmtuneError(f"tokenizer of '{ctx.model_path}' has no EOS token: dpo needs one to end answers")
        return tokenizer

    # ---- data ---------------------------------------------------------------------------------
    def prepare(self, ctx: RunContext, raw: Any) -> dict[str, Any]:
        cfg, o = ctx.cfg, ctx.cfg.options
        first = raw["train"] if "train" in raw else raw["validation"]
        ctx.columns = column_layout(ctx, first)
        max_length = sequence_limit(ctx, cap=self.sequence_cap)
        # never the whole sequence: max_length may have been cut to the model's positions
        max_prompt = min(o.max_prompt_length or max_length // 2, max_length - 1)

        encode = batch_encoder(ctx, max_length, max_prompt)
        out = {}
        required = tuple(c for c in ctx.columns.values() if c)
        for split, ds in raw.items():
            if (REF_COLUMNS[0] in ds.column_names) != (REF_COLUMNS[1] in ds.column_names):
                raise LlmtuneError(
                    f"split '{split}' of {cfg.data.dataset} has only one of the columns {' and '.join(REF_COLUMNS)}: "
                    f"precomputed reference log-probs need both"
                )
            encoded = tokenize_split(ctx, ds, split, encode, required=required, with_indices=True)
            encoded = drop_bad_pairs(ctx, encoded, split, "dpo", f"cut to data.max_length={max_length} tokens")
            out[split] = encoded
        # Every split scored by the reference already: no reference model is needed.
        ctx.state["ref_columns"] = all(REF_COLUMNS[0] in ds.column_names for ds in out.values())
        return out

    def collator(self, ctx: RunContext) -> Any:
        return PairCollator(ctx.tokenizer.pad_token_id)

    def training_args(self, ctx: RunContext) -> dict:
        # The pair columns (prompt_ids, chosen_ids, ...) are not model inputs: keep them for the collator.
        return {"remove_unused_columns": False}

    # ---- models -------------------------------------------------------------------------------
    def build_model(self, ctx: RunContext) -> Any:
        from llmtune.modeling import model_from_config

        m = ctx.cfg.model
        model = model_from_config(ctx, self.auto_model) if m.config and not m.name_or_path else super().build_model(ctx)
        prepare_policy(model, ctx.tokenizer)  # policy and reference must score a pair the same way
        ctx.state["reference"] = training_reference(ctx, model, self.auto_model)
        return model

    def check_model(self, ctx: RunContext, model: Any) -> None:
        check_run_model(ctx.cfg, model)

    def load_trained_model(self, ctx: RunContext) -> Any:
        model = super().load_trained_model(ctx)
        disable_dropout(model)
        ctx.state["reference"] = eval_reference(ctx, self.name)
        return model

    def load_reference(self, ctx: RunContext, spec: str, gguf_file: str | None) -> Any:
        """A frozen ``AutoModelForCausalLM`` from a folder or Hub id (GGUF de-quantized)."""
        return load_reference(ctx, spec, gguf_file, self.auto_model)

    def trainer_class(self, ctx: RunContext, base: type) -> type:
        from llmtune.tasks.dpo.trainer import preference_trainer

        return preference_trainer(base, ctx, self)

    # ---- evaluation ---------------------------------------------------------------------------
    def compute_metrics(self, ctx: RunContext) -> Any:
        o = ctx.cfg.options

        def compute(eval_pred: Any) -> dict:
            import torch

            scores = torch.as_tensor(eval_pred.predictions, dtype=torch.float64).reshape(-1, 6)
            return pair_metrics(scores, o.loss_type, o.beta, o.simpo_gamma)

        return compute

    def predict(self, ctx: RunContext, trainer: Any, raw_split: Any, split: Any) -> tuple[dict, list[dict]]:
        metrics, records = super().predict(ctx, trainer, raw_split, split)
        if "eval_pair_loss" in metrics:  # the mean over pairs (the Trainer's eval_loss weights batches)
            metrics["eval_loss"] = metrics.pop("eval_pair_loss")
        return metrics, records

    def records(self, ctx: RunContext, raw_split: Any, split: Any, output: Any) -> list[dict]:
        import numpy as np

        o = ctx.cfg.options
        scores = np.asarray(output.predictions, dtype=np.float64).reshape(-1, 6)
        rows = np.asarray(output.label_ids).reshape(-1)
        out = []
        for (pc, pr, rc, rr, nc, nr), row in zip(scores.tolist(), rows.tolist(), strict=True):
            wc, wl = rewards(o.loss_type, o.beta, pc, pr, rc, rr, nc, nr)
            out.append(
                {
                    "row": int(row),
                    "chosen_logps": pc,
                    "rejected_logps": pr,
                    "chosen_reward": wc,
                    "rejected_reward": wl,
                    "correct": wc > wl,
                }
            )
        return out

    def headline(self, metrics: dict) -> dict:
        keep = ("loss", "reward_accuracy", "reward_margin", "logp_accuracy", "chosen_logps", "rejected_logps")
        return {k: v for k, v in metrics.items() if k.split("_", 1)[-1] in keep}
