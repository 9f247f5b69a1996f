"""`llmtune tokenizer train`: fast tokenizers that AutoTokenizer loads, with the right specials."""

from __future__ import annotations

import json

import pytest

from tests.conftest import MULTILINGUAL, lm_corpus_lines


def _train(tmp_path, **kw):
    from transformers import AutoTokenizer

    from llmtune.tokenizer_train import TokenizerSpec, train_tokenizer

    spec = TokenizerSpec(**kw)
    out = tmp_path / f"tok-{spec.type}-{spec.objective}"
    train_tokenizer(iter(lm_corpus_lines()), spec).save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


@pytest.mark.parametrize("text", [*MULTILINGUAL, "  leading and trailing spaces  ", "tabs\tand\nnewlines"])
def test_byte_level_bpe_round_trips_any_script(tmp_path, text):
    tok = _train(tmp_path, type="bpe", vocab_size=400, objective="clm")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids  # byte-level: nothing is unknown
    assert tok.decode(ids) == text


def test_clm_specials_and_no_template(tmp_path):
    tok = _train(tmp_path, type="bpe", vocab_size=400, objective="clm")
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert tok.pad_token_id != tok.eos_token_id  # padding must not hide real ends of documents
    assert tok.mask_token is None
    assert tok("the movie")["input_ids"] == tok("the movie", add_special_tokens=False)["input_ids"]
    assert len(tok) <= 400


def test_wordpiece_mlm_has_bert_specials_and_template(tmp_path):
    tok = _train(tmp_path, type="wordpiece", vocab_size=300, objective="mlm")
    assert [tok.pad_token, tok.unk_token, tok.cls_token, tok.sep_token, tok.mask_token] == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]
    ids = tok("the movie was great")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    pair = tok("the movie", "was great")
    assert pair["input_ids"].count(tok.sep_token_id) == 2
    assert tok.decode(tok("the movie was great", add_special_tokens=False)["input_ids"]) == "the movie was great"
    # CJK ideographs become single-character words (BERT's Chinese handling)
    pieces = tok.tokenize("今天天气")
    assert len(pieces) == 4


def test_unigram_trains_and_round_trips_ascii(tmp_path):
    tok = _train(tmp_path, type="unigram", vocab_size=200, objective="clm")
    text = "the film was really excellent and the service was poor ."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.eos_token == "</s>"


def test_cli_streams_a_jsonl_column(tmp_path, cli):
    from transformers import AutoTokenizer

    data = tmp_path / "docs.jsonl"
    with open(data, "w", encoding="utf-8") as fh:
        for i, line in enumerate(lm_corpus_lines()):
            fh.write(json.dumps({"id": i, "body": line}, ensure_ascii=False) + "\n")
    out = tmp_path / "tok"
    result = cli(
        "tokenizer", "train", "--dataset", data, "--text-column", "body", "--vocab-size", 350, "-o", out,
        "--objective", "mlm",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wordpiece tokenizer" in result.output  # mlm defaults to WordPiece
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.mask_token == "[MASK]" and 100 < len(tok) <= 350
    # non-empty output dir is refused without --overwrite
    again = cli("tokenizer", "train", "--dataset", data, "--text-column", "body", "-o", out, "--vocab-size", 350)
    assert again.exit_code == 2 and "not empty" in again.output


def test_iter_text_batches_streams_in_batches(tmp_path):
    import types

    from llmtune.tokenizer_train import iter_text_batches

    path = tmp_path / "c.txt"
    path.write_text("\n".join(lm_corpus_lines()) + "\n\n\n", encoding="utf-8")
    batches = iter_text_batches(str(path), batch_size=100)
    assert isinstance(batches, types.GeneratorType)
    sizes = [len(b) for b in batches]
    assert max(sizes) <= 100 and sum(sizes) == len(lm_corpus_lines())  # blank lines skipped


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--type", "sentencepiece"], "--type must be one of"),
        (["--vocab-size", "100"], "--vocab-size must be >= 300"),
        (["--text-column", "nope"], "column 'nope'"),
        (["--objective", "seq2seq"], "--objective must be one of clm, mlm"),
    ],
)
def test_cli_bad_inputs_one_line_exit_2(tmp_path, cli, args, needle):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(lm_corpus_lines()), encoding="utf-8")
    result = cli("tokenizer", "train", "--dataset", path, "-o", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
