#!/usr/bin/env bash
# Wheels, into ./.whl (git-ignored), for an offline CUDA machine whose python has torch,
# transformers and accelerate but not the rest of what the GPU checks import
# (benchmarks/gpu_check.sh installs them there). Run it where pip works.
#
#   bash benchmarks/gpu_wheels.sh [--python 3.12] [PACKAGE==VERSION ...]
#
# Default packages: datasets and the three it needs that CUDA images often lack or hold in an
# older version (dill, multiprocess, pyarrow), and liger-kernel (pure Python over Triton), at the
# versions this repo's tests ran with. --no-deps: name any other missing package yourself.
set -euo pipefail
cd "$(dirname "$0")/.."
pyver=3.12
if [ "${1:-}" = "--python" ]; then
    [ $# -ge 2 ] || { echo "gpu_wheels: --python needs a version, e.g. --python 3.12" >&2; exit 2; }
    pyver=$2
    shift 2
fi
if [ $# -gt 0 ]; then
    packages=("$@")
else
    packages=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pyarrow==26.0.1 liger-kernel==0.8.5)
fi
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${platforms[@]}" -d .whl "${packages[@]}"
ls -l .whl
du -sh .whl
