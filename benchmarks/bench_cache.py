"""Tokenized-cache reuse: preprocessing wall time of a first run vs a second run of the same data
and config (a new output folder and learning rate, as a new run has), each in a fresh process.

- ``clm``: WikiText-2-sized text (wikitext-2 valid from ../shared repeated, shuffled per pass, to
  ~11 MB, the size of WikiText-2's train split), tokenized and packed into 512-token blocks.
- ``sft``: SAMSum dialogues as chat (../shared/data/samsum), encoded with answer-only labels.

A third run with another ``max_length`` / ``block_size`` shows the cache is not reused when the
rows would differ. Writes the figures to BENCHMARKS.md.

    python benchmarks/bench_cache.py [--mb 11] [--shared DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lmbench import ROOT, update_benchmarks_md, write_corpus

CHILD = """
import json, sys, time
from llmtune.resolve import load_config
from llmtune.tasks import get_task
from llmtune.tasks.base import RunContext
cfg = load_config(task=sys.argv[1], sets=sys.argv[2:])
task = get_task(cfg.task)
ctx = RunContext(cfg=cfg, training=True, model_path=cfg.model.name_or_path)
ctx.tokenizer = task.load_tokenizer(ctx)
raw = task.load_data(ctx)
started = time.perf_counter()
out = task.prepare(ctx, raw)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rows": {k: len(v) for k, v in out.items()}}))
"""


def prepare(task: str, sets: list[str], env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, task, *sets], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=11.0, help="size of the clm corpus")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the shared data folder")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    wikitext = args.shared / "data" / "wikitext2" / "wiki.valid.tokens"
    samsum = args.shared / "data" / "samsum" / "validation.jsonl"
    for path in (wikitext, samsum):
        if not path.is_file():
            raise SystemExit(f"{path} not found: pass --shared DIR")
    work = Path(tempfile.mkdtemp(prefix="llmtune-bench-cache-"))
    env = dict(os.environ, HF_HOME=str(work / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))

    lines = [x.strip() for x in wikitext.read_text(encoding="utf-8").splitlines()]
    lines = [x for x in lines if x and not x.startswith("=")]
    corpus = work / "wiki"
    corpus.mkdir()
    size = write_corpus(corpus / "train.txt", lines, int(args.mb * 1e6))
    sys.path.insert(0, str(ROOT))
    from bench_packing import samsum_chat, write_jsonl

    chat = work / "chat"
    chat.mkdir()
    write_jsonl(chat / "train.jsonl", samsum_chat(samsum))

    cases = {
        "clm": (
            "clm",
            [f"data.dataset={corpus}", "model.config=gpt2-mini", "model.tokenizer=builtin:tiny_corpus_bpe",
             "options.block_size=512"],
            "options.block_size=256",
        ),
        "sft": (
            "sft",
            [f"data.dataset={chat}", "model.name_or_path=null", "model.config=builtin:tiny_chat_llama",
             "model.tokenizer=builtin:tiny_chat_llama", "data.max_length=1024"],
            "data.max_length=512",
        ),
    }  # fmt: skip
    rows = []
    for name, (task, sets, changed) in cases.items():
        first = prepare(task, [*sets, f"train.output_dir={work / 'a'}"], env)
        second = prepare(task, [*sets, f"train.output_dir={work / 'b'}", "train.learning_rate=0.01"], env)
        third = prepare(task, [*sets, f"train.output_dir={work / 'c'}", changed], env)
        ratio = first["seconds"] / second["seconds"]
        rows.append((name, first, second, third, ratio, changed))
        print(f"{name}: first {first['seconds']:.2f} s, second {second['seconds']:.3f} s (x{ratio:.0f}), "
              f"{changed}: {third['seconds']:.2f} s")  # fmt: skip

    body = [
        "## Tokenized-cache reuse (issue 12)",
        "",
        f"`python benchmarks/bench_cache.py --mb {args.mb:g}` - {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{os.cpu_count()} CPU cores shared with other jobs (load average {os.getloadavg()[0]:.1f}). Each "
        f"preprocessing in a fresh process and a fresh datasets cache; the second run has another output folder "
        f"and learning rate (a new run of the same data and config); the third changes the row length.",
        "",
        "| data | first run (s) | second run (s) | speed-up | changed option | third run (s) |",
        "|---|---|---|---|---|---|",
    ]
    labels = {
        "clm": f"clm: {size / 1e6:.1f} MB WikiText-2 text, block 512",
        "sft": "sft: 818 SAMSum dialogues as chat, max_length 1024",
    }
    for name, first, second, third, ratio, changed in rows:
        body.append(
            f"| {labels[name]} | {first['seconds']:.2f} | {second['seconds']:.3f} | x{ratio:.0f} "
            f"({'PASS' if ratio >= 10 else 'below'} >= 10x) | `{changed}` | {third['seconds']:.2f} (re-tokenized) |"
        )
    body += [
        "",
        "Before issue 12, sft (and every task tokenizing through `tokenize_split`) re-tokenized on every new run: "
        "`datasets` hashed the encode closure, which holds the whole run config (output folder, learning rate).",
    ]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        print(f"written to {update_benchmarks_md('bench_cache', text)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
