"""Bad inputs: each gives ONE line on stderr starting with ``error:``, exit code 2, no traceback,
and leaves an earlier run's output folder byte-identical (cases run with ``-o PREV --overwrite``
unless the case is about the output folder)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.conftest import make_sentiment_rows


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def good_csv(d: Path) -> Path:
    return _csv(d / "good.csv", "text,label", [f"{r['text']},{r['label']}" for r in make_sentiment_rows(20)])


# id -> (builder(d, model) -> (args, uses_prev), expected text in the error line)
def make_cases():
    def c(args, prev=True):
        return args, prev

    cases = {}

    def add(name, expected):
        def deco(fn):
            cases[name] = (fn, expected)
            return fn

        return deco

    @add("corrupt-jsonl-line", "line 3 is not valid JSON")
    def _(d, m):
        p = d / "bad.jsonl"
        p.write_text('{"text": "good film", "label": 1}\n{"text": "bad", "label": 0}\n{"text": oops}\n')
        return c(["--dataset", p])

    @add("undecodable-text", "not valid UTF-8")
    def _(d, m):
        p = d / "bad.csv"
        p.write_bytes(b"text,label\ngood film,1\n\xff\xfe bad,0\n")
        return c(["--dataset", p])

    @add("empty-file", "is empty")
    def _(d, m):
        (d / "e.csv").write_text("")
        return c(["--dataset", d / "e.csv"])

    @add("header-only-csv", "header but no rows")
    def _(d, m):
        return c(["--dataset", _csv(d / "h.csv", "text,label", [])])

    @add("missing-dataset-file", "dataset file not found")
    def _(d, m):
        return c(["--dataset", d / "nope.csv"])

    @add("unsupported-file-type", "unsupported dataset file type")
    def _(d, m):
        (d / "data.xlsx").write_text("x")
        return c(["--dataset", d / "data.xlsx"])

    @add("missing-split", "no split 'dev2'")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "data.eval_split=dev2"])

    @add("eval-label-outside-train-set", "'neutral'")
    def _(d, m):
        folder = d / "ds"
        folder.mkdir()
        good = good_csv(d).read_text()
        (folder / "train.csv").write_text(good)
        (folder / "validation.csv").write_text("text,label\nfine film,neutral\n")
        return c(["--dataset", folder])

    @add("unknown-text-column", "text column 'body'")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "data.text_column=body"])

    @add("unknown-label-column", "label column 'stars'")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "data.label_column=stars"])

    @add("no-text-column", "no text column found")
    def _(d, m):
        return c(["--dataset", _csv(d / "x.csv", "words,label", ["a b,1", "c d,0", "e f,1"])])

    @add("unsupported-label-type", "unsupported label")
    def _(d, m):
        p = d / "x.jsonl"
        p.write_text("".join(json.dumps({"text": f"t {i}", "label": {"a": i}}) + "\n" for i in range(6)))
        return c(["--dataset", p])

    @add("empty-labels", "empty values")
    def _(d, m):
        return c(["--dataset", _csv(d / "x.csv", "text,label", ["a b,pos", "c d,", "e f,neg", "g h,pos"])])

    @add("nan-regression-labels", "regression needs a number")
    def _(d, m):
        rows = ["a b,0.5", "c d,nan", "e f,1.5", "g h,0.25"]
        return c(["--dataset", _csv(d / "x.csv", "text,label", rows), "--set", "options.problem_type=regression"])

    @add("output-dir-not-writable", "not writable")
    def _(d, m):
        blocker = d / "blocker"
        blocker.write_text("a file where a folder should be")  # chmod does not stop root
        return c(["--dataset", good_csv(d), "-o", blocker / "sub"], prev=False)

    @add("output-dir-is-a-file", "is a file")
    def _(d, m):
        f = d / "out.txt"
        f.write_text("x")
        return c(["--dataset", good_csv(d), "-o", f], prev=False)

    @add("non-empty-output-dir", "is not empty")
    def _(d, m):
        return c(["--dataset", good_csv(d), "-o", d / "prev"], prev=False)

    @add("streaming-without-max-steps", "needs train.max_steps")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "data.streaming=true", "--max-steps", "-1"])

    @add("resume-and-overwrite", "--resume and --overwrite conflict")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--resume", "auto"])

    @add("resume-path-missing", "no such checkpoint folder")
    def _(d, m):
        return c(["--dataset", good_csv(d), "-o", d / "prev", "--resume", d / "prev" / "checkpoint-99"], prev=False)

    @add("resume-incomplete-checkpoint", "not a complete checkpoint")
    def _(d, m):
        return c(["--dataset", good_csv(d), "-o", d / "prev", "--resume", d / "prev" / "checkpoint-3"], prev=False)

    @add("unknown-task", "unknown task")
    def _(d, m):
        return c(["--task", "telepathy", "--dataset", good_csv(d)])

    @add("unknown-recipe", "unknown recipe")
    def _(d, m):
        return c(["--recipe", "no-such-recipe", "--dataset", good_csv(d)])

    @add("unknown-recipe-key", "unknown key 'train.epoch'")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "train.epoch=3"])

    @add("bad-set-syntax", "must look like key=value")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "train.epochs"])

    @add("wrong-type", "train.warmup_ratio must be a number")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "train.warmup_ratio=lots"])

    @add("negative-lr", "learning_rate")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--lr", "-1"])

    @add("invalid-recipe-yaml", "invalid YAML")
    def _(d, m):
        (d / "r.yaml").write_text("task: sentiment\ntrain: [unclosed\n")
        return c(["--recipe", d / "r.yaml", "--dataset", good_csv(d)])

    @add("missing-model-folder", "model folder not found")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--model", d / "no-model"], prev=True)

    @add("model-path-is-a-file", "is a file")
    def _(d, m):
        (d / "model.bin").write_text("x")
        return c(["--dataset", good_csv(d), "--model", d / "model.bin"])

    @add("launch-bad-num-processes", "--num-processes must be >= 1")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--num-processes", "0"])

    @add("launch-multinode-missing-ip", "needs")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--num-machines", "2"])

    @add("launch-unknown-accelerate-config", "no such file")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--num-processes", "2", "--accelerate-config", "zero9"])

    @add("remote-code-model-without-flag", "remote")
    def _(d, m):
        remote = d / "remote"
        remote.mkdir()
        cfg = {"model_type": "llmtune-custom", "auto_map": {"AutoConfig": "conf.CustomConfig"}}
        (remote / "config.json").write_text(json.dumps(cfg))
        (remote / "conf.py").write_text("raise SystemExit('remote code ran')\n")
        return c(["--dataset", good_csv(d), "--model", remote])

    @add("mixed-type-labels", "mixes value types")
    def _(d, m):
        p = d / "mixed.jsonl"
        p.write_text('{"text": "great film", "label": 1}\n{"text": "awful film", "label": "negative"}\n' * 5)
        return c(["--dataset", p])

    @add("non-finite-number", "train.epochs must be a finite number")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "train.epochs=.inf"])

    @add("section-set-to-a-value", "'train' must be a mapping")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "train=3"])

    @add("model-folder-without-weights", "could not load the model from folder")
    def _(d, m):
        import shutil

        broken = d / "noweights"
        shutil.copytree(m, broken)
        for f in broken.glob("*.safetensors"):
            f.unlink()
        return c(["--dataset", good_csv(d), "--model", broken])

    @add("unknown-config-override", "hidden_dropout_probb not in the bert config")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "model.config_overrides={hidden_dropout_probb: 0.0}"])

    return cases


CASES = make_cases()


def snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, tiny_bert_dir, cli):
    build, expected = CASES[name]
    prev = tmp_path / "prev"
    (prev / "checkpoint-3").mkdir(parents=True)
    (prev / "checkpoint-3" / "model.safetensors").write_bytes(b"older weights")
    (prev / "metrics.json").write_text('{"eval": {"eval_accuracy": 0.9}}')
    (prev / "model.safetensors").write_bytes(b"earlier model")
    before = snapshot(prev)
    args, uses_prev = build(tmp_path, tiny_bert_dir)
    argv = ["finetune", "--model", tiny_bert_dir, "--max-steps", "2", "--batch-size", "4", *args]
    if uses_prev:
        argv += ["-o", prev, "--overwrite"]
    try:
        result = cli(*argv)
    finally:
        for p in tmp_path.rglob("*"):
            if p.is_dir():
                os.chmod(p, 0o700)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output + result.stderr
    assert snapshot(prev) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["finetune", "--no-such-flag"],
        ["finetune", "--epochs", "many"],
        ["finetune", "--num-processes", "two"],
        ["no-such-command"],
    ],
)
def test_click_usage_errors_exit_2(argv, cli):
    result = cli(*argv)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_matrix_is_large_enough():
    assert len(CASES) >= 25
