"""Run every CPU benchmark in turn (what `make bench` does); each rewrites its own BENCHMARKS.md section.

bench_gpu.py and check_accelerate_gpu.py need a CUDA GPU: benchmarks/gpu_check.sh runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "bench_sentiment.py",
    "bench_lora.py",
    "bench_streaming.py",
    "bench_pretrain.py",
    "bench_estimate.py",
    "bench_eval_memory.py",
    "bench_dpo.py",
    "bench_inference.py",
    "bench_sft_samsum.py",
    "bench_cache.py",
    "bench_packing.py",
    "bench_asr.py",
    "bench_scaleout.py",
    "bench_memory_scale.py",
    "bench_lm_eval.py",
    "bench_serve.py",
    "bench_grpo.py",
    "bench_ui.py",
]


def main() -> int:
    for name in SCRIPTS:
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / name)])
        if code != 0:
            print(f"{name} failed with exit code {code}", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
