"""LM data: texts tokenized and packed into blocks, and strided eval windows over them.

Module functions so tests and benchmarks can call them directly. Module level stays torch-free.
"""

from __future__ import annotations

from typing import Any

from llmtune.errors import LlmtuneError


def is_streaming(ds: Any) -> bool:
    from datasets import IterableDataset

    return isinstance(ds, IterableDataset)


def dataset_map(ds: Any, fn: Any, **kwargs: Any) -> Any:
    """``ds.map`` for both kinds: only in-memory datasets take ``desc``/``num_proc``."""
    desc = kwargs.pop("desc", None)
    num_proc = kwargs.pop("num_proc", None)
    if is_streaming(ds):
        return ds.map(fn, **kwargs)
    return ds.map(fn, desc=desc, num_proc=num_proc, **kwargs)


def special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sequence (``[CLS]``, ``[SEP]``)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    framed = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(framed) - len(plain) + 1):
        if framed[start : start + len(plain)] == plain:
            return framed[:start], framed[start + len(plain) :]
    return [], []


def pack_dataset(
    ds: Any,
    tokenizer: Any,
    objective: str,
    block_size: int,
    text_column: str,
    batch_size: int = 1000,
    whole_words: bool = False,
    num_proc: int | None = None,
    desc: str | None = None,
    layout: str = "blocks",
    stream: bool = False,
) -> Any:
    """Tokenize ``text_column`` and pack it into blocks (columns: input_ids, special_tokens_mask
    [, word_starts]). Works on ``Dataset`` (cached) and ``IterableDataset`` (lazy) alike.

    ``layout`` (clm only): ``blocks`` concatenates documents into full blocks; ``documents`` and
    ``padded`` keep one document per row, split into pieces of at most ``block_size`` tokens
    (the collator then packs or pads them).

    ``stream`` (clm): rows are pieces of one text (lines with their line breaks); each map batch
    is joined and tokenized as one string, without EOS, the tokenizer's leading special tokens
    (e.g. BOS) only at the start of the first batch."""
    from llmtune.data import column_names

    if layout != "blocks" and objective != "clm":
        raise ValueError("per-document layouts are for clm")

    eos = tokenizer.eos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else eos
    prefix, suffix = special_frame(tokenizer) if objective == "mlm" else ([], [])
    content = block_size - len(prefix) - len(suffix)
    if content < 2:
        raise LlmtuneError(f"options.block_size {block_size} leaves no room for text after the special tokens")
    special_ids = set(tokenizer.all_special_ids)

    lead = special_frame(tokenizer)[0] if stream else []

    def pack(batch: dict, indices: list[int]) -> dict:
        if stream:
            joined = "".join(t for t in batch[text_column] if isinstance(t, str))
            texts = [joined] if joined else []
        else:
            texts = [t for t in batch[text_column] if isinstance(t, str) and t.strip()]
        if not texts:
            return {"input_ids": [], "special_tokens_mask": [], **({"word_starts": []} if whole_words else {})}
        # clm: the tokenizer's own template (e.g. Llama's BOS) + EOS; mlm: framing is per block.
        enc = tokenizer(texts, add_special_tokens=objective == "clm" and not stream)
        if stream:
            head = lead if indices and indices[0] == 0 else []
            ids = head + enc["input_ids"][0]
            blocks = [ids[b : b + content] for b in range(0, len(ids), content)]
            blocks = [b for b in blocks if len(b) >= 2]
            return {
                "input_ids": blocks,
                "special_tokens_mask": [[1 if t in special_ids else 0 for t in b] for b in blocks],
            }
        stream_ids: list[int] = []
        starts: list[int] = []
        for i, ids in enumerate(enc["input_ids"]):
            closer = eos if objective == "clm" else sep
            tail = [] if ids and ids[-1] == closer else [closer]
            stream_ids.extend(ids)
            stream_ids.extend(tail)
            if whole_words:
                words = enc.word_ids(i)
                prev = None
                for w in words:
                    starts.append(1 if w is None or w != prev else 0)
                    prev = w
                starts.extend([1] * len(tail))
        if layout != "blocks":
            docs = []
            for ids in enc["input_ids"]:
                ids = ids if ids and ids[-1] == eos else [*ids, eos]
                docs.extend(p for p in (ids[b : b + content] for b in range(0, len(ids), content)) if len(p) >= 2)
            return {"input_ids": docs, "special_tokens_mask": [[int(t in special_ids) for t in d] for d in docs]}
        blocks, block_starts = [], []
        for begin in range(0, len(stream_ids), content):
            chunk = stream_ids[begin : begin + content]
            if objective == "clm" and len(chunk) < 2:
                continue  # a lone trailing token has nothing to predict (a block's first token is context)
            if objective == "mlm" and all(t in special_ids for t in chunk):
                continue
            blocks.append(prefix + chunk + suffix)
            if whole_words:
                block_starts.append([1] * len(prefix) + starts[begin : begin + content] + [1] * len(suffix))
        out = {
            "input_ids": blocks,
            "special_tokens_mask": [[1 if t in special_ids else 0 for t in b] for b in blocks],
        }
        if whole_words:
            out["word_starts"] = block_starts
        return out

    from llmtune.datacache import map_fingerprint
    from llmtune.tasks.base import task_code

    extra = {}
    fingerprint = map_fingerprint(
        ds, tokenizer, task_code(__name__), objective=objective, block_size=block_size, text_column=text_column,
        batch_size=batch_size, whole_words=whole_words, layout=layout, stream=stream,
    )  # fmt: skip
    if fingerprint is not None:  # a Dataset: cached by what the blocks depend on (llmtune.datacache)
        extra["new_fingerprint"] = fingerprint
    return dataset_map(
        ds,
        pack,
        batched=True,
        with_indices=True,
        batch_size=batch_size,
        remove_columns=column_names(ds),
        num_proc=num_proc,
        desc=desc,
        **extra,
    )


def sliding_windows(packed: Any, block_size: int, stride: int) -> Any:
    """Eval windows over the split's whole token stream (the usual strided perplexity: each token
    is a target once, with up to ``block_size - stride`` tokens of context; ``stride ==
    block_size``: consecutive blocks). Built as Arrow arrays from numpy: memory is a few bytes
    per token of the split, never Python lists of it."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset

    if getattr(packed, "_indices", None) is not None:
        packed = packed.flatten_indices()
    column = packed.data.column("input_ids")
    stream = pc.list_flatten(column).to_numpy() if len(column) else np.zeros(0, dtype=np.int64)
    stream = np.asarray(stream, dtype=np.int64)
    n = len(stream)
    begins, ends = [], []
    for begin in range(0, n, stride):
        end = min(begin + block_size, n)
        begins.append(begin)
        ends.append(end)
        if end == n:
            break
    begins_a, ends_a = np.asarray(begins, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    previous = np.concatenate([[0], ends_a[:-1]]) if len(ends_a) else ends_a
    lengths = ends_a - begins_a
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate([stream[b:e] for b, e in zip(begins, ends, strict=True)]) if begins else stream
    labels = ids.copy()
    # Within each window, only the tokens past the previous window's end are targets.
    context = lengths - (ends_a - previous)
    position = np.arange(len(ids), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    labels[position < np.repeat(context, lengths)] = -100
    table = pa.table(
        {
            "input_ids": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(ids)),
            "labels": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(labels)),
        }
    )
    return Dataset(table)
