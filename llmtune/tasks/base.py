"""The contract every task implements.

A task says: which AutoModel class, how to preprocess raw rows, which collator, which metrics,
and how to turn model outputs into exported prediction records. The shared mechanics (data
loading, Trainer setup, saving, model card, eval command) live in :mod:`llmtune.runner` and call
these hooks. Module level stays torch-free; import heavy libraries inside the methods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmtune.datacache import map_fingerprint, stable, tokenizer_fingerprint

if TYPE_CHECKING:  # pragma: no cover
    from llmtune.config import RunConfig


@dataclass
class NoOptions:
    """A task without task-specific options."""


@dataclass
class RunContext:
    """What a task needs at run time; filled in step by step by the runner."""

    cfg: RunConfig
    # True for ``finetune``/``pretrain``; False for ``eval`` of a saved model.
    training: bool = True
    tokenizer: Any = None
    model: Any = None
    # Model path the weights come from (``cfg.model.name_or_path`` or the eval model dir).
    model_path: str | None = None
    # Per-task state decided from data or from a saved model (e.g. label names).
    state: dict = field(default_factory=dict)
    # Columns picked in the raw data, for model cards and prediction export.
    columns: dict = field(default_factory=dict)
    # Warnings about the data the user may mean (e.g. a single-class eval split): printed by the
    # runner once every input has loaded, so a run that then fails on bad input shows one line.
    warnings: list = field(default_factory=list)
    # Config values the run decided from its model and data (dotted key -> value, e.g. lm's
    # ``options.block_size``): saved with the config, so ``eval`` of the run reuses them.
    resolved: dict = field(default_factory=dict)

    def saved_config(self) -> RunConfig:
        """The config as this run saves it: ``cfg`` with the values the run resolved."""
        return self.cfg.with_values(self.resolved)


@dataclass(frozen=True)
class Default:
    """A generic default (``key``: a dotted config key) that a task changes, declared as data.

    The resolver (:mod:`llmtune.resolve`) layers it between the typed defaults and the recipe: it
    applies unless the recipe, ``--set`` or a flag gives ``key`` (or one of ``unless_set``), and
    only to runs where ``when(cfg)`` holds (``cfg``: the run's config before task defaults).
    ``value`` may be a function of that config. ``why`` is shown with ``--dry-run`` and by
    ``recipes show``."""

    key: str
    value: Any
    why: str
    when: Callable[[Any], bool] | None = None
    unless_set: tuple[str, ...] = ()

    def applies(self, cfg: Any, given: set[str]) -> bool:
        if self.key in given or any(k in given for k in self.unless_set):
            return False
        return self.when is None or bool(self.when(cfg))

    def value_for(self, cfg: Any) -> Any:
        return self.value(cfg) if callable(self.value) else self.value


def from_scratch(cfg: Any) -> bool:
    """A randomly initialised model (``model.config`` without pretrained weights)."""
    return bool(cfg.model.config and not cfg.model.name_or_path)


class Task:
    #: canonical name, used in recipes and ``--task``
    name: str = ""
    #: other accepted names
    aliases: tuple[str, ...] = ()
    #: tasks of one family accept each other's recipes
    family: str = ""
    description: str = ""
    #: task-specific options dataclass (the ``options:`` section of a recipe)
    Options: type = NoOptions
    #: ``transformers`` auto class used to load/build the model
    auto_model: str = "AutoModel"
    #: metric selecting the best checkpoint, and its direction
    main_metric: str = "loss"
    greater_is_better: bool = False
    #: use Seq2SeqTrainer / generation during evaluation
    seq2seq: bool = False
    #: ``transformers.pipeline`` task name written in the model card
    pipeline_tag: str | None = None
    #: ``peft.TaskType`` of the model (None: a plain ``PeftModel``), and the names of the head
    #: modules trained in full with adapters (``peft.modules_to_save`` left unset)
    peft_task_type: str | None = None
    head_modules: tuple[str, ...] = ()
    #: a causal LM that ``generate``/``chat`` and ``serve``'s completions can drive
    generative: bool = False
    #: the training loss is a causal LM's cross-entropy over its vocabulary, computed through
    #: :mod:`llmtune.tasks.common.chunked_loss` when ``train.loss_chunk_size`` is set
    causal_lm_loss: bool = False
    #: generic defaults this task changes (see :class:`Default`)
    defaults: tuple[Default, ...] = ()
    #: what caps ``data.max_length`` (see :func:`sequence_limit`): "tokenizer" or "positions"
    sequence_cap: str = "tokenizer"

    # ---- config time (torch-free) -------------------------------------------------------
    def validate(self, cfg: RunConfig) -> list[str]:
        """Cross-field problems specific to this task (messages name the key)."""
        return []

    # ---- run time -------------------------------------------------------------------------
    def load_tokenizer(self, ctx: RunContext, **kwargs: Any) -> Any:
        """``kwargs`` go to ``AutoTokenizer.from_pretrained`` (e.g. ``add_prefix_space=True``)."""
        from llmtune.modeling import load_tokenizer

        spec = ctx.cfg.model.tokenizer or ctx.model_path
        tokenizer = load_tokenizer(spec, ctx.cfg.model, **kwargs)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # decoder-only models ship without one
        return tokenizer

    def load_data(self, ctx: RunContext) -> Any:
        """Raw splits as a ``DatasetDict`` (train/validation[/test])."""
        from llmtune.data import load_raw

        return load_raw(ctx.cfg.data, seed=ctx.cfg.train.seed, carve_validation=ctx.training)

    def load_trained_model(self, ctx: RunContext) -> Any:
        """Load a model saved by llmtune (or any compatible checkpoint) for evaluation."""
        from llmtune.loading import load_model

        model = load_model(ctx, self.auto_model)
        if model.config.pad_token_id is None and ctx.tokenizer.pad_token_id is not None:
            model.config.pad_token_id = ctx.tokenizer.pad_token_id
        return model

    def trainer_class(self, ctx: RunContext, base: type) -> type:
        """The Trainer class this task runs: ``base`` (llmtune's Trainer subclass, see
        :func:`llmtune.trainer.llmtune_trainer`) or a subclass of it that computes the loss and
        evaluation outputs differently (e.g. preference tuning). Checkpoints, samplers and
        resume come from ``base``, so a subclass keeps them."""
        return base

    def training_args(self, ctx: RunContext) -> dict:
        """Extra ``TrainingArguments`` this task needs (e.g. generation settings)."""
        return {}

    def headline(self, metrics: dict) -> dict:
        """The metrics worth printing on the terminal (all of them by default)."""
        return metrics

    def save_extras(self, ctx: RunContext, output_dir: Any) -> None:
        """Write task-specific files next to the saved model (main process only)."""

    def prepare(self, ctx: RunContext, raw: Any) -> dict[str, Any]:
        """Turn raw splits (a ``DatasetDict``) into model-ready datasets keyed by split."""
        raise NotImplementedError

    def build_model(self, ctx: RunContext) -> Any:
        from llmtune.loading import load_model

        return load_model(ctx, self.auto_model)

    def collator(self, ctx: RunContext) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(ctx.tokenizer, pad_to_multiple_of=None)

    def eval_collator(self, ctx: RunContext) -> Any:
        """The evaluation loop's collator when it must differ from :meth:`collator` (None: the same)."""
        return None

    def compute_metrics(self, ctx: RunContext) -> Any:
        """A ``compute_metrics(EvalPrediction) -> dict`` callable, or None."""
        return None

    def preprocess_logits_for_metrics(self, ctx: RunContext) -> Any:
        return None

    def eval_step(self, ctx: RunContext) -> Any:
        """Optional ``step(model, inputs) -> (loss, predictions, labels)`` replacing the Trainer's
        forward during eval/predict (under no_grad): it returns only what the metrics and
        exports need per batch (e.g. per-row loss sums, n-best spans) so evaluation never holds
        a split's logits. ``labels`` must not be None when ``compute_metrics`` should run."""
        return None

    def eval_note(self, ctx: RunContext) -> str | None:
        """One line saying how ``llmtune eval`` scores (printed and saved in metrics.json)."""
        return None

    def card_lines(self, ctx: RunContext) -> list[str]:
        """Task-specific bullet lines for the model card (e.g. sample rate, vocabulary)."""
        return []

    def predict(self, ctx: RunContext, trainer: Any, raw_split: Any, split: Any) -> tuple[dict, list[dict]]:
        """Metrics and exported prediction records for one split."""
        output = trainer.predict(split, metric_key_prefix="eval")
        metrics = dict(output.metrics)
        records = self.records(ctx, raw_split, split, output)
        return metrics, records

    def records(self, ctx: RunContext, raw_split: Any, split: Any, output: Any) -> list[dict]:
        return []

    def check_model(self, ctx: RunContext, model: Any) -> None:
        """Checks that need the built model with its final attention kernel (e.g. that packed
        examples stay apart); raise LlmtuneError. Runs before anything is written."""

    def finalize_model(self, ctx: RunContext, model: Any) -> None:
        """Store task metadata (label names, ...) in the model config before saving."""

    # ---- inference: ``llmtune predict`` and ``serve``'s /v1/predict -----------------------------
    # The shared mechanics (reading rows, length-sorted batches written back in input order,
    # output) live in :mod:`llmtune.inference`; a task supports predict by implementing these.
    def prepare_inference(self, ctx: RunContext, columns: list[str]) -> None:
        """Pick the input columns among ``columns`` into ``ctx.columns`` (as ``prepare`` does, with
        the same ``data.*_column``/``options.*_column`` overrides) and set ``ctx.state`` from the
        loaded model. One-line error when a needed column is missing."""
        from llmtune.errors import LlmtuneError

        raise LlmtuneError(f"task {self.name} does not support predict")

    def input_length(self, ctx: RunContext, row: dict) -> int:
        """Sort key for batching (characters of the input columns)."""
        return sum(len(str(row.get(c) or "")) for c in ctx.columns.values() if isinstance(c, str))

    def predict_batch(self, ctx: RunContext, rows: list[dict], settings: Any) -> list[dict]:
        """One output record per input row (``settings``: :class:`llmtune.inference.predict.PredictSettings`)."""
        raise NotImplementedError


def predict_outputs(trainer: Any, split: Any) -> Any:
    """``trainer.predict`` without ``compute_metrics``: for tasks that score predictions against
    the raw split themselves (NER word-level tags, QA answer spans) rather than per batch."""
    saved = trainer.compute_metrics
    trainer.compute_metrics = None
    try:
        return trainer.predict(split, metric_key_prefix="eval")
    finally:
        trainer.compute_metrics = saved


def unused_data_columns(cfg: Any, task: str, instead: str) -> list[str]:
    """Problems for the generic ``data.*_column`` keys set on a task that names its columns in its
    own options (``instead``)."""
    keys = ("text_column", "text_pair_column", "label_column")
    return [f"data.{k} is not used by {task}: name columns with {instead}" for k in keys if getattr(cfg.data, k)]


def require_fast_tokenizer(tokenizer: Any, task: str, why: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        from llmtune.errors import LlmtuneError

        raise LlmtuneError(
            f"task {task} needs a fast (Rust) tokenizer for {why}, but {type(tokenizer).__name__} is slow: "
            f"pick a model that ships tokenizer.json"
        )


def has_content(value: Any) -> bool:
    """Whether a cell holds something: non-blank text, a non-empty list with content, a number."""
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, tuple)):
        return any(has_content(v) for v in value)
    if isinstance(value, dict):
        return any(has_content(v) for v in value.values())
    return True


