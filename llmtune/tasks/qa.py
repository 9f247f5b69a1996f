"""Extractive question answering (SQuAD v1.1 / v2.0 style).

Data: SQuAD json (``{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}``, flattened
here), json with a flat ``data`` list, or jsonl/parquet/Hub data with ``id``, ``question``,
``context`` and ``answers`` = ``{"text": [...], "answer_start": [...]}`` (a list of
``{"text", "answer_start"}`` dicts works too). A question with no answers is unanswerable
(SQuAD v2); ``options.version_2_with_negative`` (default: detected from the training data)
lets the model predict "no answer".

Long contexts are split into overlapping windows (``data.max_length`` tokens, ``options.doc_stride``
tokens of overlap); each window is labelled with the answer's token span, or the [CLS] token
when the answer is not inside it. Predictions are post-processed per question across all of its
windows: the ``options.n_best_size`` best start/end logits, spans inside the context and no
longer than ``options.max_answer_length`` tokens, best start+end score; for v2 the empty
answer wins when ``null score - best span score > options.null_score_diff_threshold``.
Scores: exact match and F1 of the official SQuAD evaluation (percentages).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.config import bounded
from llmtune.errors import LlmtuneError
from llmtune.tasks.base import (
    Default,
    RunContext,
    Task,
    predict_outputs,
    require_content,
    require_fast_tokenizer,
    sequence_limit,
    tokenize_split,
)


@dataclass
class QaOptions:
    # SQuAD v2: some questions have no answer in the context. null = detect from the training data.
    version_2_with_negative: bool | None = None
    # Overlap (in tokens) between consecutive windows of a long context.
    doc_stride: int = bounded(128, ge=1)
    # Longest answer (in tokens) post-processing may return.
    max_answer_length: int = bounded(30, ge=1)
    # Start and end candidates considered per window.
    n_best_size: int = bounded(20, ge=1)
    # v2: predict "no answer" when null score - best span score > this.
    null_score_diff_threshold: float = 0.0
    question_column: str = "question"
    context_column: str = "context"
    answers_column: str = "answers"


# ---------------------------------------------------------------------------------------------
# data


def _answer_lists(value: Any) -> tuple[list[str], list[int]]:
    """Answers as (texts, starts) from ``{"text": [...], "answer_start": [...]}`` or a list of dicts."""
    if value is None:
        return [], []
    if isinstance(value, dict):
        texts, starts = value.get("text") or [], value.get("answer_start") or []
        if isinstance(texts, str):
            texts, starts = [texts], [starts]
        return [str(t) for t in texts], [int(s) for s in starts]
    if isinstance(value, list):
        return [str(a["text"]) for a in value], [int(a["answer_start"]) for a in value]
    raise LlmtuneError(f"answers must be {{text: [...], answer_start: [...]}} or a list of such dicts, got {value!r}")


def flatten_squad(payload: dict, source: str) -> list[dict]:
    """Rows (id, title, context, question, answers) from SQuAD's nested or a flat ``data`` list."""
    rows = []
    for article in payload.get("data") or []:
        if not isinstance(article, dict):
            raise LlmtuneError(f"{source}: 'data' must hold objects (articles or questions)")
        if "paragraphs" not in article:  # already flat: one question per item
            texts, starts = _answer_lists(article.get("answers"))
            rows.append(
                {
                    "id": str(article.get("id", len(rows))),
                    "title": str(article.get("title") or ""),
                    "context": article.get("context"),
                    "question": article.get("question"),
                    "answers": {"text": texts, "answer_start": starts},
                }
            )
            continue
        for paragraph in article["paragraphs"]:
            for qa in paragraph.get("qas", []):
                texts, starts = ([], []) if qa.get("is_impossible") else _answer_lists(qa.get("answers"))
                rows.append(
                    {
                        "id": str(qa.get("id", len(rows))),
                        "title": str(article.get("title") or ""),
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": {"text": texts, "answer_start": starts},
                    }
                )
    return rows


