"""Preference tuning of a causal LM on pairwise data: ``dpo`` (DPO, IPO, SimPO).

Data, one pair per row (``options.prompt_column`` / ``chosen_column`` / ``rejected_column``):

- ``prompt`` / ``chosen`` / ``rejected``: strings (a one-turn prompt and two answers) or chat
  message lists (``[{"role": ..., "content": ...}]``, ShareGPT's ``from``/``value`` too): the
  prompt is the conversation so far, each answer one assistant turn (or turns ending in one);
- no prompt column: ``chosen`` and ``rejected`` are whole conversations sharing their history,
  either message lists or Anthropic HH text (``"\\n\\nHuman: ... \\n\\nAssistant: ..."``); they
  are split at their last assistant turn, and what precedes it must be the same in both.

Both answers are rendered after the prompt with the tokenizer's chat template exactly as in
``sft`` (same named fallbacks, EOS appended, segment-wise tokenization: the prompt tokens are
what inference feeds the model). A pair longer than ``data.max_length`` drops the start of its
prompt to make room for the answers, but keeps at least ``options.max_prompt_length`` prompt
tokens (default half of ``data.max_length``); answers still too long lose their end.

Bad pairs: an empty answer, or a prompt that cannot be separated from the answers, stops the run
with one line naming the split, row and column (``options.skip_invalid_pairs=true`` skips them
with a printed count instead); pairs whose two answers are identical carry no preference and are
always skipped with a printed count.

Losses (``options.loss_type``, ``options.beta``), with log-probabilities summed over answer
tokens, ``pi`` the policy, ``ref`` the frozen reference, ``|y|`` the answer's token count:

- ``sigmoid`` (DPO): ``-log σ(β·[(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))])``
- ``ipo``: ``((log-ratio_w / |y_w| - log-ratio_l / |y_l|) - 1 / (2β))²`` (per-token log ratios,
  as TRL does, after the IPO authors)
- ``simpo`` (reference-free): ``-log σ(β·(log pi(y_w)/|y_w| - log pi(y_l)/|y_l|) - γ)``,
  ``γ = options.simpo_gamma``.

Rewards are ``β·(log pi - log ref)`` (SimPO: ``β·log pi/|y|``); metrics in the training log, in
evaluation and in ``llmtune eval``: ``reward_accuracy`` (chosen reward > rejected reward),
``reward_margin``, mean chosen/rejected rewards and log-probabilities, and ``logp_accuracy``
(the policy alone gives the chosen answer the higher log-probability: the implicit preference).

The reference model: a frozen copy of the starting model; with LoRA adapters the same model with
its adapters disabled (no second copy); ``options.reference_model`` loads another one;
``options.precompute_reference`` scores the data once with the starting model before training
and keeps no reference in memory; data with ``ref_chosen_logps`` / ``ref_rejected_logps`` columns
(summed answer log-probs from the same tokenization, e.g. the ``chosen_logps`` / ``rejected_logps``
of an earlier ``llmtune eval`` of the reference's predictions.jsonl) needs no reference model at
all. ``llmtune eval`` of a trained run loads the run's base model as reference (or
``options.reference_model``); a model with no known base is scored reference-free (rewards are
the policy's log-probabilities: its implicit preference).

The loss is computed here on ``transformers.Trainer`` (``compute_loss``), not with TRL's
``DPOTrainer``: TRL 1.16 tokenizes the strings itself (no llmtune chat-template spans, no HH split
at the last assistant turn), builds its reference by reloading the policy from its config path
(GGUF and ``package:`` models fail), patches the model's forward, and reports evaluation metrics
only through ``log`` as means of per-batch means gathered with duplicates, so ``llmtune eval``
could not return exact ones. The loss formulas are TRL's (tested against hand-computed values).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.base import RunContext, Task, tokenize_split

PROMPT_COLUMNS = ("prompt", "question", "instruction", "query")
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
LOSS_TYPES = ("sigmoid", "ipo", "simpo")
REFERENCE_FREE = ("simpo",)
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class DPOOptions:
    # Columns; None = auto-detect (prompt: prompt/question/instruction/query, else none: chosen
    # and rejected are whole conversations).
    prompt_column: str | None = None
    chosen_column: str | None = None
    rejected_column: str | None = None
    # A system message put first in every conversation that has none.
    system_prompt: str | None = None
    # Chat template: a name (chatml, plain), a Jinja template string, or None = the tokenizer's
    # own, falling back to chatml when it has none (as in sft).
    chat_template: str | None = None
    # sigmoid (DPO) | ipo | simpo (reference-free); beta: the KL strength (DPO/IPO; SimPO's
    # reward scale, typically 2.0); simpo_gamma: SimPO's target reward margin.
    loss_type: str = "sigmoid"
    beta: float = 0.1
    simpo_gamma: float = 0.5
    # Prompt tokens always kept (its last ones) when a pair exceeds data.max_length: the prompt
    # gives way to the answers down to this length, then the answers are cut. None = half.
    max_prompt_length: int | None = None
    # Reference model: None = the starting model (a frozen copy, or adapters disabled with LoRA);
    # a folder or Hub id to load another one. `llmtune eval` uses the run's base model.
    reference_model: str | None = None
    # Score the data with the starting model once before training; no reference kept in memory.
    precompute_reference: bool = False
    # Skip pairs with an empty answer or an unseparable prompt (with a count) instead of stopping.
    skip_invalid_pairs: bool = False


class DPOTask(Task):
    name = "dpo"
    aliases = ("preference",)
    family = "dpo"
    description = "preference tuning of a causal LM on chosen/rejected pairs (DPO, IPO, SimPO)"
    Options = DPOOptions
    auto_model = "AutoModelForCausalLM"
    main_metric = "reward_accuracy"
    greater_is_better = True
    pipeline_tag = "text-generation"
    peft_task_type = "CAUSAL_LM"

    # ---- config -------------------------------------------------------------------------------
    def validate(self, cfg: Any) -> list[str]:
        from llmtune.modeling import from_config_problems
        from llmtune.tasks.common.chat import chat_template_problem

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
        problem = chat_template_problem(o.chat_template)
        if problem:
            p.append(problem)
        if cfg.data.streaming:
            p.append("data.streaming is not supported by dpo (pairs are checked and counted up front): drop it")
        for key in ("text_column", "text_pair_column", "label_column"):
            if getattr(cfg.data, key):
                p.append(f"data.{key} is not used by dpo: name columns with options.prompt_column/chosen_column/...")
        return p

    # ---- tokenizer ----------------------------------------------------------------------------
    def load_tokenizer(self, ctx: RunContext, **kwargs: Any) -> Any:
        from llmtune.tasks.common.chat import apply_chat_template_option

        tokenizer = super().load_tokenizer(ctx, **kwargs)
        apply_chat_template_option(tokenizer, ctx.cfg.options.chat_template)
        if tokenizer.eos_token_id is None:
            raise LlmtuneError(f"tokenizer of '{ctx.model_path}' has no EOS token: dpo needs one to end answers")
        return tokenizer

    # ---- data ---------------------------------------------------------------------------------
    def _layout(self, ctx: RunContext, ds: Any) -> dict:
        from llmtune.data import column_names, pick_column

        o, cols = ctx.cfg.options, column_names(ds)
        chosen = pick_column(ds, o.chosen_column, ("chosen",), "chosen", "options.chosen_column")
        rejected = pick_column(ds, o.rejected_column, ("rejected",), "rejected", "options.rejected_column")
        prompt = o.prompt_column
        if prompt is not None and prompt not in cols:
            raise LlmtuneError(
                f"prompt column '{prompt}' (options.prompt_column) not found; columns: {', '.join(cols)}"
            )
        if prompt is None:
            prompt = next((c for c in PROMPT_COLUMNS if c in cols), None)
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    def pair(self, ctx: RunContext, row: dict) -> tuple[list[dict], str, str]:
        """(prompt messages, chosen answer, rejected answer) of one row; raises :class:`BadPair`."""
        cols = ctx.columns
        prompt, chosen, rejected = split_pair(
            row.get(cols["prompt"]) if cols.get("prompt") else None,
            row[cols["chosen"]],
            row[cols["rejected"]],
            cols,
        )
        system = ctx.cfg.options.system_prompt
        if system and prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": system}, *prompt]
        return prompt, chosen, rejected

    def prepare(self, ctx: RunContext, raw: Any) -> dict[str, Any]:
        from llmtune.console import echo
        from llmtune.modeling import sequence_limit

        cfg, tokenizer, o = ctx.cfg, ctx.tokenizer, ctx.cfg.options
        first = raw["train"] if "train" in raw else raw["validation"]
        ctx.columns = self._layout(ctx, first)
        max_length = sequence_limit(ctx)
        # never the whole sequence: max_length may have been cut to the model's positions
        max_prompt = min(o.max_prompt_length or max_length // 2, max_length - 1)

        def encode(batch: dict, indices: list[int]) -> dict:
            out: dict[str, list] = {k: [] for k in ("prompt_ids", "chosen_ids", "rejected_ids", "length", "row")}
            out.update(problem=[], truncated=[])
            keys = list(batch)
            for col in REF_COLUMNS if REF_COLUMNS[0] in keys else ():
                out[col] = [_logp(v, col, index) for v, index in zip(batch[col], indices, strict=True)]
            for i, index in enumerate(indices):
                row = {k: batch[k][i] for k in keys}
                try:
                    enc = encode_pair(tokenizer, *self.pair(ctx, row), max_length, max_prompt)
                    problem = ""
                except BadPair as bad:
                    enc, problem = (
                        {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "truncated": False},
                        (f"{bad.kind}:{bad}"),
                    )
                for key in ("prompt_ids", "chosen_ids", "rejected_ids", "truncated"):
                    out[key].append(enc[key])
                out["length"].append(len(enc["prompt_ids"]) + max(len(enc["chosen_ids"]), len(enc["rejected_ids"])))
                out["row"].append(index)
                out["problem"].append(problem)
            return out

        out = {}
        required = tuple(c for c in ctx.columns.values() if c)
        for split, ds in raw.items():
            if (REF_COLUMNS[0] in ds.column_names) != (REF_COLUMNS[1] in ds.column_names):
                raise LlmtuneError(
                    f"split '{split}' of {cfg.data.dataset} has only one of the columns {' and '.join(REF_COLUMNS)}: "
                    f"precomputed reference log-probs need both"
                )
            encoded = tokenize_split(ctx, ds, split, encode, required=required, with_indices=True)
            counts: Counter = Counter()
            for row, problem in zip(encoded["row"], encoded["problem"], strict=True):
                if not problem:
                    continue
                kind, message = problem.split(":", 1)
                if kind != "identical" and not o.skip_invalid_pairs:
                    raise LlmtuneError(
                        f"{cfg.data.dataset}: split '{split}' row {row + 1}: {message}; fix the data or set "
                        f"options.skip_invalid_pairs=true to skip such pairs"
                    )
                counts[kind] += 1
            truncated = sum(encoded["truncated"])
            encoded = encoded.filter(lambda b: [not p for p in b["problem"]], batched=True, desc="dropping bad pairs")
            encoded = encoded.remove_columns(["problem", "truncated"])
            notes = [f"{n} pair{'s' * (n != 1)} {SKIP_REASONS[k]}" for k, n in sorted(counts.items())]
            if notes:
                echo(f"dpo: split '{split}': skipped " + "; ".join(notes))
            if truncated:
                echo(f"dpo: split '{split}': {truncated} pairs cut to data.max_length={max_length} tokens")
            if len(encoded) == 0:
                raise LlmtuneError(f"split '{split}' of {cfg.data.dataset} has no usable preference pair left")
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
        import copy

        from llmtune.adapters import enabled as adapters_enabled
        from llmtune.adapters import is_peft_model
        from llmtune.modeling import model_from_config

        m = ctx.cfg.model
        model = model_from_config(ctx, self.auto_model) if m.config and not m.name_or_path else super().build_model(ctx)
        if model.config.pad_token_id is None and ctx.tokenizer.pad_token_id is not None:
            model.config.pad_token_id = ctx.tokenizer.pad_token_id
        disable_dropout(model)  # policy and reference must score a pair the same way (as TRL does)
        o = ctx.cfg.options
        if o.loss_type in REFERENCE_FREE or ctx.state.get("ref_columns"):
            ctx.state["reference"] = None
        elif o.reference_model:
            ctx.state["reference"] = self.load_reference(ctx, o.reference_model, None)
        elif o.precompute_reference:
            ctx.state["reference"] = "precompute"
        elif is_peft_model(model) or adapters_enabled(ctx.cfg):
            # the runner wraps the model in adapters after build_model: disabling them is the reference
            ctx.state["reference"] = "adapters"
        else:
            ctx.state["reference"] = freeze(copy.deepcopy(model))
        return model

    def load_trained_model(self, ctx: RunContext) -> Any:
        from llmtune.config import CONFIG_FILENAME, read_yaml

        model = super().load_trained_model(ctx)
        disable_dropout(model)
        o = ctx.cfg.options
        ctx.state["reference"] = None
        if o.loss_type in REFERENCE_FREE:
            return model
        if o.reference_model:
            ctx.state["reference"] = ("load", o.reference_model, None)
            return model
        # A dpo run's reference was the model it started from (recorded in its config).
        saved = Path(ctx.model_path) / CONFIG_FILENAME
        run = read_yaml(saved) if saved.is_file() else {}
        base = run.get("model") or {}
        if run.get("task") == self.name and base.get("name_or_path"):
            # loaded by the Trainer, unless the data holds reference log-probs
            ctx.state["reference"] = ("load", base["name_or_path"], base.get("gguf_file"))
        return model

    def load_reference(self, ctx: RunContext, spec: str, gguf_file: str | None) -> Any:
        """A frozen ``AutoModelForCausalLM`` from a folder or Hub id (GGUF de-quantized)."""
        import dataclasses

        from llmtune.modeling import load_model

        model_args = dataclasses.replace(ctx.cfg.model, name_or_path=spec, gguf_file=gguf_file, config_overrides={})
        ref_ctx = RunContext(cfg=dataclasses.replace(ctx.cfg, model=model_args), training=True, model_path=spec)
        ref_ctx.tokenizer = ctx.tokenizer
        model = load_model(ref_ctx, self.auto_model)
        disable_dropout(model)
        return freeze(model)

    def trainer_class(self, ctx: RunContext, base: type) -> type:
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


SKIP_REASONS = {
    "identical": "whose chosen and rejected answers are identical (no preference to learn)",
    "empty": "with an empty answer",
    "unseparable": "whose prompt cannot be separated from the answers",
}


# ---------------------------------------------------------------------------------------------
# rows -> (prompt messages, chosen, rejected)


def _logp(value: Any, column: str, index: int) -> float:
    import math

    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise LlmtuneError(f"column '{column}' row {index + 1}: expected a finite log-probability, got {value!r:.40}")
    return number


class BadPair(ValueError):
    """A row that is not a usable preference pair; ``kind`` is a key of ``SKIP_REASONS``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def parse_hh(text: str) -> list[dict]:
    """Anthropic HH text (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) as chat messages."""
    parts = _HH_TURN.split(text)
    messages = [{"role": "user", "content": parts[0].strip()}] if parts[0].strip() else []
    for role, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": _HH_ROLES[role], "content": content.strip()})
    return messages