def require_content(ds: Any, column: str | None, split: str, what: str, key: str) -> None:
    """Refuse a split whose ``column`` is empty in every row (a wrong column, or broken data):
    training on it would run and learn nothing. Stops at the first row with content; streams
    are not checked (that would consume them)."""
    from llmtune.errors import LlmtuneError

    if not column or not hasattr(ds, "__len__") or column not in (ds.column_names or []):
        return
    for batch in ds.select_columns([column]).iter(batch_size=1000):
        if any(has_content(v) for v in batch[column]):
            return
    raise LlmtuneError(
        f"the {what} column '{column}' of split '{split}' is empty in every row ({len(ds)} rows): "
        f"fix the data or name another column with {key}"
    )


def tokenize_split(ctx: RunContext, ds: Any, split: str, encode: Any, required: tuple = (), **kwargs: Any) -> Any:
    """``datasets.map(encode)`` over one split: batched, cached, the raw columns replaced.

    ``required`` columns are checked first, so a split missing one fails in one line.
    """
    from llmtune.errors import LlmtuneError

    for col in required:
        if col and col not in ds.column_names:
            raise LlmtuneError(f"split '{split}' has no column '{col}'; columns: {', '.join(ds.column_names)}")
    # The cache key: what the rows depend on, not the whole run (see llmtune.datacache).
    fingerprint = map_fingerprint(
        ds, ctx.tokenizer, task_code(encode.__module__), run=run_parts(ctx), fn=function_parts(encode), kwargs=kwargs
    )
    if fingerprint is not None:
        kwargs["new_fingerprint"] = fingerprint
    return ds.map(
        encode,
        batched=True,
        remove_columns=ds.column_names,
        num_proc=ctx.cfg.data.num_proc,
        desc=f"tokenizing {split}",
        **kwargs,
    )


