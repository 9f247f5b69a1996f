"""Benchmark scripts. Each writes its own section of BENCHMARKS.md via :func:`write_section`."""

from __future__ import annotations

import re
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nFigures measured by the scripts in `benchmarks/`; rerun them with `make bench`.\n"


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between `<!-- bench:name -->` markers in BENCHMARKS.md."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    text = BENCHMARKS_MD.read_text(encoding="utf-8") if BENCHMARKS_MD.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    BENCHMARKS_MD.write_text(text, encoding="utf-8")