def is_hh(text: str) -> bool:
    return bool(re.search(r"(?:^|\n\n)Human:", text)) and bool(re.search(r"(?:^|\n\n)Assistant:", text))


def _messages(value: Any, column: str, plain_role: str | None) -> list[dict]:
    """A cell as messages: a message list, HH text, or (with ``plain_role``) one plain turn."""
    from llmtune.tasks.common.chat import normalize_messages

    if isinstance(value, list):
        try:
            return normalize_messages(value, column)
        except LlmtuneError as exc:
            raise BadPair("unseparable", str(exc)) from None
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise BadPair("unseparable", f"column '{column}' must hold text or a list of messages, got {value!r:.60}")
    if plain_role != "assistant" and is_hh(value):  # an answer after a prompt column is taken as is
        messages = parse_hh(value)
        if plain_role == "user" and messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
            messages = messages[:-1]  # an HH prompt ending in "Assistant:" awaits the answer
        return messages
    if plain_role is None:
        raise BadPair(
            "unseparable",
            f"there is no prompt column and '{column}' is neither a list of messages nor Human:/Assistant: text, "
            f"so the prompt cannot be told apart from the answer (add a prompt column or set options.prompt_column)",
        )
    return [{"role": plain_role, "content": value}]


def split_pair(prompt: Any, chosen: Any, rejected: Any, columns: dict) -> tuple[list[dict], str, str]:
    """Split one row into its prompt messages and the two answers (see the module doc)."""
    has_prompt = columns.get("prompt") is not None
    history = _messages(prompt, columns.get("prompt") or "prompt", "user") if has_prompt else []
    if has_prompt and not any(m["content"].strip() for m in history):
        raise BadPair("unseparable", f"the prompt ('{columns['prompt']}') is empty")
    sides = []
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        column = columns[key]
        conversation = history + _messages(value, column, "assistant" if has_prompt else None)
        last = max((i for i, m in enumerate(conversation) if m["role"] == "assistant"), default=None)
        if last is None or last < len(history):
            raise BadPair("unseparable", f"'{column}' has no assistant answer")
        if last != len(conversation) - 1:
            raise BadPair(
                "unseparable", f"'{column}' ends with a {conversation[-1]['role']} turn after its last assistant answer"
            )
        sides.append((conversation[:last], conversation[last]["content"]))
    (prefix, chosen_text), (other, rejected_text) = sides
    if prefix != other:
        raise BadPair(
            "unseparable",
            f"'{columns['chosen']}' and '{columns['rejected']}' differ before their last assistant turn, so they do "
            f"not answer the same prompt",
        )
    if not any(m["role"] != "system" and m["content"].strip() for m in prefix):
        raise BadPair("unseparable", f"'{columns['chosen']}' has no prompt before its answer")
    for column, text in ((columns["chosen"], chosen_text), (columns["rejected"], rejected_text)):
        if not text.strip():
            raise BadPair("empty", f"'{column}' answer is empty")
    if chosen_text.strip() == rejected_text.strip():
        raise BadPair("identical", f"'{columns['chosen']}' and '{columns['rejected']}' are the same answer")
    return prefix, chosen_text, rejected_text