def read_squad_json(path: Path) -> Any:
    """A ``Dataset`` from a SQuAD-style ``.json`` file (a dict with a ``data`` list), else None.

    Hand-written because ``datasets``' json builder reads the nested file as one row.
    """
    from datasets import Dataset, Features, List, Value

    if path.suffix.lower() != ".json":
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # the standard loader reports the exact problem
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        return None
    rows = flatten_squad(payload, str(path))
    if not rows:
        raise LlmtuneError(f"dataset file {path} holds no questions")
    features = Features(
        {
            "id": Value("string"),
            "title": Value("string"),
            "context": Value("string"),
            "question": Value("string"),
            "answers": {"text": List(Value("string")), "answer_start": List(Value("int32"))},
        }
    )
    return Dataset.from_list(rows, features=features)


# ---------------------------------------------------------------------------------------------
# post-processing


def cls_null_positions(ids: Any, cls_id: int | None) -> Any:
    """Each window's null-answer position, as in preprocessing: its first CLS token (else 0)."""
    import torch

    if cls_id is None:
        return torch.zeros_like(ids[:, 0])
    is_cls = ids == cls_id
    return torch.where(is_cls.any(dim=1), is_cls.int().argmax(dim=1), torch.zeros_like(ids[:, 0]))


def window_candidates(start_logits: Any, end_logits: Any, null_positions: Any, n_best_size: int) -> Any:
    """Per window: the ``n_best_size`` best start and end positions with their scores, and the
    null score (start + end logit at the window's CLS position), as one float row
    ``[start_idx x k, start_score x k, end_idx x k, end_score x k, null]`` (numpy or torch).

    This is all answer post-processing reads, so eval keeps these ``4k + 1`` numbers per window
    instead of two logits per token. Positions are exact as floats (< 2**24).
    """
    if hasattr(start_logits, "topk"):  # torch, on the device, batch by batch
        import torch

        k = min(n_best_size, start_logits.shape[-1])
        sv, si = start_logits.float().topk(k, dim=-1)
        ev, ei = end_logits.float().topk(k, dim=-1)
        null_positions = null_positions.long().unsqueeze(-1)
        null = start_logits.float().gather(1, null_positions) + end_logits.float().gather(1, null_positions)
        return torch.cat([si.float(), sv, ei.float(), ev, null], dim=1)
    import numpy as np

    starts, ends = np.asarray(start_logits, dtype=np.float64), np.asarray(end_logits, dtype=np.float64)
    k = min(n_best_size, starts.shape[-1])
    si = np.argsort(-starts, axis=-1, kind="stable")[:, :k]
    ei = np.argsort(-ends, axis=-1, kind="stable")[:, :k]
    rows = np.arange(len(starts))
    nulls = np.asarray(null_positions, dtype=np.int64)
    null = starts[rows, nulls] + ends[rows, nulls]
    sv, ev = np.take_along_axis(starts, si, -1), np.take_along_axis(ends, ei, -1)
    return np.concatenate([si, sv, ei, ev, null[:, None]], axis=1)


