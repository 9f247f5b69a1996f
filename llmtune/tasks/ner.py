"""Named-entity recognition (token classification).

Data: CoNLL column files (one token per line, the tag in the LAST column, a blank line between
sentences, ``-DOCSTART-`` lines skipped; e.g. ``eng.train``, ``train.conll``, ``dev.txt``), or
jsonl/parquet/Hub data with a token list column (``tokens``/``words``) and a tag list column
(``ner_tags``/``tags``/``ner``) holding string tags, or integer tags named by a ``ClassLabel``
feature or ``options.label_names``.

Words are split into sub-words by the (fast) tokenizer; ``word_ids()`` aligns them: the first
sub-word of each word carries the word's tag, the others are ignored in the loss (or, with
``options.label_all_tokens``, carry the tag too, ``B-X`` becoming ``I-X``). Scores are computed on
whole words against the full gold sentence (a word cut off by ``data.max_length`` counts as
predicted ``O``) with seqeval's entity-level precision/recall/F1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError, one_line
from llmtune.tasks.base import (
    RunContext,
    Task,
    predict_outputs,
    require_content,
    require_fast_tokenizer,
    sequence_limit,
    tokenize_split,
)

TOKEN_COLUMNS = ("tokens", "words")
TAG_COLUMNS = ("ner_tags", "tags", "ner", "labels")
# raw-text input of `llmtune predict` (split into words by WORD)
TEXT_INPUT_COLUMNS = ("text", "sentence", "content")
# words of raw text: runs of word characters (with inner - or '), or single punctuation marks
WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")
# files a CoNLL reader must not touch: the standard loaders read them
STRUCTURED_EXTENSIONS = (".json", ".jsonl", ".csv", ".tsv", ".parquet")
DOCSTART = "-DOCSTART-"
_PREFIX_ORDER = {p: i for i, p in enumerate("BIELSU")}


@dataclass
class NerOptions:
    # Tag names for integer tags, in id order (not needed for string tags or ClassLabel data).
    label_names: list[str] | None = None
    # Label every sub-word of a word (B-X continues as I-X), not only the first one.
    label_all_tokens: bool = False
    # Tagging scheme: IOB1 | IOB2 | IOE1 | IOE2 | IOBES | BILOU (used by mode=strict).
    scheme: str = "IOB2"
    # default: conlleval-compatible entity matching (seqeval's default);
    # strict: only entities well formed under `scheme` count.
    mode: str = "default"


def read_conll(path: Path) -> Any:
    """Load a CoNLL column file as a ``Dataset`` with ``tokens`` and ``ner_tags`` (string tags).

    Parsing is ``datasets``' ``conll`` builder (Arrow cache, ``-DOCSTART-`` skipped); this only
    finds how many columns the file has, so that the tag is taken from the last one. Returns
    None for structured files (json, csv, ...) that the standard loaders read.
    """
    from datasets import Features, List, Value, load_dataset

    if path.suffix.lower() in STRUCTURED_EXTENSIONS:
        return None
    n_columns, delimiter = _conll_layout(path)
    middle = [f"column_{i}" for i in range(1, n_columns - 1)]
    names = ["tokens", *middle, "ner_tags"]
    features = Features({name: List(Value("string")) for name in names})
    try:
        ds = load_dataset(
            "conll",
            data_files={"train": [str(path)]},
            split="train",
            column_names=names,
            delimiter=delimiter,
            features=features,
        )
    except Exception as exc:
        cause = exc.__cause__ or exc
        raise LlmtuneError(f"could not read CoNLL file {path}: {one_line(cause)}") from exc
    if len(ds) == 0:
        raise LlmtuneError(f"dataset file {path} has no sentences: expected CoNLL columns (TOKEN ... TAG)")
    return ds.remove_columns(middle) if middle else ds


def _conll_layout(path: Path) -> tuple[int, str | None]:
    """Column count and delimiter (tab if the file uses tabs, else any whitespace) of a CoNLL file."""
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                line = line.rstrip("\r\n")
                if not line.strip() or line.startswith(DOCSTART):
                    continue
                delimiter = "\t" if "\t" in line else None
                parts = line.split(delimiter)
                if len(parts) < 2:
                    raise LlmtuneError(
                        f"dataset file {path} line {lineno}: expected CoNLL columns 'TOKEN ... TAG' (the tag last), "
                        f"got {line.strip()!r}"
                    )
                return len(parts), delimiter
    except UnicodeDecodeError as exc:
        raise LlmtuneError(f"dataset file {path} is not UTF-8 text ({exc.reason}): re-encode it as UTF-8") from exc
    raise LlmtuneError(f"dataset file {path} has no sentences: expected CoNLL columns (TOKEN ... TAG)")


def sort_tags(tags: set[str]) -> list[str]:
    """``O`` first, then by entity type, B before I (E, L, S, U) within a type: a stable id order."""

    def key(tag: str) -> tuple:
        if tag == "O":
            return (0, "", 0)
        prefix, sep, kind = tag.partition("-")
        if not sep:
            return (1, tag, 0)
        return (1, kind, _PREFIX_ORDER.get(prefix.upper(), 9), prefix)

    return sorted(tags, key=key)


def continuation_ids(names: list[str]) -> list[int]:
    """For each tag id, the id a later sub-word of the same word gets (``B-X`` -> ``I-X``)."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for i, name in enumerate(names):
        prefix, sep, kind = name.partition("-")
        if sep and prefix in ("B", "S", "U") and f"I-{kind}" in index:
            out.append(index[f"I-{kind}"])
        else:
            out.append(i)
    return out


