"""Bad inputs: each gives ONE line on stderr starting with ``error:``, exit code 2, no traceback,
and leaves an earlier run's output folder byte-identical (cases run with ``-o PREV --overwrite``
unless the case is about the output folder).

A case is a builder ``(tmp_dir, tiny_bert_dir) -> Case`` registered with ``@add(name, expected)``;
by default it runs ``finetune --model TINY_BERT --max-steps 2 --batch-size 4 ARGS``; ``full=True``
makes ARGS the whole command line (eval, pretrain, tokenizer train). ``expected`` is a text (or
tuple of texts) the error line must contain; ``Case.not_in`` texts it must not contain (a wrong
source); ``Case.absent`` paths the failed run must not leave behind. Cases are grouped by class of
problem; add new ones to the group they belong to.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import make_sentiment_rows


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def good_csv(d: Path) -> Path:
    return _csv(d / "good.csv", "text,label", [f"{r['text']},{r['label']}" for r in make_sentiment_rows(20)])


@dataclass
class Case:
    args: list
    prev: bool = True  # run with -o PREV --overwrite: PREV must stay byte-identical
    full: bool = False  # args is the whole command line
    absent: tuple = ()  # paths that must not exist after the failed run
    not_in: tuple = ()  # texts the error line must not contain


def copy_model(m: Path, dest: Path) -> Path:
    shutil.copytree(m, dest)
    return dest


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# id -> (builder(d, model) -> Case, expected text(s) in the error line)
def make_cases():
    def c(args, prev=True, **kw):
        return Case(list(args), prev, **kw)

    cases = {}

    def add(name, expected, **case_fields):
        """Register a builder; ``case_fields`` (e.g. not_in=...) are set on the Case it returns."""

        def deco(fn):
            def build(d, m):
                case = fn(d, m)
                for key, value in case_fields.items():
                    setattr(case, key, value)
                return case

            cases[name] = (build, expected)
            return fn

        return deco

    @add("corrupt-jsonl-line", "line 3, column 10 is not valid JSON")
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

    @add("longest-first-on-a-stream", "train.longest_first needs a dataset of known length")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "data.streaming=true", "--set", "train.longest_first=2"])

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

    @add("model-folder-without-weights", ("has no model weights", "found: config.json"))
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

    # ---- numbers out of range: every flag and key, named by where the value came from ---------

    @add("max-steps-negative", ("--max-steps (train.max_steps) must be > 0, or -1", "got -5"))
    def _(d, m):
        return c(["--dataset", good_csv(d), "--max-steps", "-5"])

    @add("epochs-zero", "--epochs (train.epochs) must be > 0")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--epochs", "0"])

    @add("batch-size-zero", "--batch-size (train.batch_size) must be >= 1")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--batch-size", "0"])

    @add("grad-accum-zero", "--grad-accum (train.gradient_accumulation_steps) must be >= 1")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--grad-accum", "0"])

    @add("seed-negative", "--seed (train.seed) must be between 0 and 4294967295, got -1")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--seed", "-1"])

    @add("seed-too-large", "--seed (train.seed) must be between 0 and 4294967295")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--seed", str(2**32)])

    @add("warmup-ratio-one", "--set train.warmup_ratio must be >= 0 and < 1, got 1")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "train.warmup_ratio=1"])

    @add("negative-grad-norm", "--set train.max_grad_norm must be >= 0")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "train.max_grad_norm=-1"])

    @add("validation-split-above-one", "--set data.validation_split must be >= 0 and < 1")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "data.validation_split=1.5"])

    @add("max-length-tiny", "--set data.max_length must be >= 8")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "data.max_length=2"])

    @add("zero-eval-steps", "--set train.eval_steps must be >= 1")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "train.eval_strategy=steps", "--set", "train.eval_steps=0"])

    @add("unknown-scheduler", "--set train.lr_scheduler must be one of linear, cosine")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "train.lr_scheduler=cosinus"])

    @add("unknown-reporter", "--set train.report_to: tensorbored unknown; integrations:")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "train.report_to=tensorbored"])

    @add("task-option-out-of-range", "--set options.threshold must be > 0 and < 1, got 2")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "options.threshold=2"])

    @add("qa-option-out-of-range", "--set options.n_best_size must be >= 1, got 0")
    def _(d, m):
        return c(["--task", "qa", "--dataset", good_csv(d), "--set", "options.n_best_size=0"])

    @add("eval-batch-size-zero", "--batch-size (train.eval_batch_size) must be >= 1")
    def _(d, m):
        return c(
            ["eval", "--model", m, "--task", "sentiment", "--dataset", good_csv(d), "--batch-size", "0"], full=True
        )

    @add("pretrain-block-size-tiny", "--block-size (options.block_size) must be >= 8, got 4")
    def _(d, m):
        args = ["pretrain", "--objective", "mlm", "--model", m, "--dataset", good_csv(d), "--block-size", "4"]
        return c(args, full=True)

    @add("unknown-train-split", "no split 'training2' (data.train_split)")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "data.train_split=training2"])

    @add("unknown-best-metric", ("train.metric_for_best_model 'accuracy2' is not a metric", "accuracy"))
    def _(d, m):
        steps = ["--set", "train.eval_strategy=steps", "--set", "train.eval_steps=1"]
        steps += ["--set", "data.validation_split=0.5"]  # both classes in validation: no warning line
        return c(
            ["--dataset", good_csv(d), "--set", "train.metric_for_best_model=accuracy2", *steps, "-o", d / "run"],
            prev=False,
            absent=(d / "run",),
        )

    @add("launch-zero-machines", "--num-machines must be >= 1, got 0")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--num-machines", "0"])

    @add("launch-port-out-of-range", "--main-process-port must be a port number")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--num-processes", "2", "--main-process-port", "70000"])

    machines = [
        "--num-machines",
        "2",
        "--machine-rank",
        "1",
        "--main-process-ip",
        "127.0.0.1",
        "--main-process-port",
        "1",
    ]

    @add("launch-unknown-rdzv-backend", "--rdzv-backend must be one of static, c10d, got 'etcd'")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--num-processes", "2", *machines, "--rdzv-backend", "etcd"])

    @add("launch-rdzv-timeout-one-machine", "--rdzv-backend and --rdzv-timeout are for runs over several machines")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--num-processes", "2", "--rdzv-timeout", "30"])

    @add("launch-machines-without-process-count", "--num-machines 2 needs --num-processes")
    def _(d, m):
        return c(["--dataset", good_csv(d), *machines])

    @add("tokenizer-min-frequency-zero", "--min-frequency must be >= 1, got 0")
    def _(d, m):
        return c(["tokenizer", "train", "-d", good_csv(d), "-o", d / "tok", "--min-frequency", "0"], full=True)

    @add("tokenizer-max-samples-zero", "--max-samples must be >= 1, got 0")
    def _(d, m):
        return c(["tokenizer", "train", "-d", good_csv(d), "-o", d / "tok", "--max-samples", "0"], full=True)

    # ---- the source of a bad value: the flag, the --set or the recipe file, never another ----------

    @add("flag-value-names-the-flag", "--lr (train.learning_rate) must be > 0", not_in=("recipes/", ".yaml"))
    def _(d, m):
        return c(["--dataset", good_csv(d), "--lr", "-1"])

    @add("set-value-names-the-set", "--set train.learning_rate must be > 0", not_in=(".yaml", "--lr"))
    def _(d, m):
        return c(["--dataset", good_csv(d), "--set", "train.learning_rate=-1"])

    @add("recipe-value-names-the-file", "r.yaml: train.learning_rate must be > 0", not_in=("--lr", "--set"))
    def _(d, m):
        (d / "r.yaml").write_text("task: sentiment\ntrain:\n  learning_rate: -1\n")
        return c(["--recipe", d / "r.yaml", "--dataset", good_csv(d)])

    @add("recipe-unknown-key-names-the-file", "r.yaml: unknown key 'train.epoch'")
    def _(d, m):
        (d / "r.yaml").write_text("task: sentiment\ntrain:\n  epoch: 3\n")
        return c(["--recipe", d / "r.yaml", "--dataset", good_csv(d)])

    # ---- degenerate data: nothing to learn ------------------------------------------------------

    @add("one-class-in-training", ("every training row has the same class", "'positive'"))
    def _(d, m):
        return c(["--dataset", _csv(d / "x.csv", "text,label", [f"good film {i},positive" for i in range(12)])])

    @add("text-column-empty-everywhere", "text column 'text' of split 'train' is empty in every row")
    def _(d, m):
        return c(["--dataset", jsonl(d / "x.jsonl", [{"text": "", "label": i % 2} for i in range(12)])])

    @add("constant-regression-target", "regression needs targets that vary")
    def _(d, m):
        p = jsonl(d / "x.jsonl", [{"text": f"film {i}", "label": 2.5} for i in range(12)])
        return c(["--dataset", p, "--set", "options.problem_type=regression"])

    @add("multi-label-all-identical", "every training row has the same labels")
    def _(d, m):
        return c(["--dataset", jsonl(d / "x.jsonl", [{"text": f"film {i}", "label": ["a"]} for i in range(12)])])

    @add("ner-no-entities", "every tag in the training split is 'O'")
    def _(d, m):
        rows = [{"tokens": ["the", "film", "was"], "ner_tags": ["O", "O", "O"]} for _ in range(12)]
        return c(["--task", "ner", "--dataset", jsonl(d / "x.jsonl", rows)])

    @add("qa-answers-misplaced", "no training answer is found in its context")
    def _(d, m):
        rows = [
            {
                "id": str(i),
                "question": "which?",
                "context": "the film was great",
                "answers": {"text": ["great"], "answer_start": [0]},
            }
            for i in range(12)
        ]
        return c(["--task", "qa", "--dataset", jsonl(d / "x.jsonl", rows)])

    @add("qa-all-unanswerable", "training questions are unanswerable")
    def _(d, m):
        rows = [
            {"id": str(i), "question": "which?", "context": "the film", "answers": {"text": [], "answer_start": []}}
            for i in range(12)
        ]
        return c(["--task", "qa", "--dataset", jsonl(d / "x.jsonl", rows)])

    @add("summaries-empty-everywhere", "target column 'summary' of split 'train' is empty in every row")
    def _(d, m):
        rows = [{"document": f"the film number {i} was good", "summary": ""} for i in range(12)]
        return c(["--task", "summarization", "--dataset", jsonl(d / "x.jsonl", rows)])

    @add("pretraining-text-empty-everywhere", "text column 'text' of split 'train' is empty in every row")
    def _(d, m):
        rows = [{"text": " "} for _ in range(12)]
        args = ["pretrain", "--objective", "mlm", "--model", m, "--dataset", jsonl(d / "x.jsonl", rows)]
        return c([*args, "--max-steps", "2", "-o", d / "o"], full=True, absent=(d / "o",))

    # ---- corrupt or partial model files: named, with the fix ------------------------------------

    @add("truncated-safetensors", ("model.safetensors are corrupt", "truncated", "re-download"))
    def _(d, m):
        broken = copy_model(m, d / "broken")
        truncate(broken / "model.safetensors")
        return c(["--dataset", good_csv(d), "--model", broken])

    @add("truncated-safetensors-header", ("model.safetensors are corrupt", "re-download"))
    def _(d, m):
        broken = copy_model(m, d / "broken")
        truncate(broken / "model.safetensors", keep=0.0001)
        return c(["--dataset", good_csv(d), "--model", broken])

    @add("corrupt-tokenizer-json", ("broken/tokenizer.json is not valid JSON", "re-download"))
    def _(d, m):
        broken = copy_model(m, d / "broken")
        truncate(broken / "tokenizer.json")
        return c(["--dataset", good_csv(d), "--model", broken])

    @add("corrupt-config-json", ("broken/config.json is not valid JSON", "re-download"))
    def _(d, m):
        broken = copy_model(m, d / "broken")
        truncate(broken / "config.json")
        return c(["--dataset", good_csv(d), "--model", broken])

    @add("corrupt-tokenizer-config-json", ("broken/tokenizer_config.json is not valid JSON", "line"))
    def _(d, m):
        broken = copy_model(m, d / "broken")
        truncate(broken / "tokenizer_config.json")
        return c(["--dataset", good_csv(d), "--model", broken])

    @add("eval-truncated-safetensors", ("model.safetensors are corrupt", "re-download"))
    def _(d, m):
        broken = copy_model(m, d / "broken")
        truncate(broken / "model.safetensors")
        args = ["eval", "--model", broken, "--task", "sentiment", "--dataset", good_csv(d)]
        return c(args, full=True, absent=(broken / "eval",))

    # ---- a folder that is not a model says what it lacks and what it holds ---------------------

    @add("empty-folder-as-model", ("is not a model folder", "no config.json", "it is empty"))
    def _(d, m):
        (d / "empty").mkdir()
        return c(["--dataset", good_csv(d), "--model", d / "empty"])

    @add("data-folder-as-model", ("is not a model folder", "no config.json", "found: train.csv"))
    def _(d, m):
        (d / "data").mkdir()
        good_csv(d).rename(d / "data" / "train.csv")
        return c(["--dataset", d / "data" / "train.csv", "--model", d / "data"])

    @add("eval-data-folder-without-task", ("is not a model folder", "found: train.csv"), not_in=("--task",))
    def _(d, m):
        (d / "data").mkdir()
        good_csv(d).rename(d / "data" / "train.csv")
        args = ["eval", "--model", d / "data", "--dataset", d / "data" / "train.csv"]
        return c(args, full=True, absent=(d / "data" / "eval",))

    @add("data-folder-as-tokenizer", ("--tokenizer", "is not a tokenizer folder", "found: train.csv"))
    def _(d, m):
        (d / "data").mkdir()
        good_csv(d).rename(d / "data" / "train.csv")
        args = ["pretrain", "--objective", "mlm", "--model-config", "bert-tiny", "--tokenizer", d / "data"]
        return c([*args, "--dataset", d / "data" / "train.csv", "-o", d / "o"], full=True, absent=(d / "o",))

    # ---- malformed json: the right line and column ---------------------------------------------

    @add("corrupt-jsonl-column", "line 2, column 26 is not valid JSON")
    def _(d, m):
        p = d / "bad.jsonl"
        p.write_text('{"text": "good film", "label": 1}\n{"text": "bad", "label": oops}\n')
        return c(["--dataset", p])

    @add("corrupt-json-lines-in-json-file", "line 3, column 28 is not valid JSON (Expecting")
    def _(d, m):
        p = d / "bad.json"
        p.write_text('{"text": "good film", "label": 1}\n{"text": "bad", "label": 0}\n{"text": "bad", "label": 0,}\n')
        return c(["--dataset", p])

    @add("corrupt-json-document", "invalid JSON at line 2, column 29")
    def _(d, m):
        p = d / "bad.json"
        p.write_text('[{"text": "good film", "label": 1},\n {"text": "bad", "label": 0,}]\n')
        return c(["--dataset", p])

    @add("jsonl-line-not-an-object", "line 2 is not a JSON object")
    def _(d, m):
        p = d / "bad.jsonl"
        p.write_text('{"text": "good film", "label": 1}\n[1, 2]\n')
        return c(["--dataset", p])

    # ---- nothing left behind by a failed run ----------------------------------------------------

    @add("new-output-dir-not-created-on-bad-data", "'neutral'")
    def _(d, m):
        folder = d / "ds"
        folder.mkdir()
        (folder / "train.csv").write_text(good_csv(d).read_text())
        (folder / "validation.csv").write_text("text,label\nfine film,neutral\n")
        return c(["--dataset", folder, "-o", d / "new" / "run"], prev=False, absent=(d / "new",))

    @add("new-output-dir-not-created-on-bad-model", "model folder not found")
    def _(d, m):
        return c(["--dataset", good_csv(d), "--model", d / "nope", "-o", d / "run"], prev=False, absent=(d / "run",))

    @add("eval-leaves-no-eval-folder", "is not one the model knows")
    def _(d, m):
        model = copy_model(m, d / "model")
        args = ["eval", "--model", model, "--task", "sentiment", "--dataset", good_csv(d)]
        return c(args, full=True, absent=(model / "eval",))

    @add("tokenizer-train-leaves-no-folder", "empty in every row")
    def _(d, m):
        p = jsonl(d / "x.jsonl", [{"text": ""} for _ in range(5)])
        return c(["tokenizer", "train", "-d", p, "-o", d / "tok"], full=True, absent=(d / "tok",))

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
    case = build(tmp_path, tiny_bert_dir)
    if case.full:
        argv = list(case.args)
    else:
        argv = ["finetune", "--model", tiny_bert_dir, "--max-steps", "2", "--batch-size", "4", *case.args]
        if case.prev:
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
    for text in (expected,) if isinstance(expected, str) else expected:
        assert text in lines[0], (text, lines[0])
    for text in case.not_in:
        assert text not in lines[0], (text, lines[0])
    assert "Traceback" not in result.output + result.stderr
    assert snapshot(prev) == before
    for path in case.absent:
        assert not Path(path).exists(), f"the failed run left {path} behind"


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
    assert len(CASES) >= 80
