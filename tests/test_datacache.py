"""Tokenized-cache reuse: the same data and config reuse the cache across runs; a changed
tokenizer, max_length or option invalidates it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_sft_rows


def _prepare(task_name: str, sets: list[str]) -> dict:
    from llmtune.resolve import load_config
    from llmtune.tasks import get_task
    from llmtune.tasks.base import RunContext

    cfg = load_config(task=task_name, sets=sets)
    task = get_task(cfg.task)
    ctx = RunContext(cfg=cfg, training=True, model_path=cfg.model.name_or_path)
    ctx.tokenizer = task.load_tokenizer(ctx)
    out = task.prepare(ctx, task.load_data(ctx))
    return {split: (ds._fingerprint, [f["filename"] for f in ds.cache_files]) for split, ds in out.items()}


@pytest.fixture()
def sft_jsonl(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in make_sft_rows(40, seed=4)) + "\n", encoding="utf-8")
    return path


def test_sft_cache_is_reused_by_a_new_run_and_invalidated_by_tokenizer_or_max_length(
    tiny_llama_dir, sft_jsonl, tmp_path
):
    base = [f"model.name_or_path={tiny_llama_dir}", f"data.dataset={sft_jsonl}", "data.validation_split=0.2"]
    first = _prepare("sft", [*base, f"train.output_dir={tmp_path / 'a'}"])
    # another run: other output folder, learning rate and attention kernel: same tokenized rows
    again = _prepare(
        "sft",
        [*base, f"train.output_dir={tmp_path / 'b'}", "train.learning_rate=0.1", "model.attn_implementation=eager"],
    )
    assert again == first
    assert all(files for _, files in first.values())  # backed by Arrow cache files
    shorter = _prepare("sft", [*base, "data.max_length=40"])
    other_template = _prepare("sft", [*base, "options.chat_template=plain"])  # another tokenizer template
    for changed in (shorter, other_template):
        assert {s: fp for s, (fp, _) in changed.items()}.keys() == first.keys()
        assert all(changed[s][0] != first[s][0] for s in first)
        assert all(set(changed[s][1]).isdisjoint(first[s][1]) for s in first)


def test_clm_cache_is_reused_and_invalidated_by_tokenizer_or_block_size(tiny_bpe_dir, lm_corpus_txt, tmp_path):
    base = [f"data.dataset={lm_corpus_txt}", "model.config=gpt2-tiny", "options.block_size=32"]
    first = _prepare("clm", [*base, f"model.tokenizer={tiny_bpe_dir}", f"train.output_dir={tmp_path / 'a'}"])
    again = _prepare(
        "clm", [*base, f"model.tokenizer={tiny_bpe_dir}", f"train.output_dir={tmp_path / 'b'}", "train.epochs=1"]
    )
    assert again == first
    bigger = _prepare("clm", [*base, f"model.tokenizer={tiny_bpe_dir}", "options.block_size=64"])
    other_tok = _prepare("clm", [*base, "model.tokenizer=builtin:tiny_corpus_bpe"])
    for changed in (bigger, other_tok):
        assert all(changed[s][0] != first[s][0] for s in first)


def test_tokenizer_fingerprint_sees_vocabulary_and_template(tiny_chat_tokenizer_dir):
    from transformers import AutoTokenizer

    from llmtune.datacache import tokenizer_fingerprint

    tok = AutoTokenizer.from_pretrained(tiny_chat_tokenizer_dir)
    same = AutoTokenizer.from_pretrained(tiny_chat_tokenizer_dir)
    tok("some text to encode", truncation=True, max_length=4)  # using it changes nothing
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(same)
    same.chat_template = "{{ messages }}"
    assert tokenizer_fingerprint(tok) != tokenizer_fingerprint(same)
    same = AutoTokenizer.from_pretrained(tiny_chat_tokenizer_dir)
    same.add_tokens(["<new>"])
    assert tokenizer_fingerprint(tok) != tokenizer_fingerprint(same)
