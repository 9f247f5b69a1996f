"""Load raw datasets: Hub names, local files, folders of split files, builtins; carve splits.

Everything goes through ``datasets.load_dataset`` (Arrow cache, memory mapping, streaming);
this module only decides *what* to load and turns the library's errors into one-line messages
that name the file and the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmtune.config import DataArgs
from llmtune.errors import LlmtuneError, one_line
from llmtune.paths import resolve_location

# extension -> (datasets builder, extra builder kwargs)
FORMATS: dict[str, tuple[str, dict]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t", "quoting": 3}),  # 3 = csv.QUOTE_NONE: GLUE-style tsv
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
    ".txt": ("text", {}),
    # WikiText's plain-text files (wiki.valid.tokens, wiki.test.raw)
    ".tokens": ("text", {}),
    ".raw": ("text", {}),
}
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "eval": "validation",
    "test": "test",
    # CoNLL-2003 file names (eng.train / eng.testa / eng.testb)
    "testa": "validation",
    "testb": "test",
}
EVAL_SPLIT_NAMES = ("validation", "valid", "val", "dev", "eval")
# Rows held out from the start of a streamed train split when it has no eval split.
STREAM_VALIDATION_ROWS = 1000


def _ext(path: Path) -> str:
    return path.suffix.lower()


def is_text_data(spec: str | None) -> bool:
    """Whether ``spec`` is a local plain-text file, or a folder of them (read by the text loader)."""
    if not spec:
        return False
    path = Path(resolve_location(spec)).expanduser()
    texts = {ext for ext, (builder, _) in FORMATS.items() if builder == "text"}
    if path.is_file():
        return _ext(path) in texts
    if path.is_dir():
        return any(_ext(p) in texts for paths in split_files(path).values() for p in paths)
    return False


def is_local_spec(spec: str) -> bool:
    """Whether ``spec`` names (or clearly means to name) a local file or folder."""
    if spec.startswith(("builtin:", "package:")):
        return True
    path = Path(spec).expanduser()
    if path.exists():
        return True
    return spec.startswith((".", "/", "~")) or _ext(path) in FORMATS or _ext(path) in (".yaml", ".yml")


def split_files(folder: Path, any_extension: bool = False) -> dict[str, list[Path]]:
    """Map split names to files in a folder: ``train.csv``, ``dev.jsonl``, ``test.en-de.jsonl``...

    With ``any_extension`` (a task parses its own formats) files with other extensions count too,
    and the split may also be the extension (CoNLL's ``eng.train``, ``eng.testa``).
    """
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or (_ext(path) not in FORMATS and not any_extension):
            continue
        stem = path.name.split(".")[0].lower()
        split = SPLIT_ALIASES.get(stem)
        if split is None and any_extension and _ext(path) not in FORMATS:
            split = SPLIT_ALIASES.get(_ext(path).lstrip("."))
        if split:
            found.setdefault(split, []).append(path)
    return found


def check_local_file(path: Path, any_extension: bool = False) -> None:
    if not path.exists():
        raise LlmtuneError(f"dataset file not found: {path}")
    if path.stat().st_size == 0:
        raise LlmtuneError(f"dataset file {path} is empty: add rows (with a header line for csv/tsv)")
    if _ext(path) not in FORMATS and not any_extension:
        raise LlmtuneError(f"unsupported dataset file type '{path.suffix}' for {path}; use one of {', '.join(FORMATS)}")


def _strict_json(text: str) -> Any:
    """``json.loads`` that, like the Arrow reader, refuses NaN and Infinity."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON (use null or a number)")

    return json.loads(text, parse_constant=refuse)


def _json_line_problem(lineno: int, text: str) -> str | None:
    try:
        value = _strict_json(text)
    except json.JSONDecodeError as exc:
        # exc.colno counts characters from 1 on this line, as editors do
        return f"line {lineno}, column {exc.colno} is not valid JSON ({exc.msg}): fix or remove the line"
    except ValueError as exc:
        return f"line {lineno}: {exc}"
    if not isinstance(value, dict):
        return f"line {lineno} is not a JSON object ({{...}}) but {type(value).__name__}: one object per line"
    return None


