"""`llmtune predict`: per-task records, input formats, order, and bad input (one line, exit 2)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import make_sentiment_rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def save_llmtune_config(folder: Path, tree: dict) -> None:
    from llmtune.resolve import build_config

    build_config(tree).save(folder)


def bert_head(tiny_wordpiece_dir: Path, out: Path, auto: str, **config: object) -> Path:
    """A randomly initialised tiny BERT with a task head, saved with its tokenizer."""
    import torch
    import transformers
    from transformers import AutoTokenizer, BertConfig

    tok = AutoTokenizer.from_pretrained(tiny_wordpiece_dir)
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, pad_token_id=tok.pad_token_id, **config,
    )  # fmt: skip
    torch.manual_seed(0)
    getattr(transformers, auto).from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def records(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def sentiment_model(tiny_wordpiece_dir, tmp_path_factory) -> Path:
    out = bert_head(
        tiny_wordpiece_dir, tmp_path_factory.mktemp("cls"), "AutoModelForSequenceClassification",
        num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
    )  # fmt: skip
    save_llmtune_config(out, {"task": "sentiment", "data": {"max_length": 64}})
    return out


def expected_scores(model_dir: Path, texts: list[str], activation: str = "softmax"):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for text in texts:  # one at a time: no padding at all
            logits = model(**tok(text, return_tensors="pt", truncation=True, max_length=64)).logits[0]
            out.append({"softmax": logits.softmax(-1), "sigmoid": logits.sigmoid(), "none": logits}[activation])
    return out


def test_classification_labels_scores_and_input_order(cli, sentiment_model, tmp_path):
    rows = make_sentiment_rows(7, seed=3)
    rows[2]["text"] = rows[2]["text"] + " really very quite long" * 6  # lengths differ: batches are re-sorted
    data = write_csv(tmp_path / "in.csv", rows)
    got = records(cli("predict", "--model", sentiment_model, "--input", data, "--batch-size", "3"))
    assert [r["text"] for r in got] == [r["text"] for r in rows]  # written back in input order
    names = ["negative", "positive"]
    for rec, probs in zip(got, expected_scores(sentiment_model, [r["text"] for r in rows]), strict=True):
        assert rec["label"] == names[int(probs.argmax())]
        assert rec["score"] == pytest.approx(float(probs.max()), abs=1e-4)  # padding does not change scores
        assert "scores" not in rec
    full = records(cli("predict", "-m", sentiment_model, "-i", data, "--all-scores"))
    assert set(full[0]["scores"]) == {"negative", "positive"}
    assert sum(full[0]["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    assert full[0]["scores"][full[0]["label"]] == full[0]["score"]


def test_txt_jsonl_stdin_and_output_file(cli, sentiment_model, tmp_path):
    from typer.testing import CliRunner

    from llmtune.cli import app

    texts = ["the film was great", "awful boring book", "a very lovely room"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    from_txt = records(cli("predict", "-m", sentiment_model, "-i", tmp_path / "in.txt"))
    assert [r["text"] for r in from_txt] == texts  # blank lines skipped
    stdin = "".join(json.dumps({"sentence": t, "id": i}) + "\n" for i, t in enumerate(texts))
    result = CliRunner().invoke(app, ["predict", "-m", str(sentiment_model), "-i", "-"], input=stdin)
    assert [(r["text"], r["label"]) for r in records(result)] == [(r["text"], r["label"]) for r in from_txt]
    out = tmp_path / "sub" / "preds.jsonl"
    result = cli("predict", "-m", sentiment_model, "-i", tmp_path / "in.txt", "-o", out)
    assert result.exit_code == 0 and result.stdout == ""
    assert [json.loads(x)["label"] for x in out.read_text().splitlines()] == [r["label"] for r in from_txt]
    assert "predicted 3 rows" in result.stderr


def test_multilabel_threshold_and_regression(cli, tiny_wordpiece_dir, tmp_path):
    multi = bert_head(
        tiny_wordpiece_dir, tmp_path / "multi", "AutoModelForSequenceClassification", num_labels=3,
        id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2}, problem_type="multi_label_classification",
    )  # fmt: skip
    data = tmp_path / "in.txt"
    data.write_text("the movie was good\nbad service\n", encoding="utf-8")
    probs = expected_scores(multi, ["the movie was good", "bad service"], "sigmoid")
    for threshold in (0.3, 0.5, 0.7):
        got = records(
            cli("predict", "-m", multi, "--task", "text-classification", "-i", data, "--threshold", threshold)
        )
        for rec, p in zip(got, probs, strict=True):
            assert rec["labels"] == [n for n, v in zip("abc", p.tolist(), strict=True) if v >= threshold]
    reg = bert_head(tiny_wordpiece_dir, tmp_path / "reg", "AutoModelForSequenceClassification", num_labels=1)
    got = records(cli("predict", "-m", reg, "--task", "text-classification", "-i", data))
    values = expected_scores(reg, ["the movie was good", "bad service"], "none")
    assert [r["value"] for r in got] == pytest.approx([float(v[0]) for v in values], abs=1e-4)


def test_ner_entities_have_spans_and_match_the_model(cli, tiny_wordpiece_dir, tmp_path):
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    names = ["O", "B-POS", "I-POS", "B-NEG", "I-NEG"]
    model_dir = bert_head(
        tiny_wordpiece_dir, tmp_path / "ner", "AutoModelForTokenClassification", num_labels=5,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )  # fmt: skip
    save_llmtune_config(model_dir, {"task": "ner"})
    texts = ["The film, really great!", "a very bad phone was dull service"]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    got = records(cli("predict", "-m", model_dir, "-i", data))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    from seqeval.metrics.sequence_labeling import get_entities

    for rec, text in zip(got, texts, strict=True):
        import re

        words = re.findall(r"\w+|[^\w\s]", text)
        enc = tok(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            ids = model(**enc).logits[0].argmax(-1).tolist()
        tags, seen = ["O"] * len(words), set()
        for pos, w in enumerate(enc.word_ids(0)):
            if w is not None and w not in seen:
                seen.add(w)
                tags[w] = names[ids[pos]]
        expected = [(k, " ".join(words[s : e + 1])) for k, s, e in get_entities(tags)]
        assert [(e["type"], " ".join(re.findall(r"\w+|[^\w\s]", e["text"]))) for e in rec["entities"]] == expected
        for ent in rec["entities"]:
            assert text[ent["start"] : ent["end"]] == ent["text"] and 0 < ent["score"] <= 1
    # pre-split tokens come back with their tags
    data.write_text(json.dumps({"tokens": ["the", "film", "was", "great"]}) + "\n", encoding="utf-8")
    rec = records(cli("predict", "-m", model_dir, "-i", data))[0]
    assert rec["text"] == "the film was great" and len(rec["tags"]) == 4 and set(rec["tags"]) <= set(names)


def test_qa_answer_is_a_span_of_the_context(cli, tiny_wordpiece_dir, tmp_path):
    model_dir = bert_head(tiny_wordpiece_dir, tmp_path / "qa", "AutoModelForQuestionAnswering")
    rows = [
        {"question": "which word is good ?", "context": "the film was really great and the room quite dull"},
        {"question": "what ?", "context": "a phone"},
    ]
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    got = records(cli("predict", "-m", model_dir, "--task", "qa", "-i", data, "--set", "data.max_length=64",
                      "--set", "options.doc_stride=16"))  # fmt: skip
    for rec, row in zip(got, rows, strict=True):
        assert rec["question"] == row["question"]
        assert rec["answer"] and row["context"][rec["start"] : rec["end"]] == rec["answer"]
        assert isinstance(rec["score"], float)


def greedy_reference(model_dir: Path, prompt: str, max_new_tokens: int, chat: bool) -> str:
    """What the model generates for one prompt on its own (no batching, no padding)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    text = (
        tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        if chat
        else prompt
    )
    enc = tok(text, return_tensors="pt", add_special_tokens=not chat)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)  # fmt: skip
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).split("<|im_end|>")[0].strip()


