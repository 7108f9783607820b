#!/usr/bin/env bash
# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
#
# Step time of every bundle on a CUDA GPU with AMP (the bundles turn AMP on when CUDA is available), against each
# bundle's vanilla step in the same run: a few iterations per variant on a fixed batch of the CPU-sized config
# (4 patches of 48^3, DynUNet 16-32-64-128), through benchmarks/step_time.py (one fresh process per variant). The
# mean over 20 iterations (a multiple of the meta steps' interval 5) is the amortised cost of periodic meta steps.
#
# Usage: bash benchmarks/gpu_step_times.sh [extra step_time.py arguments, e.g. --iters 50]
# Prints the GPU's name, then one Markdown table per bundle. A bundle or variant that is not in this checkout is
# skipped with a line saying so.
set -u
cd "$(dirname "$0")/.."
python3 - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device: this script measures the bundles on a GPU (benchmarks/step_time.py runs on CPU)")
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}, AMP on")
PY
[ $? -eq 0 ] || exit 1

run() {  # run BUNDLE [VARIANT...]: one table for the bundle, vanilla first
    local bundle=$1; shift
    if [ ! -f "bundles/$bundle/configs/train.json" ]; then
        echo "bundle $bundle not found: skipped"; return
    fi
    local present=()
    for v in "$@"; do
        if [ -f "bundles/$bundle/configs/variants/$v.json" ]; then present+=("$v"); else echo "$bundle: variant $v not found: skipped"; fi
    done
    echo; echo "## $bundle"
    python3 benchmarks/step_time.py --bundle "$bundle" --variants "${present[@]}" --iters 20 --warmup 3 \
        --statistic mean --loader_batches 10 "${EXTRA[@]}" || echo "$bundle: step_time.py failed"
}

EXTRA=("$@")
run asymmetric_segmentation large_margin asymmetric_focal asymmetric_adversarial asymmetric_mixup asymmetric_combination
run context_label_segmentation colab_t2 colab_t2_fast
run performance_estimation
run learned_augmentation_segmentation learned_class_specific joint