# ---------------------------------------------------------------------------------------------
# tokenization


def encode_pair(
    tokenizer: Any, prompt: list[dict], chosen: str, rejected: str, max_length: int, max_prompt: int
) -> dict:
    """Token ids of the prompt (rendered with a generation prompt) and of each answer (the text the
    chat template adds for it, EOS appended when missing), cut to ``max_length`` per sequence."""
    from llmtune.tasks.common.chat import render, segment_ids

    eos = tokenizer.eos_token_id
    prompt_text = render(tokenizer, prompt, add_generation_prompt=True)
    answers = []
    for text in (chosen, rejected):
        full = render(tokenizer, [*prompt, {"role": "assistant", "content": text}])
        if not full.startswith(prompt_text):
            raise LlmtuneError(
                "the chat template renders the prompt differently once an answer follows, so the answer cannot be "
                "located: set options.chat_template (chatml or plain)"
            )
        ids = segment_ids(tokenizer, full[len(prompt_text) :])
        if eos not in ids:
            ids.append(eos)
        answers.append(ids)
    prompt_ids = segment_ids(tokenizer, prompt_text)
    longest = max(len(a) for a in answers)
    truncated = len(prompt_ids) + longest > max_length
    if truncated:
        keep = min(len(prompt_ids), max(max_length - longest, max_prompt))
        prompt_ids = prompt_ids[len(prompt_ids) - keep :]
        answers = [a[: max_length - keep] for a in answers]
    return {"prompt_ids": prompt_ids, "chosen_ids": answers[0], "rejected_ids": answers[1], "truncated": truncated}


