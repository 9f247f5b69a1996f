"""Text classification (``sentiment`` is the same task with sentiment-data defaults).

Single sentences or sentence pairs (``data.text_pair_column``). Three problem types, detected from
the label column or set with ``options.problem_type``:

- single label: integer, boolean or string class labels (softmax, accuracy and F1);
- multi label: list-valued labels such as ``["sports", "politics"]`` (sigmoid per label,
  ``options.threshold``, micro/macro F1 and subset accuracy);
- regression: float labels such as STS-B similarity scores (one output, MSE, Pearson, Spearman).

Label names are stored in the model config (``id2label``/``label2id``) and the problem type in
``config.problem_type``, so a saved model reports names and is evaluated the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmtune.config import bounded, choice
from llmtune.errors import LlmtuneError
from llmtune.tasks.base import RunContext, Task, require_content, sequence_limit, tokenize_split

TEXT_COLUMNS = ("text", "sentence", "review", "content")
LABEL_COLUMNS = ("label", "labels")
PROBLEM_TYPES = ("auto", "single_label", "multi_label", "regression")
# llmtune name -> ``PretrainedConfig.problem_type`` (which picks the loss in transformers)
HF_PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}
# metric used to pick the best checkpoint when train.metric_for_best_model is not set
BEST_METRIC = {"single_label": ("accuracy", True), "multi_label": ("f1_micro", True), "regression": ("mse", False)}


@dataclass
class ClassificationOptions:
    # Names for integer labels, in id order (e.g. [negative, positive] for SST-2's 0/1).
    label_names: list[str] | None = None
    # auto | single_label | multi_label | regression. auto: list-valued labels -> multi_label,
    # non-integer numbers -> regression, otherwise single_label.
    problem_type: str = choice("auto", *PROBLEM_TYPES)
    # multi_label: a label is predicted when its sigmoid probability is >= threshold.
    threshold: float = bounded(0.5, gt=0, lt=1)


class ClassificationTask(Task):
    family = "classification"
    Options = ClassificationOptions
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    # BERT-likes: classifier; GPT-likes: score; BART/T5: classification_head; DistilBERT adds pre_classifier.
    head_modules = ("classifier", "score", "classification_head", "pre_classifier")
    main_metric = "accuracy"
    greater_is_better = True
    pipeline_tag = "text-classification"

    def __init__(self, name: str, aliases: tuple[str, ...], description: str):
        self.name = name
        self.aliases = aliases
        self.description = description

    def validate(self, cfg: Any) -> list[str]:
        o = cfg.options
        problems = []
        names = o.label_names
        if names is not None and (len(names) < 2 or len(set(names)) != len(names)):
            problems.append(f"options.label_names needs at least two distinct names, got {names}")
        if o.problem_type == "regression" and names is not None:
            problems.append("options.label_names does not apply to options.problem_type=regression: remove it")
        return problems

    # ---- problem type -----------------------------------------------------------------------
    def _problem_type(self, ctx: RunContext, train: Any, label_col: str) -> str:
        """single_label / multi_label / regression: from options, a saved model, or the labels."""
        if not ctx.training:
            saved = getattr(ctx.model.config, "problem_type", None)
            by_hf = {v: k for k, v in HF_PROBLEM_TYPES.items()}
            if saved in by_hf:
                return by_hf[saved]
            return "regression" if ctx.model.config.num_labels == 1 else "single_label"
        wanted = ctx.cfg.options.problem_type
        if wanted != "auto":
            return wanted
        feature = train.features.get(label_col)
        if feature is not None and hasattr(feature, "names"):
            return "single_label"
        if _is_list_feature(feature):
            return "multi_label"
        if isinstance(feature, dict):  # a struct column: no kernel for unique(), no meaning as a label
            raise LlmtuneError(
                f"label column '{label_col}' holds unsupported label values (mappings): use integer, string, "
                f"list or numeric labels"
            )
        values = _unique(train, label_col)
        if any(isinstance(v, float) and not v.is_integer() for v in values):
            return "regression"
        return "single_label"

    def _multi_label_space(self, ctx: RunContext, train: Any, label_col: str) -> list[str]:
        feature = train.features.get(label_col)
        inner = _list_inner(feature)
        explicit = ctx.cfg.options.label_names
        if inner is not None and hasattr(inner, "names"):  # Sequence(ClassLabel)
            return list(explicit or inner.names)
        if not _is_list_feature(feature):
            raise LlmtuneError(
                f"options.problem_type=multi_label needs list-valued labels in column '{label_col}' "
                f'(e.g. ["sports", "politics"] in jsonl), got {feature}'
            )
        values: set = set()
        for row in train[label_col]:
            if row is None:
                raise LlmtuneError(f"label column '{label_col}' has empty values: use [] for an example with no label")
            values.update(row)
        kinds = {_label_kind(v) for v in values}
        if kinds - {"int", "str"} or len(kinds) > 1:
            bad = next(v for v in values if _label_kind(v) not in ("int", "str") or len(kinds) > 1)
            raise LlmtuneError(
                f"label column '{label_col}' holds unsupported label {bad!r} in a label list; "
                f"multi-label classification needs lists of integer or string labels"
            )
        if explicit:
            known = set(explicit) if "str" in kinds else set(range(len(explicit)))
            unknown = sorted(v for v in values if v not in known)
            if unknown:
                raise LlmtuneError(f"labels {unknown} are not in options.label_names {explicit}")
            return list(explicit)
        if "int" in kinds:
            ints = sorted(int(v) for v in values)
            return [str(i) for i in range(ints[-1] + 1)] if ints[0] == 0 else [str(i) for i in ints]
        return sorted(values)

    # ---- labels ----------------------------------------------------------------------------
    def _label_space(self, ctx: RunContext, train: Any, label_col: str) -> list[str]:
        """Label names in id order, decided from the training data (or options.label_names)."""
        feature = train.features.get(label_col)
        explicit = ctx.cfg.options.label_names
        if feature is not None and hasattr(feature, "names"):  # ClassLabel
            return list(explicit or feature.names)
        values = _unique(train, label_col)
        kinds = {_label_kind(v) for v in values}
        if "missing" in kinds:
            raise LlmtuneError(f"label column '{label_col}' has empty values: every row needs a label")
        if kinds == {"int", "float"}:
            kinds = {"float"}  # e.g. 1.0, 1.75, 3.0: scores, not classes
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
                f"single-label classification needs integer or string class labels; for scores set "
                f"options.problem_type=regression"
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

    def _check_label_variety(self, ctx: RunContext, raw: Any, label_col: str, problem: str) -> None:
        """Refuse training labels with nothing to learn (one class, one label set, one score);
        warn about an evaluation split with a single class, which the user may mean."""
        for split, ds in raw.items():
            if not hasattr(ds, "__len__") or label_col not in ds.column_names:
                continue
            if problem == "multi_label":
                distinct = {tuple(sorted(map(str, row or []))) for row in ds[label_col]}
            else:
                distinct = set(_unique(ds, label_col))
            if len(distinct) >= 2:
                continue
            only = next(iter(distinct), None)
            shown = list(only) if problem == "multi_label" else only
            if split == "train" and ctx.training:
                if problem == "regression":
                    raise LlmtuneError(
                        f"every training label in column '{label_col}' is {shown!r}: regression needs targets that vary"
                    )
                what = "the same labels" if problem == "multi_label" else "the same class"
                raise LlmtuneError(
                    f"every training row has {what} ({shown!r} in column '{label_col}'): a classifier needs examples "
                    f"of at least two classes; check the data and data.label_column"
                )
            if problem == "single_label":
                ctx.warnings.append(f"split '{split}' has a single class ({shown!r}): its accuracy says little")

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
        for split, ds in raw.items():
            require_content(ds, text_col, split, "text", "data.text_column")
            require_content(ds, pair_col, split, "text pair", "data.text_pair_column")

        problem = self._problem_type(ctx, first, label_col)
        ctx.state["problem_type"] = problem
        if not ctx.training:
            id2label = ctx.model.config.id2label
            names = [str(id2label[i]) for i in range(len(id2label))]
        elif problem == "regression":
            names = ["score"]
        elif problem == "multi_label":
            names = self._multi_label_space(ctx, raw["train"], label_col)
        else:
            if _is_list_feature(raw["train"].features.get(label_col)):
                raise LlmtuneError(
                    f"label column '{label_col}' holds lists of labels: drop options.problem_type=single_label "
                    f"(or set it to multi_label)"
                )
            names = self._label_space(ctx, raw["train"], label_col)
        self._check_label_variety(ctx, raw, label_col, problem)
        # Regression has no label names to show (the model card lists label_names when set).
        ctx.state["label_names"] = None if problem == "regression" else names
        ctx.state["output_names"] = names
        # Integer data labels map to names "0", "1", ...; when the names are words (e.g. a model
        # trained on "negative"/"positive" scored on 0/1 data) an integer is taken as the id.
        numeric_ids = not all(n.lstrip("-").isdigit() for n in names)
        to_id = self._label_lookup(names, numeric_ids)
        tokenizer, max_length = ctx.tokenizer, sequence_limit(ctx, cap=self.sequence_cap)

        def unknown(value: Any, split: str) -> LlmtuneError:
            return LlmtuneError(
                f"label {value!r} in split '{split}' is not one the model knows "
                f"({', '.join(names)}): fix the data or retrain with that label"
            )

        def encode_label(value: Any, class_names: list[str] | None, split: str) -> Any:
            if problem == "regression":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN != NaN
                    raise LlmtuneError(
                        f"label column '{label_col}' in split '{split}' has a missing or non-numeric value {value!r}: "
                        f"regression needs a number in every row"
                    )
                return float(value)
            if problem == "multi_label":
                if value is None or not isinstance(value, (list, tuple)):
                    raise LlmtuneError(
                        f"label column '{label_col}' in split '{split}' has {value!r} where a list of labels "
                        f"is expected (use [] for no label)"
                    )
                hot = [0.0] * len(names)
                for item in value:
                    if class_names is not None and isinstance(item, int) and item >= 0:
                        item = class_names[item]
                    label_id = to_id(item)
                    if label_id is None:
                        raise unknown(item, split)
                    hot[label_id] = 1.0
                return hot
            if class_names is not None and isinstance(value, int) and value >= 0:
                value = class_names[value]
            label_id = to_id(value)
            if label_id is None:
                raise unknown(value, split)
            return label_id

        out = {}
        for split, ds in raw.items():
            feature = ds.features.get(label_col)
            inner = _list_inner(feature) if problem == "multi_label" else feature
            class_names = list(inner.names) if inner is not None and hasattr(inner, "names") else None

            def encode(batch: dict, _class_names=class_names, _split=split) -> dict:
                texts = [_as_text(t) for t in batch[text_col]]
                pairs = [_as_text(t) for t in batch[pair_col]] if pair_col else None
                enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
                enc["labels"] = [encode_label(v, _class_names, _split) for v in batch[label_col]]
                enc["length"] = [len(ids) for ids in enc["input_ids"]]
                return enc

            out[split] = tokenize_split(ctx, ds, split, encode, required=(text_col, pair_col, label_col))
        return out

    # ---- model ------------------------------------------------------------------------------
    def build_model(self, ctx: RunContext) -> Any:
        from llmtune.loading import load_model

        names = ctx.state["output_names"]
        problem = ctx.state["problem_type"]
        model = load_model(
            ctx,
            self.auto_model,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
            problem_type=HF_PROBLEM_TYPES[problem],
            ignore_mismatched_sizes=True,
        )
        if model.config.pad_token_id is None and ctx.tokenizer.pad_token_id is not None:
            model.config.pad_token_id = ctx.tokenizer.pad_token_id
        return model

    def training_args(self, ctx: RunContext) -> dict:
        if ctx.cfg.train.metric_for_best_model is not None:
            return {}
        metric, greater = BEST_METRIC[ctx.state.get("problem_type", "single_label")]
        return {"metric_for_best_model": metric, "greater_is_better": greater}

    def _scores(self, ctx: RunContext, logits: Any) -> Any:
        """Softmax probabilities, sigmoid probabilities, or the regression output (examples x outputs)."""
        from llmtune.metrics import sigmoid, softmax

        logits = (logits[0] if isinstance(logits, tuple) else logits).astype("float64")
        problem = ctx.state["problem_type"]
        if problem == "multi_label":
            return sigmoid(logits)
        return logits if problem == "regression" else softmax(logits)

    def compute_metrics(self, ctx: RunContext) -> Any:
        from llmtune.metrics import (
            classification_loss,
            classification_metrics,
            multilabel_metrics,
            regression_metrics,
        )

        names = ctx.state["output_names"]
        problem = ctx.state["problem_type"]
        threshold = ctx.cfg.options.threshold

        def compute(eval_pred: Any) -> dict:
            logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
            scores = self._scores(ctx, logits)
            labels = eval_pred.label_ids
            if problem == "regression":
                out = regression_metrics(scores[:, 0], labels)
            elif problem == "multi_label":
                out = multilabel_metrics(scores >= threshold, labels, names)
            else:
                out = classification_metrics(scores.argmax(-1), labels, names)
            # Replaces the Trainer's eval_loss (a mean of batch means) with the exact mean.
            out["loss"] = classification_loss(problem, logits, labels)
            return out

        return compute

    def headline(self, metrics: dict) -> dict:
        keep = (
            "loss",
            "accuracy",
            "precision_macro",
            "recall_macro",
            "f1_macro",
            "f1_micro",
            "subset_accuracy",
            "mse",
            "rmse",
            "mae",
            "pearson",
            "spearman",
        )
        return {
            k: v for k, v in metrics.items() if k.split("_", 1)[-1] in keep or k.split("_", 1)[-1].startswith("f1_")
        }

    # ---- inference ----------------------------------------------------------------------------
    def prepare_inference(self, ctx: RunContext, columns: list[str]) -> None:
        data = ctx.cfg.data
        text_col = _pick(columns, data.text_column, TEXT_COLUMNS, "text", "data.text_column")
        pair_col = (
            _pick(columns, data.text_pair_column, (), "text pair", "data.text_pair_column")
            if data.text_pair_column
            else None
        )
        ctx.columns = {"text": text_col, "text_pair": pair_col}
        ctx.state["problem_type"] = self._problem_type(ctx, None, "")
        id2label = ctx.model.config.id2label
        names = [str(id2label[i]) for i in range(len(id2label))]
        ctx.state["output_names"] = names

    def predict_batch(self, ctx: RunContext, rows: list[dict], settings: Any) -> list[dict]:
        from llmtune.inference.predict import encode_device

        cols = ctx.columns
        texts = [_as_text(r.get(cols["text"])) for r in rows]
        pairs = [_as_text(r.get(cols["text_pair"])) for r in rows] if cols.get("text_pair") else None
        max_length = sequence_limit(ctx, cap=self.sequence_cap)
        enc = ctx.tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        logits = ctx.model(**encode_device(ctx, enc)).logits.float().cpu().numpy()
        scores = self._scores(ctx, logits)
        threshold = settings.threshold if settings.threshold is not None else ctx.cfg.options.threshold
        out = []
        for i, text in enumerate(texts):
            row = {"text": text}
            if pairs is not None:
                row["text_pair"] = pairs[i]
            row.update(self._prediction(ctx, scores[i], threshold, settings.all_scores))
            out.append(row)
        return out

    def _prediction(self, ctx: RunContext, scores: Any, threshold: float, all_scores: bool) -> dict:
        """The predicted label(s) or value of one example from its probabilities/outputs."""
        names, problem = ctx.state["output_names"], ctx.state["problem_type"]
        if problem == "regression":
            return {"value": round(float(scores[0]), 6)}
        table = {n: round(float(p), 6) for n, p in zip(names, scores, strict=False)}
        if problem == "multi_label":
            out: dict[str, Any] = {"labels": [n for n, p in zip(names, scores, strict=False) if p >= threshold]}
        else:
            best = int(scores.argmax())
            out = {"label": names[best], "score": table[names[best]]}
        if all_scores:
            out["scores"] = table
        return out

    def records(self, ctx: RunContext, raw_split: Any, split: Any, output: Any) -> list[dict]:
        names = ctx.state["output_names"]
        problem = ctx.state["problem_type"]
        threshold = ctx.cfg.options.threshold
        scores = self._scores(ctx, output.predictions)
        labels = output.label_ids
        cols = ctx.columns
        rows = []
        for i, example in enumerate(raw_split):
            row = {"text": example[cols["text"]]}
            if cols.get("text_pair"):
                row["text_pair"] = example[cols["text_pair"]]
            if problem == "regression":
                row["label"] = float(labels[i])
                row["prediction"] = round(float(scores[i, 0]), 6)
            elif problem == "multi_label":
                row["label"] = [n for n, on in zip(names, labels[i], strict=False) if on >= 0.5]
                row["prediction"] = [n for n, p in zip(names, scores[i], strict=False) if p >= threshold]
                row["scores"] = {n: round(float(p), 6) for n, p in zip(names, scores[i], strict=False)}
            else:
                pred = int(scores[i].argmax())
                row["label"] = names[int(labels[i])]
                row["prediction"] = names[pred]
                row["score"] = round(float(scores[i, pred]), 6)
            rows.append(row)
        return rows


def _pick(ds: Any, explicit: str | None, candidates: tuple[str, ...], what: str, key: str) -> str:
    from llmtune.data import pick_column

    return pick_column(ds, explicit, candidates, what, key)


def _list_inner(feature: Any) -> Any:
    """The item feature of a list-valued column (``List``/``Sequence``/``LargeList``), else None."""
    if feature is None or not _is_list_feature(feature):
        return None
    return feature[0] if isinstance(feature, list) else feature.feature


def _is_list_feature(feature: Any) -> bool:
    return isinstance(feature, list) or type(feature).__name__ in ("List", "Sequence", "LargeList")


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


def _unique(ds: Any, column: str) -> list:
    """Distinct values of a label column; a column mixing types gets a one-line error."""
    try:
        return ds.unique(column)
    except Exception as exc:  # Arrow has no unique() kernel for mixed-type (JSON) columns
        raise LlmtuneError(
            f"label column '{column}' mixes value types (e.g. integers and strings): use one type for every label"
        ) from exc


def _as_text(value: Any) -> str:
    """Text for the tokenizer: numbers in a text column become their string form, null becomes ''."""
    return "" if value is None else value if isinstance(value, str) else str(value)