def sequence_limit(ctx: RunContext, requested: int | None = None, cap: str = "positions") -> int:
    """The longest sequence a task encodes: ``requested`` (default ``data.max_length``) capped by
    the model. The one rule every task's truncation goes through; ``cap`` is the task's
    :attr:`Task.sequence_cap`:

    - ``"positions"`` (sft, dpo): up to the model's positions, with one run warning when cut. The
      tokenizer's ``model_max_length`` applies only when the positions are unknown: an explicit
      ``data.max_length`` above it is honoured, as ``tokenizer(..., max_length=N)`` itself does, and
      as ``--block-size`` is for pretraining (llmtune's built-in tokenizers say 512 while the
      ``llama-tiny`` preset takes 1024). Resolved once per run (``ctx.state``), so the data and the
      eval batch sizing use the same limit.
    - ``"tokenizer"`` (encoder and encoder-decoder tasks): up to the tokenizer's
      ``model_max_length``, silently, as the tokenizer would cut.
    """
    from llmtune.modeling import max_positions, tokenizer_max_length

    if cap == "tokenizer":
        wanted = int(ctx.cfg.data.max_length if requested is None else requested)
        return min(wanted, tokenizer_max_length(ctx.tokenizer))
    if requested is None and "sequence_limit" in ctx.state:
        return ctx.state["sequence_limit"]
    from llmtune.loading import run_model_config

    wanted = int(ctx.cfg.data.max_length if requested is None else requested)
    config = run_model_config(ctx)
    positions = max_positions(config) if config is not None else None
    limit = positions if positions is not None else tokenizer_max_length(ctx.tokenizer)
    if wanted > limit:
        where = "the model's positions" if positions is not None else "the tokenizer's model_max_length"
        ctx.warnings.append(f"data.max_length={wanted} is above {where} ({limit}): sequences are cut at {limit} tokens")
    if requested is None:
        ctx.state["sequence_limit"] = min(wanted, limit)
    return min(wanted, limit)