class PairCollator:
    """Pads a batch of B pairs into 2B right-padded rows, chosen first then rejected: ``input_ids``,
    ``attention_mask``, ``labels`` (-100 except answer tokens), ``row`` (the pair's row in its
    split) and, when the data has them, precomputed reference log-probs."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        seqs, labels = [], []
        for side in ("chosen_ids", "rejected_ids"):
            for f in features:
                seqs.append(list(f["prompt_ids"]) + list(f[side]))
                labels.append([-100] * len(f["prompt_ids"]) + list(f[side]))
        width = max(len(s) for s in seqs)
        batch = {
            "input_ids": torch.tensor([s + [self.pad] * (width - len(s)) for s in seqs]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
            "labels": torch.tensor([x + [-100] * (width - len(x)) for x in labels]),
            "row": torch.tensor([f.get("row", i) for i, f in enumerate(features)]),
        }
        if "ref_chosen_logps" in features[0]:
            batch["ref_logps"] = torch.tensor(
                [f["ref_chosen_logps"] for f in features] + [f["ref_rejected_logps"] for f in features],
                dtype=torch.float32,
            )
        return batch


# ---------------------------------------------------------------------------------------------
# log-probabilities, losses, metrics


def sequence_logps(model: Any, batch: dict) -> tuple[Any, Any]:
    """Summed log-probabilities of the answer tokens of each row, and their counts.

    The log-softmax runs one row at a time in float32: the full [2B, L, vocab] log-prob tensor of
    a 50k-vocab model would double the memory peak of the logits.
    """
    import torch

    labels = batch["labels"][:, 1:]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logits = logits[:, :-1]
    mask = labels != -100
    index = labels.masked_fill(~mask, 0).unsqueeze(-1)
    per_token = torch.stack(
        [
            torch.log_softmax(row.float(), dim=-1).gather(-1, idx).squeeze(-1)
            for row, idx in zip(logits, index, strict=True)
        ]
    )
    return (per_token * mask).sum(-1), mask.sum(-1)


def preference_loss(
    loss_type: str, beta: float, gamma: float, pc: Any, pr: Any, rc: Any, rr: Any, nc: Any, nr: Any
) -> Any:
    """Per-pair loss from policy (p) and reference (r) log-probs of chosen (c) / rejected (r)
    answers and their token counts (n); see the module doc for the formulas."""
    import torch.nn.functional as F

    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))
    if loss_type == "ipo":
        return (_per_token(pc - rc, nc) - _per_token(pr - rr, nr) - 1 / (2 * beta)) ** 2
    if loss_type == "simpo":
        return -F.logsigmoid(beta * (_per_token(pc, nc) - _per_token(pr, nr)) - gamma)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def _per_token(logps: Any, count: Any) -> Any:
    return logps / (count.clamp(min=1) if hasattr(count, "clamp") else max(count, 1))


def rewards(loss_type: str, beta: float, pc: Any, pr: Any, rc: Any, rr: Any, nc: Any, nr: Any) -> tuple[Any, Any]:
    """Implicit rewards of the chosen and rejected answers (tensors or plain numbers)."""
    if loss_type in REFERENCE_FREE:
        return beta * _per_token(pc, nc), beta * _per_token(pr, nr)
    return beta * (pc - rc), beta * (pr - rr)


def pair_metrics(scores: Any, loss_type: str, beta: float, gamma: float) -> dict:
    """Metrics over pairs from a [N, 6] tensor of (pc, pr, rc, rr, nc, nr) rows."""
    pc, pr, rc, rr, nc, nr = scores.unbind(-1)
    wc, wl = rewards(loss_type, beta, pc, pr, rc, rr, nc, nr)
    return {
        "pair_loss": preference_loss(loss_type, beta, gamma, pc, pr, rc, rr, nc, nr).mean().item(),
        "reward_accuracy": (wc > wl).double().mean().item(),
        "reward_margin": (wc - wl).mean().item(),
        "chosen_reward": wc.mean().item(),
        "rejected_reward": wl.mean().item(),
        "chosen_logps": pc.mean().item(),
        "rejected_logps": pr.mean().item(),
        "logp_accuracy": (pc > pr).double().mean().item(),
        "pairs": int(scores.shape[0]),
    }


def disable_dropout(model: Any) -> None:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def freeze(model: Any) -> Any:
    model.eval()
    model.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------
# the Trainer


def preference_trainer(base: type, ctx: RunContext, task: DPOTask) -> type:
    """``base`` (llmtune's Trainer) with the preference loss, its training-log metrics and
    per-pair evaluation outputs (exact metrics, each pair counted once on any number of
    processes, through the Trainer's ``gather_for_metrics``)."""
    import torch

    o = ctx.cfg.options
    reference = ctx.state.get("reference")

    class PreferenceTrainer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # compute_loss returns a mean over pairs, so the Trainer must divide by accumulation steps.
            self.model_accepts_loss_kwargs = False
            self._sums: Any = None
            datasets = [d for d in (self.train_dataset, self.eval_dataset) if d is not None]
            scored = all(REF_COLUMNS[0] in d.column_names for d in datasets)
            ref = reference
            if isinstance(ref, tuple) and not scored:  # ("load", spec, gguf_file), for llmtune eval
                from llmtune.console import echo

                echo(f"dpo: reference model {ref[1]}" + (f" ({ref[2]})" if ref[2] else ""))
                ref = task.load_reference(ctx, ref[1], ref[2])
            self.ref_model = ref.to(self.args.device) if isinstance(ref, torch.nn.Module) else None
            if ref is None and not scored and o.loss_type not in REFERENCE_FREE:
                from llmtune.console import echo

                echo(
                    "dpo: no reference model (the model has no recorded base: set options.reference_model, or give "
                    "the data ref_chosen_logps/ref_rejected_logps columns): rewards are the policy's log-probabilities"
                )
            if reference == "precompute":
                # Before any step: self.model is still the starting model.
                if self.train_dataset is not None and REF_COLUMNS[0] not in self.train_dataset.column_names:
                    self.train_dataset = self.add_reference_logps(self.train_dataset)
                if self.eval_dataset is not None and REF_COLUMNS[0] not in self.eval_dataset.column_names:
                    self.eval_dataset = self.add_reference_logps(self.eval_dataset)

        # ---- scores ----------------------------------------------------------------------
        def reference_logps(self, model: Any, batch: dict) -> Any:
            if "ref_logps" in batch:
                return batch["ref_logps"]
            if o.loss_type in REFERENCE_FREE or (self.ref_model is None and reference != "adapters"):
                return torch.zeros(batch["input_ids"].shape[0], device=batch["input_ids"].device)
            with torch.no_grad():
                if self.ref_model is not None:
                    return sequence_logps(self.ref_model, batch)[0]
                unwrapped = self.accelerator.unwrap_model(model)
                with unwrapped.disable_adapter():
                    return sequence_logps(unwrapped, batch)[0]

        def pair_scores(self, model: Any, batch: dict) -> Any:
            """[B, 6]: policy and reference log-probs of chosen/rejected and the answers' lengths."""
            logps, counts = sequence_logps(model, batch)
            ref = self.reference_logps(model, batch).to(logps.dtype)
            pc, pr = logps.chunk(2)
            rc, rr = ref.chunk(2)
            nc, nr = counts.to(logps.dtype).chunk(2)
            return torch.stack([pc, pr, rc, rr, nc, nr], dim=1)

        def add_reference_logps(self, dataset: Any) -> Any:
            model = self.accelerator.unwrap_model(self.model)
            was_training = model.training
            model.eval()
            chosen, rejected = [], []
            size = self.args.per_device_eval_batch_size
            try:
                with torch.no_grad():
                    for start in range(0, len(dataset), size):
                        rows = dataset.select(range(start, min(start + size, len(dataset))))
                        batch = self.data_collator([rows[i] for i in range(len(rows))])
                        batch = {k: v.to(self.args.device) for k, v in batch.items()}
                        pc, pr = sequence_logps(model, batch)[0].chunk(2)
                        chosen += pc.tolist()
                        rejected += pr.tolist()
            finally:
                model.train(was_training)
            return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)

        # ---- training --------------------------------------------------------------------
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            scores = self.pair_scores(model, inputs)
            loss = preference_loss(o.loss_type, o.beta, o.simpo_gamma, *scores.unbind(1)).mean()
            if model.training:
                with torch.no_grad():
                    pc, pr, rc, rr, nc, nr = scores.detach().unbind(1)
                    wc, wl = rewards(o.loss_type, o.beta, pc, pr, rc, rr, nc, nr)
                    sums = torch.stack(
                        [
                            torch.tensor(float(len(pc)), device=pc.device),
                            (wc > wl).float().sum(),
                            (wc - wl).sum(),
                            pc.sum(),
                            pr.sum(),
                        ]
                    ).double()
                    self._sums = sums if self._sums is None else self._sums + sums
            return (loss, {"scores": scores}) if return_outputs else loss

        def log(self, logs: dict, start_time: float | None = None) -> None:
            if "loss" in logs and self._sums is not None:
                # Every process logs at the same steps: sum over all of them (exact means over pairs).
                n, correct, margin, pc, pr = self.accelerator.reduce(self._sums, reduction="sum").tolist()
                self._sums = None
                logs.update(
                    reward_accuracy=round(correct / n, 4),
                    reward_margin=round(margin / n, 4),
                    chosen_logps=round(pc / n, 4),
                    rejected_logps=round(pr / n, 4),
                )
            super().log(logs, start_time)

        # ---- evaluation ------------------------------------------------------------------
        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                scores = self.pair_scores(model, inputs)
                loss = preference_loss(o.loss_type, o.beta, o.simpo_gamma, *scores.unbind(1)).mean().detach()
            if prediction_loss_only:
                return loss, None, None
            return loss, scores.float(), inputs["row"].unsqueeze(1)

    return PreferenceTrainer


TASKS = [DPOTask()]
