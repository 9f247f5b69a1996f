"""The contract every task implements.

A task says: which AutoModel class, how to preprocess raw rows, which collator, which metrics,
and how to turn model outputs into exported prediction records. The shared mechanics (data
loading, Trainer setup, saving, model card, eval command) live in :mod:`llmtune.runner` and call
these hooks. Module level stays torch-free; import heavy libraries inside the methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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

    # ---- config time (torch-free) -------------------------------------------------------
    def apply_defaults(self, cfg: RunConfig, tree: dict) -> None:
        """Adjust generic defaults the recipe did not set (``tree`` is the raw merged dict)."""

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
        from llmtune.modeling import load_model

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
        from llmtune.modeling import load_model

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


def require_fast_tokenizer(tokenizer: Any, task: str, why: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        from llmtune.errors import LlmtuneError

        raise LlmtuneError(
            f"task {task} needs a fast (Rust) tokenizer for {why}, but {type(tokenizer).__name__} is slow: "
            f"pick a model that ships tokenizer.json"
        )


def tokenize_split(ctx: RunContext, ds: Any, split: str, encode: Any, required: tuple = (), **kwargs: Any) -> Any:
    """``datasets.map(encode)`` over one split: batched, cached, the raw columns replaced.

    ``required`` columns are checked first, so a split missing one fails in one line.
    """
    from llmtune.errors import LlmtuneError

    for col in required:
        if col and col not in ds.column_names:
            raise LlmtuneError(f"split '{split}' has no column '{col}'; columns: {', '.join(ds.column_names)}")
    from llmtune.datacache import function_parts, map_fingerprint, run_parts

    # The cache key: what the rows depend on, not the whole run (see llmtune.datacache).
    fingerprint = map_fingerprint(
        ds, ctx.tokenizer, (encode.__module__,), run=run_parts(ctx), fn=function_parts(encode), kwargs=kwargs
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
