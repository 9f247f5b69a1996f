"""Explicit fingerprints for tokenized ``datasets`` caches.

``Dataset.map`` names its Arrow cache after a fingerprint of the input dataset and a dill hash of
the function, closure included. The tasks' encode closures capture the whole run context (the
config with its output folder and learning rate, and at eval time the loaded model), so every
new run (a new ``--output-dir``) re-tokenized the data, and at eval time the model's weights were
pickled just to hash them. Here the fingerprint is built from what the tokenized rows actually
depend on: the raw data's fingerprint, the tokenizer (vocabulary, normalisation, special tokens,
chat template, max length), the data/task options, and the source code of the encoding module,
so the same data and config reuse the cache across runs, and a changed tokenizer, ``max_length``
or option invalidates it.

Module level stays torch-free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

# Fields of the model section that cannot change tokenized rows.
_MODEL_FIELDS_IGNORED = ("attn_implementation",)


def _stable(value: Any) -> Any:
    """A JSON-able, deterministic stand-in for ``value``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _stable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_stable(v) for v in value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if getattr(value, "_fingerprint", None) is not None:  # a datasets.Dataset
        return f"dataset:{value._fingerprint}"
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return _stable(to_dict())
    from datasets.fingerprint import Hasher

    return Hasher.hash(value)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What tokenization depends on: the backend (vocabulary, merges, normaliser, pre-tokenizer,
    post-processor, added tokens) and the wrapper's settings."""
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # Truncation/padding are per-call settings the last encode call left behind, not the tokenizer.
        state.pop("truncation", None)
        state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:  # a slow (Python) tokenizer: its vocabulary
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    settings = {
        "special": getattr(tokenizer, "special_tokens_map", {}),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "model_max_length": getattr(tokenizer, "model_max_length", None),
        "padding_side": getattr(tokenizer, "padding_side", None),
        "truncation_side": getattr(tokenizer, "truncation_side", None),
        "add_prefix_space": getattr(tokenizer, "add_prefix_space", None),
        "len": len(tokenizer),
    }
    h.update(json.dumps(_stable(settings), sort_keys=True).encode())
    return h.hexdigest()


def _source_hash(*modules: str) -> str:
    import llmtune

    h = hashlib.sha256(llmtune.__version__.encode())
    for name in modules:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path and Path(path).is_file():
            h.update(Path(path).read_bytes())
    return h.hexdigest()


def map_fingerprint(ds: Any, tokenizer: Any, code_modules: tuple[str, ...], **parts: Any) -> str | None:
    """The ``new_fingerprint`` for a tokenizing ``ds.map``; None for a streamed dataset (no cache)."""
    fingerprint = getattr(ds, "_fingerprint", None)
    if fingerprint is None:
        return None
    payload = {
        "data": fingerprint,
        "tokenizer": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
        "code": _source_hash(__name__, "llmtune.tasks.base", *code_modules),
        "parts": _stable(parts),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def run_parts(ctx: Any) -> dict:
    """The parts of a run context that may shape tokenized rows: task, data and task options,
    the model section (minus runtime-only fields), picked columns and task state."""
    cfg = ctx.cfg
    model = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in _MODEL_FIELDS_IGNORED}
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
    from llmtune.tasks.base import RunContext, Task

    def part(value: Any) -> Any:
        if isinstance(value, RunContext):
            return "<run context>"
        if isinstance(value, Task):
            return f"<task {type(value).__name__}>"
        if hasattr(value, "backend_tokenizer") or hasattr(value, "convert_tokens_to_ids"):
            return f"<tokenizer {tokenizer_fingerprint(value)}>"
        if callable(value) and hasattr(value, "__code__") and depth < 4:
            return function_parts(value, depth + 1)
        return _stable(value)

    code = getattr(fn, "__code__", None)
    if code is None:
        return _stable(fn)
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