def align_labels(word_ids: list[int | None], word_tags: list[int], label_all: bool, cont: list[int]) -> list[int]:
    """Sub-word labels from word labels: special tokens -100; first sub-word the word's tag."""
    labels = []
    previous = None
    for w in word_ids:
        if w is None:
            labels.append(-100)
        elif w != previous:
            labels.append(word_tags[w])
        else:
            labels.append(cont[word_tags[w]] if label_all else -100)
        previous = w
    return labels


def word_predictions(pred_ids: Any, word_ids: list[int], n_words: int, names: list[str]) -> list[str]:
    """Tag per word from the first sub-word's prediction; words with no sub-word get ``O``."""
    tags = ["O"] * n_words
    seen = set()
    for pos, w in enumerate(word_ids):
        if w >= 0 and w not in seen:
            seen.add(w)
            tags[w] = names[int(pred_ids[pos])]
    return tags


class NerTask(Task):
    name = "ner"
    aliases = ("token-classification",)
    family = "ner"
    description = "named-entity recognition / token classification (CoNLL or jsonl tokens + tags)"
    Options = NerOptions
    auto_model = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    head_modules = ("classifier", "score")
    main_metric = "f1"
    greater_is_better = True
    pipeline_tag = "token-classification"

    def validate(self, cfg: Any) -> list[str]:
        from llmtune.metrics.ner import MODES, SCHEMES

        o = cfg.options
        problems = []
        if o.scheme.upper() not in SCHEMES:
            problems.append(f"options.scheme must be one of {', '.join(SCHEMES)}, got {o.scheme!r}")
        if o.mode not in MODES:
            problems.append(f"options.mode must be one of {', '.join(MODES)}, got {o.mode!r}")
        if o.label_names is not None and len(set(o.label_names)) != len(o.label_names):
            problems.append(f"options.label_names has duplicates: {o.label_names}")
        return problems

    # ---- data ------------------------------------------------------------------------------
    def load_tokenizer(self, ctx: RunContext, **kwargs: Any) -> Any:
        tokenizer = super().load_tokenizer(ctx, **kwargs)
        if getattr(tokenizer, "add_prefix_space", None) is False:
            # byte-level BPE (RoBERTa, GPT-2) refuses pre-split words without it
            tokenizer = super().load_tokenizer(ctx, add_prefix_space=True, **kwargs)
        require_fast_tokenizer(tokenizer, self.name, "word alignment (word_ids)")
        return tokenizer

    def load_data(self, ctx: RunContext) -> Any:
        from llmtune.data import load_raw

        return load_raw(ctx.cfg.data, seed=ctx.cfg.train.seed, carve_validation=ctx.training, reader=read_conll)

    def _tag_space(self, ctx: RunContext, train: Any, tag_col: str) -> list[str]:
        inner = _inner_feature(train.features.get(tag_col))
        explicit = ctx.cfg.options.label_names
        if inner is not None and hasattr(inner, "names"):
            return list(explicit or inner.names)
        values: set = set()
        for row in train[tag_col]:
            values.update(row or ())
        if "" in values:
            raise LlmtuneError(
                f"tag column '{tag_col}' has empty tags (in CoNLL files: a line with fewer columns than the others)"
            )
        if all(isinstance(v, str) for v in values):
            if explicit:
                unknown = sorted(values - set(explicit))
                if unknown:
                    raise LlmtuneError(f"tags {unknown} are not in options.label_names {explicit}")
                return list(explicit)
            return sort_tags(values)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            if not explicit:
                raise LlmtuneError(
                    f"tag column '{tag_col}' holds integer tags without names: set options.label_names "
                    f"(e.g. --set 'options.label_names=[O, B-PER, I-PER]') or use string tags"
                )
            if min(values) < 0 or max(values) >= len(explicit):
                raise LlmtuneError(
                    f"integer tags {min(values)}..{max(values)} do not fit options.label_names ({len(explicit)} names)"
                )
            return list(explicit)
        bad = next(v for v in values if not isinstance(v, (str, int)))
        raise LlmtuneError(f"tag column '{tag_col}' holds unsupported tag {bad!r}: use string or integer tags")

    def prepare(self, ctx: RunContext, raw: Any) -> dict[str, Any]:
        from llmtune.data import pick_column

        cfg = ctx.cfg
        first = raw["train"] if "train" in raw else raw["validation"]
        tok_col = pick_column(first, cfg.data.text_column, TOKEN_COLUMNS, "token list", "data.text_column")
        tag_col = pick_column(first, cfg.data.label_column, TAG_COLUMNS, "tag list", "data.label_column")
        ctx.columns = {"tokens": tok_col, "tags": tag_col}
        for split, ds in raw.items():
            require_content(ds, tok_col, split, "token list", "data.text_column")
        if ctx.training:
            present: set = set()
            for row in raw["train"][tag_col]:
                present.update(row or ())
            if len(present) < 2:
                shown = next(iter(present), None)
                raise LlmtuneError(
                    f"every tag in the training split is {shown!r} (column '{tag_col}'): there are no entities to "
                    f"learn; check the data and data.label_column"
                )
            names = self._tag_space(ctx, raw["train"], tag_col)
        else:
            id2label = ctx.model.config.id2label
            names = [str(id2label[i]) for i in range(len(id2label))]
        ctx.state["label_names"] = names
        index = {n: i for i, n in enumerate(names)}
        cont = continuation_ids(names)
        label_all = cfg.options.label_all_tokens
        tokenizer = ctx.tokenizer
        max_length = sequence_limit(ctx, cap=self.sequence_cap)

        out = {}
        for split, ds in raw.items():
            inner = _inner_feature(ds.features.get(tag_col))
            class_names = list(inner.names) if inner is not None and hasattr(inner, "names") else None
            # integers without a ClassLabel: options.label_names when training, else model ids
            int_names = class_names or (cfg.options.label_names if ctx.training else names)

            def to_id(tag: Any, _split: str, _int_names: list[str] | None = int_names) -> int:
                if isinstance(tag, int) and not isinstance(tag, bool) and _int_names and 0 <= tag < len(_int_names):
                    tag = _int_names[tag]
                if tag not in index:
                    raise LlmtuneError(
                        f"tag {tag!r} in split '{_split}' is not one the model knows ({', '.join(names)}): "
                        f"fix the data or retrain with that tag"
                    )
                return index[tag]

            def encode(batch: dict, indices: list[int], _split: str = split, _to_id: Any = to_id) -> dict:
                words = [[w if w is not None else "" for w in (row or [])] for row in batch[tok_col]]
                enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
                labels, word_ids_col, word_labels = [], [], []
                for i, row_tags in enumerate(batch[tag_col]):
                    row_tags = row_tags or []
                    if len(row_tags) != len(words[i]):
                        raise LlmtuneError(
                            f"split '{_split}' row {indices[i]}: {len(words[i])} tokens but {len(row_tags)} tags "
                            f"in columns '{tok_col}'/'{tag_col}'"
                        )
                    ids = [_to_id(t, _split) for t in row_tags]
                    wids = enc.word_ids(i)
                    labels.append(align_labels(wids, ids, label_all, cont))
                    word_ids_col.append([-1 if w is None else w for w in wids])
                    word_labels.append(ids)
                enc["labels"] = labels
                enc["length"] = [len(x) for x in enc["input_ids"]]
                # kept for word-level scoring; the Trainer drops columns the model does not take
                enc["word_ids"] = word_ids_col
                enc["word_labels"] = word_labels
                return enc

            out[split] = tokenize_split(ctx, ds, split, encode, required=(tok_col, tag_col), with_indices=True)
        if "validation" in out:
            ctx.state["eval_alignment"] = (list(out["validation"]["word_ids"]), list(out["validation"]["word_labels"]))
        return out

    # ---- model -----------------------------------------------------------------------------
    def build_model(self, ctx: RunContext) -> Any:
        from llmtune.loading import load_model

        names = ctx.state["label_names"]
        return load_model(
            ctx,
            self.auto_model,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
            ignore_mismatched_sizes=True,
        )

    def collator(self, ctx: RunContext) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(ctx.tokenizer)

    def preprocess_logits_for_metrics(self, ctx: RunContext) -> Any:
        def argmax(logits: Any, labels: Any) -> Any:
            logits = logits[0] if isinstance(logits, tuple) else logits
            return logits.argmax(dim=-1)  # keep ids, not (tokens x labels) floats, across eval batches

        return argmax

    # ---- metrics and predictions -------------------------------------------------------------
    def _decode(self, ctx: RunContext, pred_ids: Any, word_ids: list, word_labels: list) -> tuple[list, list]:
        names = ctx.state["label_names"]
        refs = [[names[t] for t in tags] for tags in word_labels]
        preds = [word_predictions(pred_ids[i], word_ids[i], len(word_labels[i]), names) for i in range(len(refs))]
        return refs, preds

    def _score(self, ctx: RunContext, refs: list, preds: list) -> dict:
        from llmtune.metrics.ner import ner_metrics

        o = ctx.cfg.options
        return ner_metrics(refs, preds, scheme=o.scheme, mode=o.mode)

    def compute_metrics(self, ctx: RunContext) -> Any:
        def compute(eval_pred: Any) -> dict:
            word_ids, word_labels = ctx.state["eval_alignment"]
            preds = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
            return self._score(ctx, *self._decode(ctx, preds, word_ids, word_labels))

        return compute

    def predict(self, ctx: RunContext, trainer: Any, raw_split: Any, split: Any) -> tuple[dict, list[dict]]:
        output = predict_outputs(trainer, split)
        refs, preds = self._decode(ctx, output.predictions, list(split["word_ids"]), list(split["word_labels"]))
        metrics = dict(output.metrics)
        metrics.update({f"eval_{k}": v for k, v in self._score(ctx, refs, preds).items()})
        tok_col = ctx.columns["tokens"]
        records = [
            {"tokens": list(example[tok_col]), "reference": ref, "prediction": pred}
            for example, ref, pred in zip(raw_split, refs, preds, strict=False)
        ]
        return metrics, records

    # ---- inference ----------------------------------------------------------------------------
    def prepare_inference(self, ctx: RunContext, columns: list[str]) -> None:
        """Pre-split words (a ``tokens``/``words`` list column) or raw text (``text``/``sentence``)."""
        from llmtune.data import pick_column

        explicit = ctx.cfg.data.text_column
        tok_col = explicit if explicit in TOKEN_COLUMNS else next((c for c in TOKEN_COLUMNS if c in columns), None)
        if tok_col and tok_col in columns:
            ctx.columns = {"tokens": tok_col}
        else:
            col = pick_column(columns, explicit, TEXT_INPUT_COLUMNS, "text (or token list)", "data.text_column")
            ctx.columns = {"text": col}
        id2label = ctx.model.config.id2label
        ctx.state["label_names"] = [str(id2label[i]) for i in range(len(id2label))]

    def input_length(self, ctx: RunContext, row: dict) -> int:
        if "tokens" in ctx.columns:
            return sum(len(str(w)) + 1 for w in row.get(ctx.columns["tokens"]) or [])
        return len(str(row.get(ctx.columns["text"]) or ""))

    def predict_batch(self, ctx: RunContext, rows: list[dict], settings: Any) -> list[dict]:
        import torch

        from llmtune.inference.predict import encode_device

        names = ctx.state["label_names"]
        texts, spans = [], []
        for row in rows:
            if "tokens" in ctx.columns:
                words = [str(w) for w in row.get(ctx.columns["tokens"]) or []]
                text, offsets, at = " ".join(words), [], 0
                for w in words:
                    offsets.append((at, at + len(w)))
                    at += len(w) + 1
            else:
                text = str(row.get(ctx.columns["text"]) or "")
                offsets = [m.span() for m in WORD.finditer(text)]
            texts.append(text)
            spans.append(offsets)
        words = [[t[a:b] for a, b in offs] for t, offs in zip(texts, spans, strict=True)]
        max_length = sequence_limit(ctx, cap=self.sequence_cap)
        enc = ctx.tokenizer(
            words, is_split_into_words=True, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        probs = torch.softmax(ctx.model(**encode_device(ctx, enc)).logits.float(), dim=-1).cpu()
        out = []
        for i, (text, offsets) in enumerate(zip(texts, spans, strict=True)):
            tags, scores = ["O"] * len(offsets), [1.0] * len(offsets)
            seen: set = set()
            for pos, w in enumerate(enc.word_ids(i)):
                if w is not None and w not in seen:  # the first sub-word speaks for the word
                    seen.add(w)
                    best = int(probs[i, pos].argmax())
                    tags[w], scores[w] = names[best], float(probs[i, pos, best])
            record: dict[str, Any] = {"text": text, "entities": _entities(text, offsets, tags, scores)}
            if "tokens" in ctx.columns:
                record["tags"] = tags
            out.append(record)
        return out

    def headline(self, metrics: dict) -> dict:
        keep = ("loss", "precision", "recall", "f1", "accuracy")
        return {k: v for k, v in metrics.items() if k.split("_", 1)[-1] in keep or k.endswith("_f1")}


def _entities(text: str, offsets: list, tags: list[str], scores: list[float]) -> list[dict]:
    """Entity spans from word tags (seqeval's chunking): type, text, character start/end, mean score."""
    from seqeval.metrics.sequence_labeling import get_entities

    out = []
    for kind, first, last in get_entities(list(tags)):
        start, end = offsets[first][0], offsets[last][1]
        score = sum(scores[first : last + 1]) / (last - first + 1)
        out.append({"type": kind, "text": text[start:end], "start": start, "end": end, "score": round(score, 4)})
    return out


def _inner_feature(feature: Any) -> Any:
    """The item feature of a list column (``List``/``Sequence``/``LargeList``), else None."""
    if feature is None:
        return None
    if isinstance(feature, list):
        return feature[0] if feature else None
    return getattr(feature, "feature", None)


TASKS = [NerTask()]
