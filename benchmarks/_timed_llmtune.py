"""``python benchmarks/_timed_llmtune.py ARGS`` = ``llmtune ARGS``, plus the wall and CPU time of
``Trainer.train`` written as JSON to ``$LLMTUNE_BENCH_TIMES``.

CPU time (``time.process_time``) of a one-thread run measures the compute a configuration needs
even when other jobs share the cores, where wall time mostly measures the other jobs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import transformers


def _timed(train):
    def wrapper(self, *args, **kwargs):
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return train(self, *args, **kwargs)
        finally:
            out = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}
            Path(os.environ["LLMTUNE_BENCH_TIMES"]).write_text(json.dumps(out))

    return wrapper


transformers.Trainer.train = _timed(transformers.Trainer.train)

if __name__ == "__main__":
    from llmtune.cli import run

    sys.argv = ["llmtune", *sys.argv[1:]]
    sys.exit(run())