# ---------------------------------------------------------------------------------------------
# the run-context half of a tokenized cache's key (llmtune.datacache hashes it)

# Fields of the model section that cannot change tokenized rows.
MODEL_FIELDS_IGNORED = ("attn_implementation",)


def task_code(module: str) -> tuple[str, ...]:
    """The modules whose source shapes a task's tokenized rows: this one, the shared task helpers
    and the whole package of the task that ``module`` belongs to."""
    parts = module.split(".")
    owner = ".".join(parts[:3]) if module.startswith("llmtune.tasks.") and len(parts) > 3 else module
    return (__name__, "llmtune.tasks.common", owner)


def run_parts(ctx: Any) -> dict:
    """The parts of a run context that may shape tokenized rows: task, data and task options,
    the model section (minus runtime-only fields), picked columns and task state."""
    cfg = ctx.cfg
    model = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in MODEL_FIELDS_IGNORED}
    state = {k: v for k, v in ctx.state.items() if k != "performance"}
    return {
        "task": cfg.task,
        "training": ctx.training,
        "data": cfg.data,
        "options": cfg.options,
        "model": model,
        "columns": ctx.columns,
        "state": state,
    }


def function_parts(fn: Any, depth: int = 0) -> Any:
    """A stable description of an encode function's inputs besides the dataset: its name, default
    arguments and closure variables. The run context, the tokenizer and the task object are
    represented by :func:`run_parts`, :func:`tokenizer_fingerprint` and the source hash instead
    of being pickled; nested helper functions are described the same way."""

    def part(value: Any) -> Any:
        if isinstance(value, RunContext):
            return "<run context>"
        if isinstance(value, Task):
            return f"<task {type(value).__name__}>"
        if hasattr(value, "backend_tokenizer") or hasattr(value, "convert_tokens_to_ids"):
            return f"<tokenizer {tokenizer_fingerprint(value)}>"
        if callable(value) and hasattr(value, "__code__") and depth < 4:
            return function_parts(value, depth + 1)
        return stable(value)

    code = getattr(fn, "__code__", None)
    if code is None:
        return stable(fn)
    cells = {}
    for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
        try:
            cells[name] = part(cell.cell_contents)
        except ValueError:  # an empty cell
            cells[name] = None
    return {
        "name": fn.__qualname__,
        "defaults": [part(v) for v in fn.__defaults__ or ()],
        "kwdefaults": {k: part(v) for k, v in (fn.__kwdefaults__ or {}).items()},
        "cells": cells,
    }
