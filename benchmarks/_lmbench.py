"""Shared helpers for the pretraining benchmarks: corpora, child runs with their peak RSS, and
the BENCHMARKS.md section writer (each script owns one marked section; others are left alone)."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext2" / "wiki.valid.tokens"
WORDS = [
    "the",
    "a",
    "river",
    "town",
    "bridge",
    "train",
    "market",
    "bread",
    "garden",
    "school",
    "library",
    "ferry",
    "boat",
    "harbour",
    "weather",
    "rain",
    "morning",
    "evening",
    "walks",
    "opens",
    "closes",
    "carries",
    "builds",
    "keeps",
    "reads",
    "writes",
    "old",
    "new",
    "small",
    "quiet",
    "busy",
    "green",
    "with",
    "from",
    "over",
    "under",
    "along",
    "beside",
    "after",
    "before",
    "and",
    "but",
    "because",
    "while",
    "every",
    "each",
    "many",
    "few",
]


def source_lines() -> tuple[list[str], str]:
    """Real English (wikitext-2 valid from ../shared) when present, else seeded synthetic prose."""
    if WIKITEXT.is_file():
        lines = [ln.strip() for ln in WIKITEXT.read_text(encoding="utf-8").splitlines()]
        return [ln for ln in lines if ln and not ln.startswith("=")], f"wikitext-2 valid ({WIKITEXT.name})"
    rng = random.Random(0)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) + " ." for _ in range(20_000)
    ], "synthetic word salad (wikitext-2 not found)"


def write_corpus(path: Path, lines: list[str], target_bytes: int) -> int:
    """Repeat ``lines`` (shuffled per pass, so packing sees new neighbours) up to ``target_bytes``."""
    rng = random.Random(1)
    written = 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < target_bytes:
            order = lines[:]
            rng.shuffle(order)
            for line in order:
                fh.write(line + "\n")
                written += len(line.encode("utf-8")) + 1
                if written >= target_bytes:
                    break
    return written


def run_child(args: list[str], log: Path) -> tuple[int, float, int]:
    """Run ``python -m llmtune ARGS`` in its own process: (exit code, seconds, peak RSS in KiB)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "llmtune", *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's
    code = os.waitstatus_to_exitcode(status)
    return code, time.perf_counter() - started, int(usage.ru_maxrss)


def read_metrics(output_dir: Path) -> dict:
    return json.loads((output_dir / "metrics.json").read_text())


def update_benchmarks_md(section: str, body: str) -> Path:
    """Replace (or append) the ``<!-- section -->`` block of BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
    return path
