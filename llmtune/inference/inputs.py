"""Rows to predict on: csv / tsv / jsonl / json / parquet / txt files, or ``-`` for stdin.

Read with the standard library (pyarrow for parquet) rather than ``datasets``: rows stream in
input order with their line numbers, so a line that is not UTF-8 or not JSON is reported by
number. Which columns a task reads is decided by the task (``Task.prepare_inference``), the same
way ``finetune`` picks them.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError

FORMATS = ("csv", "tsv", "jsonl", "json", "parquet", "txt")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".txt": "txt"}


def read_rows(spec: str | None, fmt: str | None = None, stdin: Any = None) -> tuple[list[dict], str]:
    """All rows of ``spec`` as dicts, and a name for messages (the path or ``stdin``).

    ``.txt`` and plain stdin give one row per non-empty line, in column ``text``.
    """
    if not spec:
        raise LlmtuneError("no input given: pass --input FILE (csv/tsv/jsonl/parquet/txt) or --input - for stdin")
    if fmt is not None and fmt not in FORMATS:
        raise LlmtuneError(f"--input-format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if spec == "-":
        data = (stdin or sys.stdin.buffer).read()
        name = "stdin"
        if fmt is None:
            first = next((ln for ln in data.splitlines() if ln.strip()), b"")
            fmt = "jsonl" if first.lstrip().startswith(b"{") else "txt"
        rows = _parquet(io.BytesIO(data), name) if fmt == "parquet" else _text_rows(_lines(data, name), fmt, name)
    else:
        path = Path(spec).expanduser()
        name = str(path)
        if not path.is_file():
            raise LlmtuneError(f"input file not found: {path} (--input)")
        fmt = fmt or EXTENSIONS.get(path.suffix.lower())
        if fmt is None:
            raise LlmtuneError(
                f"cannot tell the format of {path} from its extension: use .csv/.tsv/.jsonl/.json/.parquet/.txt "
                f"or pass --input-format"
            )
        rows = _parquet(path, name) if fmt == "parquet" else _text_rows(_lines(path.read_bytes(), name), fmt, name)
    if not rows:
        raise LlmtuneError(f"input {name} has no rows")
    return rows, name


def columns_of(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows[:100]:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _lines(data: bytes, name: str) -> list[str]:
    """Decoded lines; the first one that is not UTF-8 is reported by number."""
    out = []
    for lineno, raw in enumerate(data.splitlines(keepends=True), start=1):
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise LlmtuneError(
                f"{name} line {lineno} is not valid UTF-8 ({exc.reason} at byte {exc.start}): re-encode the input as UTF-8"
            ) from None
    if out and out[0].startswith("\ufeff"):
        out[0] = out[0][1:]  # byte-order mark
    return out


def _text_rows(lines: list[str], fmt: str, name: str) -> list[dict]:
    if fmt == "txt":
        return [{"text": ln.rstrip("\r\n")} for ln in lines if ln.strip()]
    if fmt == "jsonl":
        rows = []
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LlmtuneError(f"{name} line {lineno} is not valid JSON ({exc.msg}, column {exc.colno})") from None
            if not isinstance(row, dict):
                raise LlmtuneError(f'{name} line {lineno} is not a JSON object (one object per line: {{"text": ...}})')
            rows.append(row)
        return rows
    if fmt == "json":
        try:
            payload = json.loads("".join(lines))
        except json.JSONDecodeError as exc:
            raise LlmtuneError(f"{name} is not valid JSON: line {exc.lineno}, column {exc.colno} ({exc.msg})") from None
        if isinstance(payload, dict) and isinstance(payload.get("data"), list):
            payload = payload["data"]
        if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
            raise LlmtuneError(f"{name} must hold a list of objects (or use jsonl: one object per line)")
        return payload
    delimiter = "\t" if fmt == "tsv" else ","
    reader = csv.DictReader(lines, delimiter=delimiter, quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
    rows = []
    try:
        for row in reader:
            if None in row:
                raise LlmtuneError(
                    f"{name} line {reader.line_num} has more fields than the header ({', '.join(reader.fieldnames or [])})"
                )
            rows.append(row)
    except csv.Error as exc:
        raise LlmtuneError(f"{name} line {reader.line_num}: {exc}") from None
    return rows


def _parquet(source: Any, name: str) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(source).to_pylist()
    except Exception as exc:
        raise LlmtuneError(f"could not read {name} as parquet: {str(exc).strip().splitlines()[0]}") from None
