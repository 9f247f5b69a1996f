"""NER: CoNLL parsing, sub-word alignment, and end-to-end training/eval through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtune.errors import LlmtuneError
from llmtune.tasks.ner import align_labels, continuation_ids, read_conll, sort_tags, word_predictions
from tests.conftest import make_ner_rows


def write_conll(path: Path, rows: list[dict], docstart_every: int = 0, sep: str = " ") -> Path:
    lines = []
    for i, row in enumerate(rows):
        if docstart_every and i % docstart_every == 0:
            lines += [f"-DOCSTART-{sep}-X-{sep}O", ""]
        lines += [f"{tok}{sep}NN{sep}{tag}" for tok, tag in zip(row["tokens"], row["ner_tags"], strict=True)]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# parsing


def test_read_conll_edge_cases(tmp_path):
    text = (
        "-DOCSTART- -X- -X- O\n"
        "\n"
        "EU NNP B-NP B-ORG\n"
        "rejects VBZ B-VP O\n"
        "\n"
        "\n"  # several blank lines between sentences
        "\n"
        "-DOCSTART- -X- -X- O\n"
        "Peter NNP B-NP B-PER\r\n"  # Windows line ending
        "Blackburn NNP I-NP I-PER\n"
        "\n"
        "BRUSSELS NNP B-NP B-LOC"  # last sentence without a trailing newline
    )
    path = tmp_path / "eng.train"  # no usual extension
    path.write_text(text, encoding="utf-8")
    ds = read_conll(path)
    assert ds.column_names == ["tokens", "ner_tags"]
    assert ds["tokens"] == [["EU", "rejects"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert ds["ner_tags"] == [["B-ORG", "O"], ["B-PER", "I-PER"], ["B-LOC"]]


def test_read_conll_two_columns_tabs_and_structured_files(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("New York\tB-LOC\nis\tO\n\nfine\tO\n", encoding="utf-8")  # tab-separated: tokens may hold spaces
    ds = read_conll(path)
    assert ds["tokens"] == [["New York", "is"], ["fine"]]
    assert ds["ner_tags"] == [["B-LOC", "O"], ["O"]]
    assert read_conll(tmp_path / "train.jsonl") is None  # left to the standard json loader


def test_read_conll_errors(tmp_path):
    bad = tmp_path / "bad.conll"
    bad.write_text("\n\nonlytoken\n", encoding="utf-8")
    with pytest.raises(LlmtuneError, match=r"bad.conll line 3: expected CoNLL columns"):
        read_conll(bad)
    empty = tmp_path / "empty.conll"
    empty.write_text("-DOCSTART- O\n\n", encoding="utf-8")
    with pytest.raises(LlmtuneError, match="no sentences"):
        read_conll(empty)


def test_conll_folder_splits_from_extensions(tmp_path):
    """CoNLL-2003 file names: eng.train -> train, eng.testa -> validation, eng.testb -> test."""
    from llmtune.config import DataArgs
    from llmtune.data import load_raw

    rows = make_ner_rows(12)
    write_conll(tmp_path / "eng.train", rows[:8], docstart_every=4)
    write_conll(tmp_path / "eng.testa", rows[8:11])
    write_conll(tmp_path / "eng.testb", rows[11:])
    raw = load_raw(DataArgs(dataset=str(tmp_path)), reader=read_conll)
    assert {k: len(v) for k, v in raw.items()} == {"train": 8, "validation": 3, "test": 1}
    assert raw["train"][0]["tokens"] == rows[0]["tokens"]
    # a folder mixing CoNLL and jsonl for one split is refused with a clear message
    (tmp_path / "train.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(LlmtuneError, match="mixes file formats"):
        load_raw(DataArgs(dataset=str(tmp_path)), reader=read_conll)


# ---------------------------------------------------------------------------------------------
# labels and alignment


def test_tag_order_and_continuations():
    names = sort_tags({"I-PER", "O", "B-LOC", "B-PER", "I-LOC", "S-MISC"})
    assert names == ["O", "B-LOC", "I-LOC", "S-MISC", "B-PER", "I-PER"]
    cont = continuation_ids(names)
    assert [names[c] for c in cont] == ["O", "I-LOC", "I-LOC", "S-MISC", "I-PER", "I-PER"]


def test_subword_alignment(tiny_wordpiece_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_wordpiece_dir)
    words = ["the", "zyxwvut", "film"]  # an unseen word splits into several sub-words
    enc = tok(words, is_split_into_words=True)
    word_ids = enc.word_ids()
    assert word_ids.count(1) > 1
    names = ["O", "B-X", "I-X"]
    tags = [0, 1, 0]
    first = align_labels(word_ids, tags, label_all=False, cont=continuation_ids(names))
    every = align_labels(word_ids, tags, label_all=True, cont=continuation_ids(names))
    for pos, w in enumerate(word_ids):
        if w is None:
            assert first[pos] == every[pos] == -100
        elif pos > 0 and word_ids[pos - 1] == w:  # a later sub-word
            assert first[pos] == -100 and every[pos] == (2 if w == 1 else tags[w])
        else:
            assert first[pos] == every[pos] == tags[w]
    # predictions back to words: first sub-word decides; words cut off by truncation become O
    wid = [-1 if w is None else w for w in word_ids]
    start = wid.index(1)
    pred_ids = [1 if pos == start else 2 if w == 1 else 0 for pos, w in enumerate(wid)]
    assert word_predictions(pred_ids, wid, 3, names) == ["O", "B-X", "O"]
    assert word_predictions([0, 1], [-1, 0], 3, names) == ["B-X", "O", "O"]


# ---------------------------------------------------------------------------------------------
# end to end


@pytest.fixture(scope="module")
def ner_trained(tmp_path_factory, tiny_bert_dir):
    from typer.testing import CliRunner

    from llmtune.cli import app

    root = tmp_path_factory.mktemp("ner")
    data = root / "data"
    data.mkdir()
    rows = make_ner_rows(260)
    with open(data / "train.jsonl", "w") as fh:
        for r in rows[:220]:
            fh.write(json.dumps(r) + "\n")
    with open(data / "validation.jsonl", "w") as fh:
        for r in rows[220:]:
            fh.write(json.dumps(r) + "\n")
    out = root / "out"
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            "--task",
            "ner",
            "--model",
            str(tiny_bert_dir),
            "--dataset",
            str(data),
            "--output-dir",
            str(out),
            "--epochs",
            "4",
            "--lr",
            "3e-3",
            "--batch-size",
            "16",
            "--seed",
            "0",
            "--set",
            "train.logging_steps=50",
        ],
    )
    assert result.exit_code == 0, result.output
    return out, data, rows


@pytest.mark.slow
def test_ner_learns_and_exports(ner_trained):
    out, _, rows = ner_trained
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    assert metrics["eval_f1"] >= 0.9, metrics  # an untrained tagger scores ~0 entity F1
    assert {"eval_precision", "eval_recall", "eval_POS_f1", "eval_NEG_f1", "eval_NEG_number"} <= set(metrics)
    config = json.loads((out / "config.json").read_text())
    assert list(config["id2label"].values()) == ["O", "B-NEG", "I-NEG", "B-POS"]
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 40
    assert preds[0]["tokens"] == rows[220]["tokens"] and preds[0]["reference"] == rows[220]["ner_tags"]
    assert all(len(p["prediction"]) == len(p["tokens"]) for p in preds)


@pytest.mark.slow
def test_ner_eval_command_on_conll(ner_trained, tmp_path, cli):
    """`llmtune eval` on a CoNLL file (the model was trained on jsonl); metrics match the exported rows."""
    from seqeval.metrics import f1_score

    out, _, rows = ner_trained
    conll = write_conll(tmp_path / "test.conll", rows[220:], docstart_every=10)
    result = cli("eval", "--model", out, "--dataset", conll, "--output-dir", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["eval"]
    preds = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 40
    assert metrics["eval_f1"] >= 0.9
    assert metrics["eval_f1"] == pytest.approx(
        f1_score([p["reference"] for p in preds], [p["prediction"] for p in preds]), abs=1e-9
    )


@pytest.mark.slow
def test_ner_int_tags_need_names(tmp_path, tiny_bert_dir, cli):
    names = ["O", "B-NEG", "I-NEG", "B-POS"]
    path = tmp_path / "int.jsonl"
    with open(path, "w") as fh:
        for r in make_ner_rows(40):
            fh.write(json.dumps({"words": r["tokens"], "tags": [names.index(t) for t in r["ner_tags"]]}) + "\n")
    args = ["finetune", "--task", "ner", "--model", tiny_bert_dir, "--dataset", path, "--max-steps", "2"]
    result = cli(*args, "--output-dir", tmp_path / "a")
    assert result.exit_code == 2
    assert "options.label_names" in result.output
    result = cli(*args, "--output-dir", tmp_path / "b", "--set", f"options.label_names=[{', '.join(names)}]")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert list(config["id2label"].values()) == names


@pytest.mark.slow
def test_ner_length_mismatch_is_one_line_error(tmp_path, tiny_bert_dir, cli):
    path = tmp_path / "bad.jsonl"
    rows = make_ner_rows(10)
    rows[3]["ner_tags"] = rows[3]["ner_tags"][:-1]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("finetune", "--task", "ner", "--model", tiny_bert_dir, "--dataset", path, "-o", tmp_path / "o")
    assert result.exit_code == 2
    assert "row 3" in result.output and "tags" in result.output
