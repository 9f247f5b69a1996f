"""Peak memory of streaming pretraining does not grow with the corpus.

Generates a corpus and a 10x larger one (from ../shared wikitext-2 when present, else synthetic
text), trains a byte-level BPE tokenizer with llmtune, then runs
``llmtune pretrain --objective clm --streaming`` over each corpus in a fresh subprocess with
``max_steps`` sized so the whole corpus streams through once (10x the steps for 10x the text),
and records each child's peak RSS (``os.wait4`` rusage). Target: the 10x corpus within 10% of
the small one. Writes the figures to BENCHMARKS.md.

    python benchmarks/bench_streaming.py [--small-mb 2] [--factor 10] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lmbench import run_child, source_lines, update_benchmarks_md, write_corpus

BLOCK, BATCH = 128, 16


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small-mb", type=float, default=2.0, help="size of the small corpus in MB")
    ap.add_argument("--factor", type=int, default=10, help="how much larger the big corpus is")
    ap.add_argument("--buffer", type=int, default=1000, help="data.shuffle_buffer_size (blocks)")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from llmtune.tokenizer_train import TokenizerSpec, train_tokenizer

    lines, source = source_lines()
    work = Path(tempfile.mkdtemp(prefix="llmtune-bench-stream-"))
    tok_dir = work / "tok"
    train_tokenizer(iter(lines), TokenizerSpec(type="bpe", vocab_size=4000, objective="clm")).save_pretrained(tok_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    tokens_per_byte = len(tok("\n".join(lines[:2000]))["input_ids"]) / len("\n".join(lines[:2000]).encode())
    config = work / "config.json"
    config.write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": BLOCK}))

    rows = []
    for name, mb in (("small", args.small_mb), (f"{args.factor}x", args.small_mb * args.factor)):
        corpus = work / f"{name}.txt"
        size = write_corpus(corpus, lines, int(mb * 1e6))
        steps = max(10, int(size * tokens_per_byte / (BLOCK * BATCH)))  # one pass over the stream
        out = work / f"out-{name}"
        code, secs, rss_kib = run_child(
            [
                "pretrain", "--objective", "clm", "--model-config", str(config), "--tokenizer", str(tok_dir),
                "--dataset", str(corpus), "--streaming", "--max-steps", str(steps), "--block-size", str(BLOCK),
                "--batch-size", str(BATCH), "--lr", "1e-3", "-o", str(out), "--overwrite",
                "--set", f"data.shuffle_buffer_size={args.buffer}", "--set", "data.max_eval_samples=200",
                "--set", "train.eval_strategy=no", "--set", "options.eval_on_start=false",
                "--set", "train.logging_steps=100000",
            ],
            work / f"{name}.log",
        )  # fmt: skip
        if code != 0:
            print((work / f"{name}.log").read_text()[-3000:])
            raise SystemExit(f"run '{name}' failed with exit code {code}")
        rows.append((name, size / 1e6, steps, secs, rss_kib / 1024))
        print(f"{name:>5}: {size / 1e6:7.1f} MB, {steps:6d} steps, {secs:7.1f} s, peak RSS {rss_kib / 1024:7.1f} MiB")

    ratio = rows[1][4] / rows[0][4]
    verdict = "PASS" if ratio <= 1.10 else "FAIL"
    print(f"peak RSS ratio {args.factor}x / small = {ratio:.3f} ({verdict}, target <= 1.10)")
    body = "\n".join(
        [
            "## Streaming pretraining: peak memory vs corpus size",
            "",
            f"`python benchmarks/bench_streaming.py --small-mb {args.small_mb:g} --factor {args.factor}` - "
            f"`llmtune pretrain --objective clm --streaming` (2-layer GPT-2, block {BLOCK}, batch {BATCH}, "
            f"shuffle buffer {args.buffer} blocks), max_steps sized so each corpus streams through once; "
            f"each run in its own process, peak RSS from `os.wait4`. Text: {source}.",
            "",
            "| corpus | size (MB) | steps | wall (s) | peak RSS (MiB) |",
            "|---|---|---|---|---|",
            *[f"| {n} | {s:.1f} | {st} | {t:.0f} | {r:.0f} |" for n, s, st, t, r in rows],
            "",
            f"Peak RSS ratio {args.factor}x / small: **{ratio:.3f}** ({verdict}; target <= 1.10).",
        ]
    )
    if not args.no_write:
        print(f"written to {update_benchmarks_md('bench_streaming', body)}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
