"""Audio datasets: audiofolder layouts (``metadata.csv``/``metadata.jsonl``, per-split subfolders),
the audio and transcription columns, audio paths made absolute, and dataset helpers that work on
streamed and in-memory splits alike. Module level stays torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError

AUDIO_COLUMNS = ("audio", "file_name", "file", "path", "audio_path", "audio_file", "filename", "wav")

TEXT_COLUMNS = ("transcription", "text", "sentence", "transcript", "normalized_text", "raw_transcription")

METADATA_FILES = ("metadata.csv", "metadata.jsonl")


def audiofolder_splits(folder: Path) -> dict[str, Path] | None:
    """Metadata files of an audiofolder layout, by split, or None when ``folder`` is not one."""
    from llmtune.data import SPLIT_ALIASES

    for name in METADATA_FILES:
        if (folder / name).is_file():
            return {"train": folder / name}
    found: dict[str, Path] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        split = SPLIT_ALIASES.get(sub.name.lower())
        meta = next((sub / n for n in METADATA_FILES if (sub / n).is_file()), None)
        if split and meta is not None:
            found.setdefault(split, meta)
    return found or None


def load_metadata(files: dict[str, Path], streaming: bool) -> Any:
    from llmtune.data import load_files

    return load_files({split: [path] for split, path in files.items()}, streaming, None)


def source_split(split: str, data: Any, folders: dict[str, Path]) -> str:
    """Which metadata file a split came from (a carved validation split comes from train)."""
    if split in folders:
        return split
    return "train"


def absolute_audio(ds: Any, audio_col: str, base: Path | None) -> Any:
    """Audio values as sources :func:`llmtune.audio.load_audio` reads: paths made absolute
    (relative to the metadata/data file), Hub ``Audio`` columns kept undecoded (bytes + path)."""
    feature = (ds.features or {}).get(audio_col) if ds.features is not None else None
    if feature is not None and type(feature).__name__ == "Audio":
        from datasets import Audio

        return ds.cast_column(audio_col, Audio(decode=False))
    if base is None:
        return ds

    def resolve(batch: dict) -> dict:
        values = []
        for value in batch[audio_col]:
            if isinstance(value, str) and value and not Path(value).is_absolute():
                value = str(base / value)
            values.append(value)
        return {audio_col: values}

    return map_dataset(ds, resolve, batched=True, desc="resolving audio paths")


def first_rate(ds: Any, audio_col: str) -> int:
    from llmtune.audio import audio_rate

    row = next(iter(ds.select_columns([audio_col]).take(1) if is_streaming(ds) else [ds[0]]))
    source = row[audio_col]
    try:
        return audio_rate(source)
    except LlmtuneError as exc:
        raise LlmtuneError(f"column '{audio_col}': {exc}") from exc


def all_texts(raw: Any, text_col: str) -> list[str]:
    from llmtune.data import column_names

    texts: list[str] = []
    for ds in raw.values():
        if text_col not in column_names(ds):
            continue
        if is_streaming(ds):
            texts.extend(r[text_col] or "" for r in ds.select_columns([text_col]))
        else:
            texts.extend(t or "" for t in ds[text_col])
    return texts


def is_streaming(ds: Any) -> bool:
    from datasets import IterableDataset

    return isinstance(ds, IterableDataset)


def map_dataset(ds: Any, fn: Any, **kwargs: Any) -> Any:
    desc = kwargs.pop("desc", None)
    num_proc = kwargs.pop("num_proc", None)
    if is_streaming(ds):
        kwargs.pop("writer_batch_size", None)
        return ds.map(fn, **kwargs)
    return ds.map(fn, desc=desc, num_proc=num_proc, **kwargs)