def _is_json_lines(path: Path) -> bool:
    """Whether a .json file holds one object per line (JSON Lines) rather than one document."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = next((line for line in fh if line.strip()), "")
    try:
        return isinstance(_strict_json(first), dict)
    except ValueError:
        return False


def diagnose_file(path: Path) -> str | None:
    """Find why a local file failed to load: the first bad line (with its column), bad encoding,
    no rows."""
    ext = _ext(path)
    if ext == ".parquet":
        return None
    try:
        json_lines = ext == ".jsonl" or (ext == ".json" and _is_json_lines(path))
        with open(path, "rb") as fh:
            for lineno, line in enumerate(fh, start=1):
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return f"line {lineno} is not valid UTF-8 ({exc.reason}): re-encode the file as UTF-8"
                if lineno == 1:
                    text = text.removeprefix("\ufeff")
                if json_lines and text.strip():
                    problem = _json_line_problem(lineno, text)
                    if problem:
                        return problem
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    if ext == ".json" and not json_lines:
        try:
            _strict_json(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            return f"invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})"
        except ValueError as exc:
            return str(exc)
        except OSError:
            pass
    return None


def load_files(files: dict[str, list[Path]], streaming: bool, text_sample_by: str | None, reader: Any = None) -> Any:
    """Load local files, by split, as a ``DatasetDict`` (an ``IterableDatasetDict`` when ``streaming``).

    ``files`` maps a split name to its files, all of one format (csv, tsv, json, jsonl, parquet,
    txt; see ``FORMATS``), concatenated in order. ``text_sample_by`` is passed to the ``text``
    builder as ``sample_by`` (``"stream"``: one row per line, line breaks kept). ``reader(path) ->
    Dataset | None`` parses files in a task's own format (None: the standard loaders read it).
    Unreadable or malformed files raise :class:`LlmtuneError` naming the file. No splits are
    carved or renamed here (see :func:`arrange_splits`).
    """
    from datasets import DatasetDict, IterableDatasetDict, concatenate_datasets, load_dataset

    splits = {}
    for split, paths in files.items():
        if reader is not None:
            for p in paths:
                check_local_file(p, any_extension=True)
            parsed = [reader(p) for p in paths]
            if all(ds is not None for ds in parsed):
                ds = concatenate_datasets(parsed) if len(parsed) > 1 else parsed[0]
                splits[split] = ds.to_iterable_dataset() if streaming else ds
                continue
            if any(ds is not None for ds in parsed):
                raise LlmtuneError(
                    f"split '{split}' mixes file formats ({', '.join(p.name for p in paths)}): "
                    f"point --dataset at one file or at a folder holding one format"
                )
        for p in paths:
            check_local_file(p)
            if _ext(p) == ".json":
                # datasets reads an invalid .json document leniently (a prefix of it, or none of
                # its rows): check it parses before loading, so a broken file is never half-read.
                reason = diagnose_file(p)
                if reason:
                    raise LlmtuneError(f"dataset file {p}: {reason}")
        builder, kwargs = FORMATS[_ext(paths[0])]
        kwargs = dict(kwargs)
        if builder == "text" and text_sample_by == "stream":
            # One row per line with its line break kept: joined back, the rows are the file as is.
            kwargs.update(sample_by="line", keep_linebreaks=True)
        elif builder == "text" and text_sample_by:
            kwargs["sample_by"] = text_sample_by
        try:
            ds = load_dataset(
                builder, data_files={split: [str(p) for p in paths]}, split=split, streaming=streaming, **kwargs
            )
        except Exception as exc:  # datasets wraps parse errors in DatasetGenerationError
            for p in paths:
                reason = diagnose_file(p)
                if reason:
                    raise LlmtuneError(f"dataset file {p}: {reason}") from exc
            if "corresponds to no data" in str(exc):
                raise LlmtuneError(f"dataset file {paths[0]} has a header but no rows: add examples") from exc
            cause = exc.__cause__ or exc
            raise LlmtuneError(f"could not read dataset file {paths[0]}: {one_line(cause)}") from exc
        splits[split] = ds
    return IterableDatasetDict(splits) if streaming else DatasetDict(splits)


def load_raw(
    data: DataArgs,
    seed: int = 42,
    carve_validation: bool = True,
    text_sample_by: str | None = None,
    reader: Any = None,
) -> Any:
    """Load ``data.dataset`` as a ``DatasetDict`` with ``train``/``validation`` (and ``test``).

    The eval split is ``data.eval_split`` or a split named like validation; without one, a
    seeded ``data.validation_split`` fraction of train is carved off (when ``carve_validation``).
    ``reader(path) -> Dataset | None`` lets a task parse local files in its own formats (CoNLL
    columns, nested SQuAD json); it returns None for files the standard loaders should read.
    """
    spec = data.dataset
    if not spec:
        raise LlmtuneError("no dataset given: pass --dataset (a Hub name, a csv/tsv/jsonl/parquet file or a folder)")
    location = resolve_location(spec)
    path = Path(location).expanduser()
    if path.is_dir():
        files = split_files(path, any_extension=reader is not None)
        if not files:
            raise LlmtuneError(
                f"dataset folder {path} has no train/validation/test files "
                f"(expected names like train.csv, validation.jsonl, test.tsv)"
            )
        raw = load_files(files, data.streaming, text_sample_by, reader)
    elif path.is_file() or is_local_spec(spec):
        check_local_file(path, any_extension=reader is not None)
        raw = load_files({"train": [path]}, data.streaming, text_sample_by, reader)
    else:
        raw = _load_hub(spec, data)
    return arrange_splits(raw, data, seed, carve_validation, source=spec)


def _load_hub(name: str, data: DataArgs) -> Any:
    from datasets import load_dataset

    hub_name, _, config = name.partition(":")  # "glue:sst2" shorthand for name + config
    config = data.config_name or config or None
    try:
        return load_dataset(hub_name, config, streaming=data.streaming)
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        msg = one_line(exc) if str(exc).strip() else type(exc).__name__
        if offline or "Couldn't reach" in msg or "offline" in msg.lower() or isinstance(exc, ConnectionError):
            raise LlmtuneError(
                f"dataset '{name}' is not a local file or folder and the Hugging Face Hub is unreachable: "
                f"pass a local csv/tsv/jsonl/parquet file or folder with --dataset"
            ) from exc
        raise LlmtuneError(f"could not load dataset '{name}' from the Hub: {msg}") from exc


def arrange_splits(raw: Any, data: DataArgs, seed: int, carve_validation: bool, source: str) -> Any:
    from datasets import DatasetDict, IterableDatasetDict

    available = list(raw.keys())
    if carve_validation and data.train_split not in raw:  # training: the train split must exist
        raise LlmtuneError(
            f"dataset '{source}' has no split '{data.train_split}' (data.train_split); splits: {', '.join(available)}"
        )
    out: dict[str, Any] = {}
    if data.train_split in raw:
        out["train"] = raw[data.train_split]
    eval_name = data.eval_split
    if eval_name is not None and eval_name not in raw:
        raise LlmtuneError(
            f"dataset '{source}' has no split '{eval_name}' (data.eval_split); splits: {', '.join(available)}"
        )
    if eval_name is None:
        eval_name = next((s for s in EVAL_SPLIT_NAMES if s in raw), None)
    if eval_name is not None:
        out["validation"] = raw[eval_name]
    if data.test_split is not None:
        if data.test_split not in raw:
            raise LlmtuneError(
                f"dataset '{source}' has no split '{data.test_split}' (data.test_split); splits: {', '.join(available)}"
            )
        out["test"] = raw[data.test_split]
    elif "test" in raw:
        out["test"] = raw["test"]
    streaming = isinstance(raw, IterableDatasetDict)
    if "validation" not in out and carve_validation and data.validation_split > 0 and "train" in out and not streaming:
        train = out["train"]
        if len(train) < 2:
            raise LlmtuneError(
                f"dataset '{source}' has {len(train)} training row(s): too few to carve a validation split"
            )
        parts = train.train_test_split(test_size=data.validation_split, seed=seed, shuffle=True)
        out["train"], out["validation"] = parts["train"], parts["test"]
    elif "validation" not in out and carve_validation and "train" in out and streaming:
        # A stream has no length, so no fraction: the first rows are held out (take) and the
        # training stream starts after them (skip). Size: data.max_eval_samples.
        n_eval = data.max_eval_samples or STREAM_VALIDATION_ROWS
        out["validation"], out["train"] = out["train"].take(n_eval), out["train"].skip(n_eval)
    for name, ds in out.items():
        if not streaming and len(ds) == 0:
            raise LlmtuneError(f"dataset '{source}' split '{name}' is empty: it needs at least one row")
    if not streaming:
        if data.max_train_samples and "train" in out:
            out["train"] = out["train"].select(range(min(data.max_train_samples, len(out["train"]))))
        if data.max_eval_samples and "validation" in out:
            out["validation"] = out["validation"].select(range(min(data.max_eval_samples, len(out["validation"]))))
    else:
        if data.max_train_samples and "train" in out:
            out["train"] = out["train"].take(data.max_train_samples)
        if data.max_eval_samples and "validation" in out:
            out["validation"] = out["validation"].take(data.max_eval_samples)
    return IterableDatasetDict(out) if streaming else DatasetDict(out)


def column_names(ds: Any) -> list[str]:
    names = getattr(ds, "column_names", None)
    if names is None and getattr(ds, "features", None) is not None:
        names = list(ds.features)
    if names is None and hasattr(ds, "take"):  # a stream that declares no features (e.g. jsonl)
        first = next(iter(ds.take(1)), None)
        names = list(first) if first else None
    return list(names or [])


def pick_column(ds: Any, explicit: str | None, candidates: tuple[str, ...], what: str, key: str) -> str:
    """The column to use: the explicit one (must exist) or the first candidate present.

    ``ds`` is a dataset or a plain list of column names (rows read by ``llmtune predict``)."""
    cols = list(ds) if isinstance(ds, (list, tuple)) else column_names(ds)
    if explicit:
        if explicit not in cols:
            raise LlmtuneError(f"{what} column '{explicit}' ({key}) not found; columns: {', '.join(cols)}")
        return explicit
    for cand in candidates:
        if cand in cols:
            return cand
    raise LlmtuneError(
        f"no {what} column found (looked for {', '.join(candidates)}); columns: {', '.join(cols)}; "
        + (f"name it with {key} COLUMN" if key.startswith("--") else f"name it with --set {key}=COLUMN")
    )
