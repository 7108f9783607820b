#!/usr/bin/env bash
# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
#
# The GPU share of the lesion-benchmark tables, as one script for a lent CUDA machine (about 10 minutes of one GPU):
#   1. signature: the 3D vanilla signature with the bundles' GPU-size defaults (DynUNet 16-32-64-128 on 48^3 patches
#      at 2 mm, AMP; no preset) at 5 % and 100 % training, seeds 0 1 2, 30 x 100 = 3000 updates per cell, the six
#      cells side by side (--jobs 6) -> results/gpu_vanilla_signature_brain_lesion;
#   2. table2: the most expensive Table II cells under the CPU preset (cpu_fast; vanilla again, for tests on the same
#      device): adversarial, mixup and combination, symmetric and asymmetric, at 5 %, seeds 0 1 2 (--jobs 9)
#      -> results/gpu_table2_asymmetric_brain_lesion, beside the CPU table (another device, another folder);
#   3. augmentation: no augmentation and the joint learned one on the organ + lesion view (3 classes) at 50 %, seeds 0 1 2, cpu_fast
#      (--jobs 6) -> results/gpu_table_augmentation_brain_lesion.
# Each stage runs under what is left of BUDGET_S (default 540 s) and is killed when it is spent; cells finish one by
# one into their results folder (metrics only, with command, commit and machine), so a stage cut short keeps its
# finished cells and a later run resumes the rest. The data are prepared first unless data/brain_lesion exists
# (about 2 minutes). With $OUT set (the device tool's output folder), the results folders and logs are copied there.
#
# Usage: bash tools/gpu_tables.sh [STAGE ...]          (default: signature table2 augmentation)
#        DRY_RUN=1 bash tools/gpu_tables.sh signature   (CPU check of the commands: 2 iterations, seed 0, evaluated
#                                                         on the validation split, scratch results under
#                                                         runs/gpu_dry_run; no GPU needed)
set -u
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET_S=${BUDGET_S:-540}
DRY_RUN=${DRY_RUN:-0}
PY=${PYTHON:-python3}
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(signature table2 augmentation)
LOGS=runs/gpu_tables
[ "$DRY_RUN" = 1 ] && LOGS=runs/gpu_dry_run/logs
mkdir -p "$LOGS"

if [ "$DRY_RUN" = 1 ]; then
    SEEDS=(0); JOBS=2; RESULTS=runs/gpu_dry_run/results; WORK=runs/gpu_dry_run; SPLIT=(--split validation)
    TINY=(--epochs 1 --iterations_per_epoch 2 --val_interval 1); SIGNATURE_UPDATES=()
else
    "$PY" - <<'PY' || exit 1
import torch
if not torch.cuda.is_available():
    raise SystemExit("error: no CUDA device; this script is for a GPU machine (DRY_RUN=1 checks it on CPU)")
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
    SEEDS=(0 1 2); JOBS=0; RESULTS=results; WORK=runs; SPLIT=()
    TINY=(); SIGNATURE_UPDATES=(--iterations_per_epoch 100)  # 30 epochs x 100: equal updates at every fraction
fi

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

stage() {  # stage NAME JOBS RESULTS_NAME ARGS...: one experiments table under the time left
    local name=$1 jobs=$2 folder=$3; shift 3
    local t; t=$(left)
    if [ "$t" -lt 60 ]; then echo "stage $name: skipped, $t s of the budget left"; return; fi
    [ "$JOBS" -gt 0 ] && jobs=$JOBS
    echo "stage $name: up to $t s, --jobs $jobs -> $RESULTS/$folder"
    timeout --kill-after=10 "$t" "$PY" -m monai_imbalance.experiments table --seeds "${SEEDS[@]}" --jobs "$jobs" \
        "${SPLIT[@]}" --out "$WORK/gpu_$name" --results "$RESULTS/$folder" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    echo "stage $name: exit $rc after $(( $(date +%s) - START )) s; $(ls "$RESULTS/$folder/cells" 2>/dev/null | wc -l) cells" \
         "in $RESULTS/$folder, $(grep -c FAILED "$LOGS/$name.log") failed"
    tail -n 3 "$LOGS/$name.log"
}

if [ ! -f data/brain_lesion/dataset.json ]; then
    echo "preparing data/brain_lesion"
    "$PY" -m monai_imbalance.data prepare --task brain_lesion > "$LOGS/prepare.log" 2>&1 || { tail "$LOGS/prepare.log"; exit 1; }
fi
LESION=(-- --dataset_dir data/brain_lesion --classes "['lesion']")
for s in "${STAGES[@]}"; do
    case $s in
        signature) stage signature 6 gpu_vanilla_signature_brain_lesion --bundle bundles/asymmetric_segmentation \
                       --variants vanilla --fractions 0.05 1.0 "${LESION[@]}" "${SIGNATURE_UPDATES[@]}" "${TINY[@]}" ;;
        table2) stage table2 9 gpu_table2_asymmetric_brain_lesion --bundle bundles/asymmetric_segmentation \
                    --variants vanilla adversarial asymmetric_adversarial mixup asymmetric_mixup symmetric_combination \
                    asymmetric_combination --fractions 0.05 --preset cpu_fast "${LESION[@]}" "${TINY[@]}" ;;
        augmentation) stage augmentation 6 gpu_table_augmentation_brain_lesion \
                          --bundle bundles/learned_augmentation_segmentation --variants none joint --fractions 0.5 \
                          --preset cpu_fast -- --dataset_dir data/brain_lesion "${TINY[@]}" ;;
        *) echo "unknown stage '$s' (signature, table2, augmentation)"; exit 2 ;;
    esac
done
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp -r "$LOGS" "$OUT/" 2>/dev/null
    for d in "$RESULTS"/gpu_*; do [ -d "$d" ] && cp -r "$d" "$OUT/"; done
fi
echo "total $(( $(date +%s) - START )) s"
