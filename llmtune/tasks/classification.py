"""Text classification (``sentiment`` is the same task with sentiment-data defaults).

Single sentences or sentence pairs; integer, boolean or string labels. Label names are stored in
the model config (``id2label``/``label2id``) so a saved model reports names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.tasks.base import RunContext, Task

TEXT_COLUMNS = ("text", "sentence", "review", "content")
LABEL_COLUMNS = ("label", "labels")


@dataclass
class ClassificationOptions:
    # Names for integer labels, in id order (e.g. [negative, positive] for SST-2's 0/1).
    label_names: list[str] | None = None


class ClassificationTask(Task):
    family = "classification"
    Options = ClassificationOptions
    auto_model = "AutoModelForSequenceClassification"
    main_metric = "accuracy"
    greater_is_better = True
    pipeline_tag = "text-classification"

    def __init__(self, name: str, aliases: tuple[str, ...], description: str):
        self.name = name
        self.aliases = aliases
        self.description = description

    def validate(self, cfg: Any) -> list[str]:
        names = cfg.options.label_names
        if names is not None and (len(names) < 2 or len(set(names)) != len(names)):
            return [f"options.label_names needs at least two distinct names, got {names}"]
        return []

    # ---- labels ----------------------------------------------------------------------------
    def _label_space(self, ctx: RunContext, train: Any, label_col: str) -> list[str]:
        """Label names in id order, decided from the training data (or options.label_names)."""
        feature = train.features.get(label_col)
        explicit = ctx.cfg.options.label_names
        if feature is not None and hasattr(feature, "names"):  # ClassLabel
            return list(explicit or feature.names)
        values = train.unique(label_col)
        kinds = {_label_kind(v) for v in values}
        if "missing" in kinds:
            raise LlmtuneError(f"label column '{label_col}' has empty values: every row needs a label")
        if "other" in kinds or len(kinds) > 1:
            bad = next(v for v in values if _label_kind(v) == "other" or len(kinds) > 1)
            raise LlmtuneError(
                f"label column '{label_col}' holds unsupported label {bad!r} ({type(bad).__name__}); "
                f"classification needs integer or string class labels"
            )
        kind = kinds.pop()
        if kind == "float":
            raise LlmtuneError(
                f"label column '{label_col}' holds non-integer numbers (e.g. {values[0]!r}); "
                f"classification needs integer or string class labels"
            )
        if kind == "str":
            if explicit:
                unknown = sorted(set(values) - set(explicit))
                if unknown:
                    raise LlmtuneError(f"labels {unknown} are not in options.label_names {explicit}")
                return list(explicit)
            return sorted(values)
        ints = sorted(int(v) for v in values)
        if explicit:
            if ints[0] < 0 or ints[-1] >= len(explicit):
                raise LlmtuneError(
                    f"integer labels {ints[0]}..{ints[-1]} do not fit options.label_names ({len(explicit)} names)"
                )
            return list(explicit)
        if ints[0] == 0:  # ids 0..n-1 (the usual encoding): keep them as ids
            return [str(i) for i in range(ints[-1] + 1)]
        return [str(i) for i in ints]  # e.g. star ratings 1..5: names "1".."5", ids 0..4

    def _label_lookup(self, names: list[str], numeric_ids: bool) -> Any:
        index = {name: i for i, name in enumerate(names)}

        def to_id(value: Any) -> int | None:
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, str):
                return index.get(value)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, int):
                if str(value) in index:
                    return index[str(value)]
                if numeric_ids and 0 <= value < len(names):
                    return value
            return None

        return to_id

    # ---- data -------------------------------------------------------------------------------
    def prepare(self, ctx: RunContext, raw: Any) -> dict[str, Any]:
        cfg = ctx.cfg
        first = raw["train"] if "train" in raw else raw["validation"]
        text_col = _pick(first, cfg.data.text_column, TEXT_COLUMNS, "text", "data.text_column")
        pair_col = (
            _pick(first, cfg.data.text_pair_column, (), "text pair", "data.text_pair_column")
            if cfg.data.text_pair_column
            else None
        )
        label_col = _pick(first, cfg.data.label_column, LABEL_COLUMNS, "label", "data.label_column")
        ctx.columns = {"text": text_col, "text_pair": pair_col, "label": label_col}

        if ctx.training:
            names = self._label_space(ctx, raw["train"], label_col)
        else:
            id2label = ctx.model.config.id2label
            names = [str(id2label[i]) for i in range(len(id2label))]
        ctx.state["label_names"] = names
        # Integer data labels map to names "0", "1", ...; when the names are words (e.g. a model
        # trained on "negative"/"positive" scored on 0/1 data) an integer is taken as the id.
        numeric_ids = not all(n.lstrip("-").isdigit() for n in names)
        to_id = self._label_lookup(names, numeric_ids)
        tokenizer, max_length = ctx.tokenizer, min(cfg.data.max_length, _model_max(ctx))

        out = {}
        for split, ds in raw.items():
            for col in (text_col, pair_col, label_col):
                if col and col not in ds.column_names:
                    raise LlmtuneError(f"split '{split}' has no column '{col}'; columns: {', '.join(ds.column_names)}")
            feature = ds.features.get(label_col)
            class_names = list(feature.names) if feature is not None and hasattr(feature, "names") else None

            def encode(batch: dict, _class_names=class_names, _split=split) -> dict:
                texts = [t if t is not None else "" for t in batch[text_col]]
                pairs = [t if t is not None else "" for t in batch[pair_col]] if pair_col else None
                enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
                labels = []
                for value in batch[label_col]:
                    if _class_names is not None and isinstance(value, int) and value >= 0:
                        value = _class_names[value]
                    label_id = to_id(value)
                    if label_id is None:
                        raise LlmtuneError(
                            f"label {value!r} in split '{_split}' is not one the model knows "
                            f"({', '.join(names)}): fix the data or retrain with that label"
                        )
                    labels.append(label_id)
                enc["labels"] = labels
                enc["length"] = [len(ids) for ids in enc["input_ids"]]
                return enc

            out[split] = ds.map(
                encode,
                batched=True,
                remove_columns=ds.column_names,
                num_proc=cfg.data.num_proc,
                desc=f"tokenizing {split}",
            )
        return out

    # ---- model ------------------------------------------------------------------------------
    def build_model(self, ctx: RunContext) -> Any:
        from llmtune.modeling import load_model

        names = ctx.state["label_names"]
        model = load_model(
            ctx,
            self.auto_model,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
            problem_type="single_label_classification",
            ignore_mismatched_sizes=True,
        )
        if model.config.pad_token_id is None and ctx.tokenizer.pad_token_id is not None:
            model.config.pad_token_id = ctx.tokenizer.pad_token_id
        return model

    def compute_metrics(self, ctx: RunContext) -> Any:
        from llmtune.metrics import classification_metrics

        names = ctx.state["label_names"]

        def compute(eval_pred: Any) -> dict:
            logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
            return classification_metrics(logits.argmax(-1), eval_pred.label_ids, names)

        return compute

    def headline(self, metrics: dict) -> dict:
        keep = ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro")
        return {
            k: v for k, v in metrics.items() if k.split("_", 1)[-1] in keep or k.split("_", 1)[-1].startswith("f1_")
        }

    def records(self, ctx: RunContext, raw_split: Any, split: Any, output: Any) -> list[dict]:
        from llmtune.metrics import softmax

        names = ctx.state["label_names"]
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        probs = softmax(logits.astype("float64"))
        pred_ids = probs.argmax(-1)
        cols = ctx.columns
        rows = []
        for i, example in enumerate(raw_split):
            row = {"text": example[cols["text"]]}
            if cols.get("text_pair"):
                row["text_pair"] = example[cols["text_pair"]]
            row["label"] = names[int(output.label_ids[i])]
            row["prediction"] = names[int(pred_ids[i])]
            row["score"] = round(float(probs[i, pred_ids[i]]), 6)
            rows.append(row)
        return rows


def _pick(ds: Any, explicit: str | None, candidates: tuple[str, ...], what: str, key: str) -> str:
    from llmtune.data import pick_column

    return pick_column(ds, explicit, candidates, what, key)


def _label_kind(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return "int"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "int" if value.is_integer() else "float"
    if isinstance(value, str):
        return "str" if value.strip() else "missing"
    return "other"


def _model_max(ctx: RunContext) -> int:
    limit = getattr(ctx.tokenizer, "model_max_length", None) or 10**9
    return int(limit) if limit < 10**8 else 10**9


TASKS = [
    ClassificationTask(
        "sentiment",
        (),
        "sentiment analysis: text classification with sentiment defaults (SST-2 style data)",
    ),
    ClassificationTask(
        "text-classification",
        ("classification", "sequence-classification"),
        "text or sentence-pair classification into named classes",
    ),
]
