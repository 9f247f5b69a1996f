"""Atomic checkpoint folders and resume selection (no training: folders are built by hand)."""

from __future__ import annotations

import json

import pytest

from llmtune.checkpoint import (
    MARKER,
    STAGING_PREFIX,
    complete_checkpoints,
    finalize,
    incomplete_reason,
    latest_checkpoint,
    remove_checkpoints,
    remove_partial,
    resolve_resume,
)
from llmtune.errors import LlmtuneError


def staged(root, step, files=None):
    folder = root / f"{STAGING_PREFIX}checkpoint-{step}"
    folder.mkdir(parents=True)
    for name, text in (files or {"model.safetensors": "w" * step, "trainer_state.json": "{}"}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_finalize_renames_and_marks(tmp_path):
    staging = staged(tmp_path, 3, {"model.safetensors": "abc", "sub/shard.bin": "xy"})
    final = finalize(staging, tmp_path / "checkpoint-3", step=3, world_size=2)
    assert final.is_dir() and not staging.exists()
    info = json.loads((final / MARKER).read_text())
    assert info["step"] == 3 and info["world_size"] == 2
    assert info["files"] == {"model.safetensors": 3, "sub/shard.bin": 2}
    assert incomplete_reason(final) is None


def test_finalize_replaces_an_existing_step(tmp_path):
    finalize(staged(tmp_path, 2, {"a": "old"}), tmp_path / "checkpoint-2", 2, 1)
    finalize(staged(tmp_path, 2, {"a": "newer"}), tmp_path / "checkpoint-2", 2, 1)
    assert (tmp_path / "checkpoint-2" / "a").read_text() == "newer"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-2"]


def test_incomplete_folders_are_never_picked(tmp_path):
    finalize(staged(tmp_path, 2), tmp_path / "checkpoint-2", 2, 1)
    finalize(staged(tmp_path, 4), tmp_path / "checkpoint-4", 4, 1)
    # a save killed before the rename, and a folder written by plain Trainer (no marker)
    staged(tmp_path, 6)
    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "checkpoint-8" / "model.safetensors").write_text("x")
    # a marker whose file was truncated afterwards
    finalize(staged(tmp_path, 5), tmp_path / "checkpoint-5", 5, 1)
    (tmp_path / "checkpoint-5" / "model.safetensors").write_text("")
    assert "has 0 bytes" in incomplete_reason(tmp_path / "checkpoint-5")
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-4"
    assert resolve_resume("auto", tmp_path).name == "checkpoint-4"


def test_resolve_resume_paths(tmp_path):
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None  # nothing yet: fresh start
    assert resolve_resume("auto", tmp_path / "missing") is None
    finalize(staged(tmp_path, 7), tmp_path / "checkpoint-7", 7, 1)
    assert resolve_resume(str(tmp_path / "checkpoint-7"), tmp_path).name == "checkpoint-7"
    assert resolve_resume(str(tmp_path), tmp_path / "other").name == "checkpoint-7"  # a run folder
    (tmp_path / "checkpoint-9").mkdir()
    with pytest.raises(LlmtuneError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoint-9"), tmp_path)
    with pytest.raises(LlmtuneError, match="no such checkpoint folder"):
        resolve_resume(str(tmp_path / "nope"), tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(LlmtuneError, match="is a file"):
        resolve_resume(str(tmp_path / "file.txt"), tmp_path)
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(LlmtuneError, match="no complete checkpoint"):
        resolve_resume(str(empty), tmp_path)


def test_marker_is_checked_not_trusted(tmp_path):
    final = finalize(staged(tmp_path, 1), tmp_path / "checkpoint-1", 1, 1)
    (final / MARKER).write_text("{not json")
    assert "unreadable" in incomplete_reason(final)
    final2 = finalize(staged(tmp_path, 2), tmp_path / "checkpoint-2", 2, 1)
    (final2 / "trainer_state.json").unlink()
    assert "missing" in incomplete_reason(final2)
    assert complete_checkpoints(tmp_path) == []


def test_cleanup_helpers(tmp_path):
    finalize(staged(tmp_path, 1), tmp_path / "checkpoint-1", 1, 1)
    staged(tmp_path, 2)
    (tmp_path / "model.safetensors").write_text("keep")
    remove_partial(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "model.safetensors"]
    staged(tmp_path, 3)
    finalize(staged(tmp_path, 10), tmp_path / "checkpoint-10", 10, 1)
    removed = remove_checkpoints(tmp_path)
    assert [p.name for p in removed] == [".partial-checkpoint-3", "checkpoint-1", "checkpoint-10"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert remove_checkpoints(tmp_path) == []
