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

The run-context parts of the key (which config sections, columns and state, how an encode
closure is described) are the tasks' business: :func:`llmtune.tasks.base.run_parts`. Module
level stays torch-free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any


def stable(value: Any) -> Any:
    """A JSON-able, deterministic stand-in for ``value``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return stable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): stable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [stable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(stable(v) for v in value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if getattr(value, "_fingerprint", None) is not None:  # a datasets.Dataset
        return f"dataset:{value._fingerprint}"
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return stable(to_dict())
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
    h.update(json.dumps(stable(settings), sort_keys=True).encode())
    return h.hexdigest()


def _source_hash(*modules: str) -> str:
    """A hash of llmtune's version and the source of ``modules`` (every file of a package)."""
    import llmtune

    h = hashlib.sha256(llmtune.__version__.encode())
    for name in modules:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if not path or not Path(path).is_file():
            continue
        if getattr(module, "__path__", None) is not None:  # a package: all of its code
            for file in sorted(Path(path).parent.rglob("*.py")):
                h.update(str(file.relative_to(Path(path).parent)).encode())
                h.update(file.read_bytes())
        else:
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
        "code": _source_hash(__name__, *code_modules),
        "parts": stable(parts),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]
