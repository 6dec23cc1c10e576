#!/usr/bin/env bash
# GPU evidence in one call of under 10 minutes: the three Fashion-MNIST presets at a reduced
# budget, N=3 vs N=1 training-step time (bf16 autocast + channels-last, with and without
# torch.compile), CUDA-event latency of dense and deployed models at batch 1 and 256, peak GPU
# memory. Writes a report folder; exits non-zero if any run failed.
#
#   scripts/gpu-prepare.sh                        # here, with network: wheels + data into .whl/, .gpudata/
#   scripts/gpu-evidence.sh OUT_DIR [DEVICE]      # there: DEVICE defaults to cuda (cpu: a dry run)
#
# Environment: EPOCHS (default 3), FINETUNE (1), METHODS, TARGETS, PRESETS, STEP_MODELS, COMPILE_MODELS,
# STEP_ROUNDS (15), STEP_BATCH (128), STEP_OPTIONS, PRESET_ARGS (extra `lorita-bench run` options) size the run;
# a GPU machine without network brings torch-pruning as a wheel in .whl/ and Fashion-MNIST's IDX
# files in .gpudata/ (both git-ignored, made by scripts/gpu-prepare.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: scripts/gpu-evidence.sh OUT_DIR [DEVICE]}
DEVICE=${2:-cuda}
EPOCHS=${EPOCHS:-3}
FINETUNE=${FINETUNE:-1}
METHODS=${METHODS:-lorita-n1,lorita-n2,lorita-n3,l1-filter,group-l2,taylor}
TARGETS=${TARGETS:-flops:0.5,params:0.7}
STEP_ROUNDS=${STEP_ROUNDS:-15}
STEP_BATCH=${STEP_BATCH:-128}
STEPS_PER_ROUND=${STEPS_PER_ROUND:-5}
PRESETS=${PRESETS:-fashion-mnist-vgg16 fashion-mnist-resnet20 fashion-mnist-vit}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
mkdir -p "$OUT_DIR"
failed=0
stage() { echo "== $(date +%T) $*"; }

if ! "$PY" -c "import torch_pruning" 2>/dev/null; then
    stage "installing carried wheels from .whl/"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lorita-site \
        .whl/*.whl || { echo "torch-pruning is missing and .whl/ has no wheel for it (scripts/gpu-prepare.sh)"; exit 2; }
    export PYTHONPATH=/tmp/lorita-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

DATA=${DATA_DIR:-$OUT_DIR/.data}
raw=$DATA/FashionMNIST/raw
if [ ! -f "$raw/train-images-idx3-ubyte" ]; then
    src=.gpudata
    [ -f $src/train-images-idx3-ubyte.gz ] || src=/usr/share/datasets/fashion-mnist
    stage "decompressing Fashion-MNIST from $src"
    mkdir -p "$raw"
    for f in "$src"/*-ubyte.gz; do gunzip -c "$f" > "$raw/$(basename "$f" .gz)" || exit 2; done
fi

stage "machine"
"$PY" - "$OUT_DIR/machine.json" "$DEVICE" <<'PY'
import json, platform, subprocess, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "device": sys.argv[2], "cpu": platform.processor() or platform.machine()}
if torch.cuda.is_available() and sys.argv[2].startswith("cuda"):
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count)
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=20).stdout.strip()
    except OSError:
        info["driver"] = None
from importlib import metadata
for key, dist in (("torchvision", "torchvision"), ("timm", "timm"), ("torch_pruning", "torch-pruning")):
    try:
        info[key] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        info[key] = "not installed"
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(info)
PY
[ $? -eq 0 ] || exit 2

stage "training-step time, N=3 vs N=1, eager"
timeout "${STEP_TIMEOUT:-60}" "$PY" -m bench.execution.steptime --device "$DEVICE" --models "${STEP_MODELS:-vgg16,resnet20,vit}" --n 3 --batch-size "$STEP_BATCH" \
    --rounds "$STEP_ROUNDS" --steps-per-round "$STEPS_PER_ROUND" --out "$OUT_DIR/steps.json" ${STEP_OPTIONS:+--model-options "$STEP_OPTIONS"} || failed=1

for preset in $PRESETS; do
    stage "preset $preset: epochs $EPOCHS (fine-tune $FINETUNE), $METHODS at $TARGETS"
    timeout "${PRESET_TIMEOUT:-120}" "$PY" -m bench.cli run --preset "$preset" --device "$DEVICE" --data-dir "$DATA" \
        --epochs "$EPOCHS" --finetune-epochs "$FINETUNE" --methods "$METHODS" --targets "$TARGETS" \
        --throughput-batch 256 --out "$OUT_DIR/$preset" --cache-dir "$OUT_DIR/.cache" --no-progress \
        ${PRESET_ARGS:-} || failed=1
done

COMPILE_MODELS=${COMPILE_MODELS-vgg16,vit}
if [ -n "$COMPILE_MODELS" ]; then
    stage "training-step time, N=3 vs N=1, torch.compile"
    timeout "${COMPILE_TIMEOUT:-120}" "$PY" -m bench.execution.steptime --device "$DEVICE" --models "$COMPILE_MODELS" --n 3 \
        --batch-size "$STEP_BATCH" --rounds "$STEP_ROUNDS" --steps-per-round "$STEPS_PER_ROUND" --compile yes --out "$OUT_DIR/steps.json" \
        ${STEP_OPTIONS:+--model-options "$STEP_OPTIONS"} || failed=1
fi

stage "report"
"$PY" scripts/gpu_report.py "$OUT_DIR" --epochs "$EPOCHS" --finetune "$FINETUNE" || failed=1
stage "done (failed=$failed)"
exit $failed