def postprocess_predictions(
    contexts: list[str],
    feature_example: list[int],
    offsets: list[list[Any]],
    start_logits: Any = None,
    end_logits: Any = None,
    null_positions: list[int] | None = None,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
    null_score_diff_threshold: float = 0.0,
    candidates: Any = None,
) -> list[dict]:
    """Best answer per example from window-level start/end logits (or their
    :func:`window_candidates`, which is what evaluation keeps).

    ``feature_example[f]`` is the example index of window ``f``; ``offsets[f][t]`` the
    ``(start_char, end_char)`` of token ``t`` in the context, or None outside the context.
    Returns per example ``{"text", "score", "null_score_diff"}`` (the last only for v2), plus the
    answer's character ``start``/``end`` in the context when there is an answer.
    Hand-written (as in transformers' run_qa example): no library provides it.
    """
    import numpy as np

    if candidates is None:
        nulls = null_positions if null_positions is not None else [0] * len(feature_example)
        candidates = window_candidates(np.asarray(start_logits), np.asarray(end_logits), nulls, n_best_size)
    candidates = np.asarray(candidates, dtype=np.float64)
    k = (candidates.shape[1] - 1) // 4 if len(candidates) else 0
    k_used = min(k, n_best_size)
    by_example: dict[int, list[int]] = {}
    for f, ex in enumerate(feature_example):
        by_example.setdefault(ex, []).append(f)
    results = []
    for ex, context in enumerate(contexts):
        best_text, best_score, best_span = "", -np.inf, None
        min_null = None
        for f in by_example.get(ex, []):
            row = candidates[f]
            start_idx, start_val = row[:k_used].astype(int), row[k : k + k_used]
            end_idx, end_val = row[2 * k : 2 * k + k_used].astype(int), row[3 * k : 3 * k + k_used]
            offs = offsets[f]
            null = float(row[4 * k])
            if min_null is None or null < min_null:
                min_null = null
            for s, s_val in zip(start_idx, start_val, strict=True):
                if s >= len(offs) or offs[s] is None:
                    continue
                for e, e_val in zip(end_idx, end_val, strict=True):
                    if e >= len(offs) or offs[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = float(s_val + e_val)
                    if score > best_score:
                        best_score = score
                        best_text = context[offs[s][0] : offs[e][1]]
                        best_span = (int(offs[s][0]), int(offs[e][1]))
        result: dict[str, Any] = {"text": best_text, "score": best_score if best_score > -np.inf else None}
        if version_2:
            diff = (min_null - best_score) if (min_null is not None and best_score > -np.inf) else float("inf")
            result["null_score_diff"] = diff if diff != float("inf") else None
            if diff > null_score_diff_threshold:
                result["text"], best_span = "", None
        if best_span is not None:
            result["start"], result["end"] = best_span
        results.append(result)
    return results


# ---------------------------------------------------------------------------------------------
# the task


def check_answer_offsets(train: Any, o: Any, warn: Any) -> None:
    """Refuse training data with nothing to extract: no answerable question, or no answer found in
    its context at ``answer_start`` (wrong offsets); ``warn`` when only some answers are misplaced."""
    answerable = misplaced = 0
    for context, answers in zip(train[o.context_column], train[o.answers_column], strict=True):
        texts, starts = _answer_lists(answers)
        if not texts:
            continue
        answerable += 1
        start = starts[0] if starts else -1
        if start < 0 or (context or "")[start : start + len(texts[0])] != texts[0]:
            misplaced += 1
    if answerable == 0:
        raise LlmtuneError(
            f"all {len(train)} training questions are unanswerable (empty '{o.answers_column}'): there is no answer "
            f"span to learn; check the data and options.answers_column"
        )
    if misplaced == answerable:
        raise LlmtuneError(
            f"no training answer is found in its context at its answer_start (column '{o.answers_column}'): "
            f"answer_start must count characters of the context from 0"
        )
    if misplaced:
        warn(
            f"{misplaced} of {answerable} training answers are not found in their context at answer_start: "
            f"those questions teach a wrong span"
        )


class QaTask(Task):
    name = "qa"
    aliases = ("question-answering", "extractive-qa")
    family = "qa"
    description = "extractive question answering (SQuAD v1.1/v2.0 json or jsonl)"
    Options = QaOptions
    auto_model = "AutoModelForQuestionAnswering"
    peft_task_type = "QUESTION_ANS"
    head_modules = ("qa_outputs",)
    main_metric = "f1"
    greater_is_better = True
    pipeline_tag = "question-answering"

    defaults = (
        Default("data.max_length", 384, "the usual SQuAD window"),
        Default("train.group_by_length", False, "windows are padded to max_length: grouping by length only reorders"),
    )

    def validate(self, cfg: Any) -> list[str]:
        o = cfg.options
        problems = []
        if o.doc_stride >= cfg.data.max_length:
            problems.append(f"options.doc_stride must be < data.max_length ({cfg.data.max_length}), got {o.doc_stride}")
        return problems

    def load_tokenizer(self, ctx: RunContext, **kwargs: Any) -> Any:
        tokenizer = super().load_tokenizer(ctx, **kwargs)
        require_fast_tokenizer(tokenizer, self.name, "offset mappings")
        return tokenizer

    def load_data(self, ctx: RunContext) -> Any:
        from llmtune.data import load_raw

        return load_raw(ctx.cfg.data, seed=ctx.cfg.train.seed, carve_validation=ctx.training, reader=read_squad_json)

    # ---- preprocessing -------------------------------------------------------------------------
    def prepare(self, ctx: RunContext, raw: Any) -> dict[str, Any]:
        o = ctx.cfg.options
        first = raw["train"] if "train" in raw else raw["validation"]
        cols = {"question": o.question_column, "context": o.context_column, "answers": o.answers_column}
        for key, col in cols.items():
            if col not in first.column_names:
                raise LlmtuneError(
                    f"{key} column '{col}' (options.{key}_column) not found; columns: {', '.join(first.column_names)}"
                )
        ctx.columns = dict(cols)
        for split, ds in raw.items():
            require_content(ds, o.question_column, split, "question", "options.question_column")
            require_content(ds, o.context_column, split, "context", "options.context_column")
        if ctx.training and "train" in raw:
            check_answer_offsets(raw["train"], o, ctx.warnings.append)
            unanswerable = sum(1 for a in raw["train"][o.answers_column] if not _answer_lists(a)[0])
            if o.version_2_with_negative is None:
                # resolved here and saved with the config, so `llmtune eval` scores the same way
                o.version_2_with_negative = unanswerable > 0
            elif unanswerable and not o.version_2_with_negative:
                raise LlmtuneError(
                    f"{unanswerable} training questions have no answer: set options.version_2_with_negative=true "
                    f"(SQuAD v2) or remove them"
                )
        if o.version_2_with_negative is None:  # scoring a model llmtune did not train: look at the data
            o.version_2_with_negative = any(not _answer_lists(a)[0] for a in first[o.answers_column])
        ctx.state["version_2"] = bool(o.version_2_with_negative)
        out = {split: self._features(ctx, ds, split) for split, ds in raw.items()}
        if "validation" in out:
            ctx.state["eval_examples"] = raw["validation"]
            ctx.state["eval_features"] = out["validation"]
        return out

    def _features(self, ctx: RunContext, ds: Any, split: str) -> Any:
        o = ctx.cfg.options
        tokenizer = ctx.tokenizer
        pad_right = tokenizer.padding_side == "right"
        max_length = sequence_limit(ctx, cap=self.sequence_cap)
        stride = min(o.doc_stride, max_length // 2)
        q_col, c_col, a_col = o.question_column, o.context_column, o.answers_column
        context_id = 1 if pad_right else 0

        def encode(batch: dict, indices: list[int]) -> dict:
            questions = [(q or "").lstrip() for q in batch[q_col]]  # leading spaces waste window room
            contexts = [c or "" for c in batch[c_col]]
            try:
                enc = tokenizer(
                    questions if pad_right else contexts,
                    contexts if pad_right else questions,
                    truncation="only_second" if pad_right else "only_first",
                    max_length=max_length,
                    stride=stride,
                    return_overflowing_tokens=True,
                    return_offsets_mapping=True,
                    padding="max_length",
                )
            except Exception as exc:  # tokenizers: question longer than the window
                raise LlmtuneError(
                    f"split '{split}': a question does not leave room for the context in data.max_length="
                    f"{max_length} tokens with options.doc_stride={stride}: raise data.max_length or lower doc_stride"
                ) from exc
            sample_map = enc.pop("overflow_to_sample_mapping")
            starts, ends, example_idx, offsets, null_positions = [], [], [], [], []
            for f, input_ids in enumerate(enc["input_ids"]):
                i = sample_map[f]
                seq_ids = enc.sequence_ids(f)
                null_pos = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
                offs = enc["offset_mapping"][f]
                texts, answer_starts = _answer_lists(batch[a_col][i])
                start_pos = end_pos = null_pos
                if texts:
                    start_char = answer_starts[0]
                    end_char = start_char + len(texts[0])
                    first_tok = seq_ids.index(context_id)
                    last_tok = len(seq_ids) - 1 - seq_ids[::-1].index(context_id)
                    if offs[first_tok][0] <= start_char and offs[last_tok][1] >= end_char:
                        s = first_tok
                        while s <= last_tok and offs[s][0] <= start_char:
                            s += 1
                        e = last_tok
                        while e >= first_tok and offs[e][1] >= end_char:
                            e -= 1
                        start_pos, end_pos = s - 1, e + 1
                starts.append(start_pos)
                ends.append(end_pos)
                null_positions.append(null_pos)
                example_idx.append(indices[i])
                offsets.append([o_ if seq_ids[t] == context_id else None for t, o_ in enumerate(offs)])
            enc["offset_mapping"] = offsets
            enc["start_positions"] = starts
            enc["end_positions"] = ends
            # kept for post-processing; the Trainer drops columns the model does not take
            enc["example_index"] = example_idx
            enc["null_position"] = null_positions
            enc["length"] = [sum(m) for m in enc["attention_mask"]]
            return enc

        features = tokenize_split(ctx, ds, split, encode, required=(q_col, c_col, a_col), with_indices=True)
        if split == "train":
            features = features.remove_columns(["offset_mapping", "example_index", "null_position"])
        return features

    # ---- model, metrics, predictions -----------------------------------------------------------
    def collator(self, ctx: RunContext) -> Any:
        from transformers import DefaultDataCollator

        return DefaultDataCollator()

    def eval_step(self, ctx: RunContext) -> Any:
        n_best, cls_id = ctx.cfg.options.n_best_size, ctx.tokenizer.cls_token_id

        def step(model: Any, inputs: dict) -> tuple[Any, Any, Any]:
            outputs = model(**inputs)
            null = cls_null_positions(inputs["input_ids"], cls_id)
            found = window_candidates(outputs.start_logits, outputs.end_logits, null, n_best)
            return outputs.get("loss"), found, inputs.get("start_positions", null)

        return step

    def _answers(self, ctx: RunContext, examples: Any, features: Any, candidates: Any) -> list:
        o = ctx.cfg.options
        return postprocess_predictions(
            list(examples[o.context_column]),
            list(features["example_index"]),
            list(features["offset_mapping"]),
            candidates=candidates,
            n_best_size=o.n_best_size,
            max_answer_length=o.max_answer_length,
            version_2=ctx.state["version_2"],
            null_score_diff_threshold=o.null_score_diff_threshold,
        )

    def _score(self, ctx: RunContext, examples: Any, answers: list) -> dict:
        from llmtune.metrics.squad import squad_v1, squad_v2

        ids = [str(i) for i in range(len(answers))]  # positions: ids in the data may repeat
        predictions = dict(zip(ids, (a["text"] for a in answers), strict=False))
        references = {
            i: _answer_lists(a)[0] for i, a in zip(ids, examples[ctx.cfg.options.answers_column], strict=False)
        }
        if ctx.state["version_2"]:
            return squad_v2(predictions, references)
        unanswerable = sum(1 for golds in references.values() if not golds)
        if unanswerable:
            raise LlmtuneError(
                f"{unanswerable} evaluation questions have no answer but the model was trained without "
                f"options.version_2_with_negative: score with a SQuAD v2 model or drop them"
            )
        return squad_v1(predictions, references)

    def compute_metrics(self, ctx: RunContext) -> Any:
        def compute(eval_pred: Any) -> dict:
            examples, features = ctx.state["eval_examples"], ctx.state["eval_features"]
            return self._score(ctx, examples, self._answers(ctx, examples, features, eval_pred.predictions))

        return compute

    def predict(self, ctx: RunContext, trainer: Any, raw_split: Any, split: Any) -> tuple[dict, list[dict]]:
        output = predict_outputs(trainer, split)
        answers = self._answers(ctx, raw_split, split, output.predictions)
        metrics = dict(output.metrics)
        metrics.update({f"eval_{k}": v for k, v in self._score(ctx, raw_split, answers).items()})
        o = ctx.cfg.options
        records = []
        for example, answer in zip(raw_split, answers, strict=False):
            row = {"id": example.get("id"), "title": example.get("title"), "question": example[o.question_column]}
            row["context"] = example[o.context_column]
            row["answers"] = _answer_lists(example[o.answers_column])[0]
            row["prediction"] = answer["text"]
            row["score"] = None if answer["score"] is None else round(answer["score"], 4)
            if "null_score_diff" in answer:
                diff = answer["null_score_diff"]
                row["null_score_diff"] = None if diff is None else round(diff, 4)
            records.append({k: v for k, v in row.items() if v is not None or k == "prediction"})
        return metrics, records

    # ---- inference -----------------------------------------------------------------------------
    def prepare_inference(self, ctx: RunContext, columns: list[str]) -> None:
        o = ctx.cfg.options
        for key, col in (("question", o.question_column), ("context", o.context_column)):
            if col not in columns:
                raise LlmtuneError(
                    f"{key} column '{col}' (options.{key}_column) not found in the input; columns: {', '.join(columns)}"
                )
        ctx.columns = {"question": o.question_column, "context": o.context_column}
        ctx.state["version_2"] = bool(o.version_2_with_negative)

    def predict_batch(self, ctx: RunContext, rows: list[dict], settings: Any) -> list[dict]:
        """Answers through the training-time windowing and the eval post-processing."""
        import numpy as np
        import torch
        from datasets import Dataset

        o = ctx.cfg.options
        examples = Dataset.from_list(
            [
                {o.question_column: str(r.get(o.question_column) or ""), o.context_column: str(r.get(o.context_column) or ""),
                 o.answers_column: {"text": [], "answer_start": []}}
                for r in rows
            ]
        )  # fmt: skip
        features = self._features(ctx, examples, "predict")
        inputs = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in features.column_names]
        from transformers import BatchEncoding

        from llmtune.inference.predict import encode_device

        found = []  # per window only its n-best candidates, as in evaluation (never all logits)
        size = max(1, settings.batch_size)
        for at in range(0, len(features), size):
            chunk = features[at : at + size]
            enc = encode_device(ctx, BatchEncoding({c: torch.tensor(chunk[c]) for c in inputs}))
            out = ctx.model(**enc)
            null = torch.tensor(chunk["null_position"], device=out.start_logits.device)
            found.append(window_candidates(out.start_logits, out.end_logits, null, o.n_best_size).cpu().numpy())
        answers = self._answers(ctx, examples, features, np.concatenate(found))
        records = []
        for row, answer in zip(examples, answers, strict=True):
            record = {"question": row[o.question_column], "answer": answer["text"]}
            record["start"], record["end"] = answer.get("start"), answer.get("end")
            record["score"] = None if answer["score"] is None else round(float(answer["score"]), 4)
            records.append(record)
        return records

    def headline(self, metrics: dict) -> dict:
        return {
            k: v for k, v in metrics.items() if not k.endswith(("_total", "_runtime", "per_second", "preparation_time"))
        }


TASKS = [QaTask()]
