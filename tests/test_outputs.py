"""Output folders: checked without being created, and removed again only when a failed run made them."""

from __future__ import annotations

import pytest

from llmtune.errors import LlmtuneError
from llmtune.outputs import check_output_dir, removed_on_failure


def test_check_output_dir_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b"
    check_output_dir(target, overwrite=False)
    assert not (tmp_path / "a").exists()
    assert list(tmp_path.iterdir()) == []  # the write probe is gone too


def test_check_output_dir_refuses_a_file_on_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LlmtuneError, match="not writable"):
        check_output_dir(tmp_path / "f" / "out", overwrite=False)


def test_a_folder_the_failed_block_created_is_removed(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(RuntimeError), removed_on_failure(out):
        (out / "checkpoint-tmp").mkdir(parents=True)
        raise RuntimeError("boom")
    assert not out.exists()


def test_a_folder_that_existed_before_is_never_removed(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "earlier.txt").write_text("keep me")
    with pytest.raises(RuntimeError), removed_on_failure(out):
        (out / "new.txt").write_text("x")
        raise RuntimeError("boom")
    assert (out / "earlier.txt").read_text() == "keep me"


def test_keep_predicate_and_success_keep_the_folder(tmp_path):
    kept = tmp_path / "kept"
    with pytest.raises(KeyboardInterrupt), removed_on_failure(kept, keep=lambda p: (p / "checkpoint-4").is_dir()):
        (kept / "checkpoint-4").mkdir(parents=True)
        raise KeyboardInterrupt
    assert (kept / "checkpoint-4").is_dir()
    done = tmp_path / "done"
    with removed_on_failure(done):
        done.mkdir()
    assert done.is_dir()
