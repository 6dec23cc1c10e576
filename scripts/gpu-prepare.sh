#!/usr/bin/env bash
# What scripts/gpu-evidence.sh needs on a GPU machine without network, made here (with the
# package index and Debian's dataset-fashion-mnist): the torch-pruning wheel for the GPU
# machine's Python (3.12 by default) in .whl/, Fashion-MNIST's gzipped IDX files in .gpudata/.
# Both folders are git-ignored and travel with the working tree (about 30 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
TP=$(python3 -c "from importlib.metadata import version; print(version('torch-pruning'))" 2>/dev/null || echo 1.6.1)
mkdir -p .whl .gpudata
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux2014_x86_64 -d .whl "torch-pruning==$TP"
src=${FASHION_MNIST_GZ:-/usr/share/datasets/fashion-mnist}
[ -f "$src/train-images-idx3-ubyte.gz" ] || { echo "no Fashion-MNIST in $src: apt-get install dataset-fashion-mnist, or set FASHION_MNIST_GZ"; exit 2; }
cp "$src"/*-ubyte.gz .gpudata/
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
grep -qx '/.gpudata/' .git/info/exclude 2>/dev/null || echo /.gpudata/ >> .git/info/exclude
du -sh .whl .gpudata
