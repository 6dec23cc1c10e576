#!/usr/bin/env bash
# GPU evidence in one call of under 10 minutes (issue 20): fashion-mnist-vgg16 with LoRITa N=1,2,3 and three
# pruning baselines at the preset's decay budget (weight decay scaled to the shortened pre-training), zero-shot
# and fine-tuned accuracy, the latency sweep (batch 1..1024) in the deploy mode (bf16 + CUDA graphs) and in
# eager fp32, deployed shapes rounded to K=8 beside K=1, and N=3 vs N=1 training-step time (eager and
# compiled). Every stage runs under its own time limit and is logged in stages.jsonl; the report
# (scripts/gpu_report.py) is written from the outputs alone and shows a stage that ran out of time as not
# finished. Exits non-zero if any run or stage failed.
#
#   scripts/gpu-prepare.sh                        # here, with network: wheels + data into .whl/, .gpudata/
#   scripts/gpu-evidence.sh OUT_DIR [DEVICE]      # there: DEVICE defaults to cuda (cpu: a dry run)
#
# Environment (defaults sized for an H200): PRESET (fashion-mnist-vgg16), EPOCHS (5), FINETUNE (1), METHODS,
# TARGETS (flops:0.5,params:0.7), SEEDS (0,1), ROUND_TO (8) and its comparison run K1_SEEDS (0; empty skips
# it), LATENCY_MODES (deploy,eager-fp32), K1_LATENCY_MODES (deploy), LATENCY_SWEEP (1,16,64,256,1024),
# LATENCY_ROUNDS (20), THROUGHPUT_BATCH (256), WEIGHT_DECAY (default: the preset's decay budget kept),
# STEP_MODELS, COMPILE_MODELS (vgg16,vit), STEP_ROUNDS (15), STEP_BATCH (128), STEPS_PER_ROUND (5),
# STEP_OPTIONS, PRESET_ARGS (more `lorita-bench run` options); stage limits in seconds: STEP_TIMEOUT (50),
# RUN_TIMEOUT (270), K1_TIMEOUT (90), COMPILE_TIMEOUT (100). A GPU machine without network brings
# torch-pruning as a wheel in .whl/ and Fashion-MNIST's IDX files in .gpudata/ (git-ignored, made by
# scripts/gpu-prepare.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: scripts/gpu-evidence.sh OUT_DIR [DEVICE]}
DEVICE=${2:-cuda}
PRESET=${PRESET:-fashion-mnist-vgg16}
EPOCHS=${EPOCHS:-5}
FINETUNE=${FINETUNE:-1}
METHODS=${METHODS:-lorita-n1,lorita-n2,lorita-n3,l1-filter,group-l2,taylor}
TARGETS=${TARGETS:-flops:0.5,params:0.7}
SEEDS=${SEEDS:-0,1}
ROUND_TO=${ROUND_TO:-8}
K1_SEEDS=${K1_SEEDS-0}
LATENCY_MODES=${LATENCY_MODES:-deploy,eager-fp32}
K1_LATENCY_MODES=${K1_LATENCY_MODES:-deploy}
LATENCY_SWEEP=${LATENCY_SWEEP:-1,16,64,256,1024}
LATENCY_ROUNDS=${LATENCY_ROUNDS:-20}
THROUGHPUT_BATCH=${THROUGHPUT_BATCH:-256}
STEP_ROUNDS=${STEP_ROUNDS:-15}
STEP_BATCH=${STEP_BATCH:-128}
STEPS_PER_ROUND=${STEPS_PER_ROUND:-5}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
mkdir -p "$OUT_DIR"
: > "$OUT_DIR/stages.jsonl"
failed=0

stage() {  # NAME LIMIT_S COMMAND…: run COMMAND under a time limit and log how it ended in stages.jsonl
    local name=$1 limit=$2 t0=$SECONDS rc timed_out=false
    shift 2
    echo "== $(date +%T) $name (limit ${limit} s)"
    timeout "$limit" "$@"
    rc=$?
    [ $rc -eq 124 ] && timed_out=true
    printf '{"stage": "%s", "limit_s": %d, "seconds": %d, "rc": %d, "timed_out": %s}\n' \
        "$name" "$limit" $((SECONDS - t0)) "$rc" "$timed_out" >> "$OUT_DIR/stages.jsonl"
    [ $rc -eq 0 ] || failed=1
}

