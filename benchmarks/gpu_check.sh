#!/usr/bin/env bash
# The GPU checks of issue 12 as one prepared command, for a CUDA machine (DEVELOPERS.md says when
# and how):
#   1. benchmarks/bench_gpu.py --quick   tokens/s, MFU and peak memory, each option on/off, plain
#                                        Trainer baseline (about 5 minutes on one H100/H200)
#   2. benchmarks/check_accelerate_gpu.py  the shipped DDP/FSDP2/DeepSpeed configs, a few steps each
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default: $OUT, else ./gpu-results)
#
# llmtune runs from this tree (PYTHONPATH), so nothing needs installing where the machine's python
# already has torch, transformers, accelerate and datasets. An offline machine that lacks some
# packages takes them as wheels in ./.whl (benchmarks/gpu_wheels.sh downloads them where pip
# works; WHEELS=DIR for another folder): they are installed into a temporary folder that comes
# first on PYTHONPATH.
#
# Time: BENCH_BUDGET (default 270 s) for the benchmark's variants, CHECK_TIMEOUT (150 s) for the
# configs, CHECK_CONFIG_TIMEOUT (60 s) for each config; with the set-up, give the whole command
# 9-10 minutes. The benchmark writes its results after every variant, so a run cut short keeps
# what it measured.
# OUT_DIR gets six flat files: versions.txt, nvidia-smi.txt, bench_gpu.log, results.json,
# results.md, accelerate.log. Record the figures in BENCHMARKS.md from your checkout with
# `python benchmarks/bench_gpu.py --record OUT_DIR/results.md`.
set -uo pipefail
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
out=$(cd "$out" && pwd)  # absolute, before leaving the caller's folder
cd "$(dirname "$0")/.."
rm -f "$out/results.json" "$out/results.md"  # never leave an earlier run's figures to be recorded
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

wheels=${WHEELS:-.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
    site=$(mktemp -d /tmp/llmtune-site.XXXXXX)
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl \
        || { echo "gpu_check: installing $wheels/*.whl failed" >&2; exit 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not found" >"$out/nvidia-smi.txt"
"$py" - >"$out/versions.txt" 2>&1 <<'PY'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "transformers", "accelerate", "datasets", "pyarrow", "peft", "liger_kernel", "flash_attn", "deepspeed", "llmtune"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), getattr(module, "__file__", ""))
    except Exception as exc:  # noqa: BLE001 - a version report: say what is missing and go on
        print(name, "missing:", type(exc).__name__, str(exc)[:120])
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
cat "$out/versions.txt"

budget=${BENCH_BUDGET:-270}
work=$(mktemp -d /tmp/llmtune-gpu.XXXXXX)
# --budget stops starting variants in time; timeout (-k: then SIGKILL) is the backstop
timeout -k 20 "$((budget + 60))" "$py" benchmarks/bench_gpu.py --quick --no-write --budget "$budget" --out "$work" 2>&1 \
    | tee "$out/bench_gpu.log"
bench=${PIPESTATUS[0]}
cp "$work/results.json" "$work/results.md" "$out/" 2>/dev/null
check_limit=${CHECK_TIMEOUT:-150}
timeout -k 20 "$check_limit" "$py" benchmarks/check_accelerate_gpu.py --steps 5 --timeout "${CHECK_CONFIG_TIMEOUT:-60}" 2>&1 \
    | tee "$out/accelerate.log"
check=${PIPESTATUS[0]}
echo "gpu_check: bench_gpu exit $bench, check_accelerate_gpu exit $check; files in $out"
[ "$bench" -eq 0 ] && [ "$check" -eq 0 ]