def test_sft_batched_generation_matches_one_at_a_time(cli, tiny_llama_dir, tmp_path):
    prompts = ["translate the dog", "translate a big red car sees the small house", "hi"]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    got = records(cli("predict", "-m", tiny_llama_dir, "--task", "sft", "-i", data, "--max-new-tokens", "12"))
    assert [r["prompt"] for r in got] == prompts
    # left padding + attention mask: a batch gives what each prompt gives alone
    assert [r["generated_text"] for r in got] == [greedy_reference(tiny_llama_dir, p, 12, chat=True) for p in prompts]


def test_seq2seq_predict_generates(cli, tiny_t5_dir, tmp_path):
    data = tmp_path / "docs.csv"
    write_csv(data, [{"document": "the dog runs"}, {"document": "a small green house sees the cat"}])
    got = records(cli("predict", "-m", tiny_t5_dir, "--task", "summarization", "-i", data, "--max-new-tokens", "5"))
    assert [r["input"] for r in got] == ["the dog runs", "a small green house sees the cat"]
    assert all(isinstance(r["generated_text"], str) for r in got)


# ---- bad input: one line, exit 2 ----------------------------------------------------------------


def test_bad_inputs_one_line(cli, sentiment_model, tiny_wordpiece_dir, tmp_path):
    one_line_error(cli("predict", "-m", sentiment_model), "--input")
    data = write_csv(tmp_path / "x.csv", [{"review_body": "good", "stars": 1}])
    one_line_error(
        cli("predict", "-m", sentiment_model, "-i", data), "no text column", "review_body", "data.text_column"
    )
    ok = records(cli("predict", "-m", sentiment_model, "-i", data, "--set", "data.text_column=review_body"))
    assert ok[0]["text"] == "good"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nstill fine\ncaf\xe9 latin-1\n")
    one_line_error(cli("predict", "-m", sentiment_model, "-i", bad), "line 3", "UTF-8")
    one_line_error(cli("predict", "-m", sentiment_model, "-i", tmp_path / "missing.csv"), "not found")
    empty_model = tmp_path / "no-weights"
    empty_model.mkdir()
    (empty_model / "config.json").write_text((sentiment_model / "config.json").read_text())
    one_line_error(cli("predict", "-m", empty_model, "--task", "sentiment", "-i", bad), "no weights", str(empty_model))
    plain = bert_head(tiny_wordpiece_dir, tmp_path / "plain", "AutoModelForSequenceClassification", num_labels=2)
    one_line_error(cli("predict", "-m", plain, "-i", data), "pass --task")
    one_line_error(cli("predict", "-m", sentiment_model, "-i", data, "--threshold", "1.5"), "--threshold")
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    one_line_error(cli("predict", "-m", sentiment_model, "-i", jl), "line 2", "JSON")