if ! "$PY" -c "import torch_pruning" 2>/dev/null; then
    echo "== installing carried wheels from .whl/"
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
    echo "== decompressing Fashion-MNIST from $src"
    mkdir -p "$raw"
    for f in "$src"/*-ubyte.gz; do gunzip -c "$f" > "$raw/$(basename "$f" .gz)" || exit 2; done
fi

"$PY" - "$OUT_DIR/machine.json" "$DEVICE" <<'PY' || exit 2
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
for key, dist in (("torchvision", "torchvision"), ("timm", "timm"), ("torch_pruning", "torch-pruning"),
                  ("onnxruntime", "onnxruntime")):
    try:
        info[key] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        info[key] = "not installed"
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(info)
PY

# The preset's decay budget (Σ lr·wd over pre-training) is kept at fewer epochs by scaling weight decay
# by the ratio of pre-training epochs, for every method alike (DESIGN: weight decay needs room).
WEIGHT_DECAY=${WEIGHT_DECAY-$("$PY" -c "
from bench.catalog.registry import PRESETS
b = PRESETS.get('$PRESET').budget
print(f'{b.weight_decay * (b.epochs - b.finetune_epochs) / ($EPOCHS - $FINETUNE):.3g}')" 2>/dev/null)}

stage "step time, N=3 vs N=1, eager" "${STEP_TIMEOUT:-50}" "$PY" -m bench.execution.steptime --device "$DEVICE" \
    --models "${STEP_MODELS:-vgg16,vit}" --n 3 --batch-size "$STEP_BATCH" --rounds "$STEP_ROUNDS" \
    --steps-per-round "$STEPS_PER_ROUND" --out "$OUT_DIR/steps.json" ${STEP_OPTIONS:+--model-options "$STEP_OPTIONS"}

run_preset() {  # NAME LIMIT_S SEEDS K MODES
    stage "$1" "$2" "$PY" -m bench.cli run --preset "$PRESET" --device "$DEVICE" --data-dir "$DATA" \
        --epochs "$EPOCHS" --finetune-epochs "$FINETUNE" ${WEIGHT_DECAY:+--weight-decay "$WEIGHT_DECAY"} \
        --methods "$METHODS" --targets "$TARGETS" --seeds "$3" --round-to "$4" --latency-modes "$5" \
        --latency-sweep "$LATENCY_SWEEP" --latency-rounds "$LATENCY_ROUNDS" --throughput-batch "$THROUGHPUT_BATCH" \
        --out "$OUT_DIR/$PRESET-k$4" --cache-dir "$OUT_DIR/.cache" --no-progress ${PRESET_ARGS:-}
}
run_preset "$PRESET, K=$ROUND_TO, seeds $SEEDS" "${RUN_TIMEOUT:-270}" "$SEEDS" "$ROUND_TO" "$LATENCY_MODES"
if [ -n "$K1_SEEDS" ] && [ "$ROUND_TO" != 1 ]; then  # the same trained models (cached), shapes not rounded
    run_preset "$PRESET, K=1, seeds $K1_SEEDS" "${K1_TIMEOUT:-90}" "$K1_SEEDS" 1 "$K1_LATENCY_MODES"
fi

COMPILE_MODELS=${COMPILE_MODELS-vgg16,vit}
if [ -n "$COMPILE_MODELS" ]; then
    stage "step time, N=3 vs N=1, torch.compile" "${COMPILE_TIMEOUT:-100}" "$PY" -m bench.execution.steptime \
        --device "$DEVICE" --models "$COMPILE_MODELS" --n 3 --batch-size "$STEP_BATCH" --rounds "$STEP_ROUNDS" \
        --steps-per-round "$STEPS_PER_ROUND" --compile yes --out "$OUT_DIR/steps.json" \
        ${STEP_OPTIONS:+--model-options "$STEP_OPTIONS"}
fi

echo "== $(date +%T) report"
"$PY" scripts/gpu_report.py "$OUT_DIR" || failed=1
echo "== $(date +%T) done (failed=$failed)"
exit $failed
