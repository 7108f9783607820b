# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Time one experiment-table cell per method family under a preset, against a target (default 2 minutes).

A cell is what ``python -m monai_imbalance.experiments table`` runs for one (variant, fraction, seed): a training
run and an evaluation run, each a fresh ``python -m monai.bundle run`` process. The families and the variant that
stands for each:

- ``loss-only``: ``asymmetric_segmentation`` ``vanilla`` (any loss variant costs the same step);
- ``adversarial/mixup``: ``asymmetric_segmentation`` ``asymmetric_combination`` (both extra steps);
- ``CoLab``: ``context_label_segmentation`` ``colab_t2``;
- ``learned augmentation``: ``learned_augmentation_segmentation`` ``joint`` (training- and test-time policies).

Each cell is timed as the table command times it (wall clock of the training and of the evaluation process, with
``OMP_NUM_THREADS`` = cores / ``--jobs``). The training log gives the seconds of each epoch and of each validation
run; the rest of the training run is its start-up (imports, caching the volumes). The full cell is start-up + the
seconds per iteration x the preset's iterations + the seconds per validation x the preset's validations +
evaluation: the measured cell without ``--iterations``, a projection from a short run with it (one epoch of that
many iterations and one validation; the meta-learners' per-iteration cost is included when they step every
iteration, CoLab's every ``meta_interval``).

Usage::

    python benchmarks/preset_cell_time.py --preset cpu_fast --dataset_dir data/brain_lesion \
        --override "--classes ['lesion']"
    python benchmarks/preset_cell_time.py --iterations 100 --jobs 2   # projections from 100 iterations per family
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_imbalance.experiments.table import cell_dir, run_cell  # noqa: E402

FAMILIES = {
    "loss-only": ("asymmetric_segmentation", "vanilla"),
    "adversarial/mixup": ("asymmetric_segmentation", "asymmetric_combination"),
    "CoLab": ("context_label_segmentation", "colab_t2"),
    "learned augmentation": ("learned_augmentation_segmentation", "joint"),
}
_EPOCH = re.compile(r"Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")


def logged_seconds(train_log: Path) -> tuple[list[float], list[float]]:
    """The seconds of each training epoch (which include a validation run at its end) and of each validation run,
    from a cell's ``train.log``."""
    epochs: dict[int, float] = {}
    validations: list[float] = []
    for line in train_log.read_text(errors="replace").replace("\r", "\n").splitlines():
        m = _EPOCH.search(line)
        if m:
            seconds = int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))
            if "Evaluator" in line:
                validations.append(seconds)
            elif "Trainer" in line:
                epochs[int(m.group(1))] = seconds
    return [epochs[k] for k in sorted(epochs)], validations


def schedule(bundle: Path, preset: str) -> tuple[int, int, int]:
    """``(epochs, iterations_per_epoch, val_interval)`` of train.json with the preset on top."""
    settings: dict = {}
    for f in (bundle / "configs" / "train.json", bundle / "configs" / "presets" / f"{preset}.json"):
        settings.update({k: v for k, v in json.loads(f.read_text()).items() if isinstance(v, int)})
    try:
        return settings["epochs"], settings["iterations_per_epoch"], settings["val_interval"]
    except KeyError as e:
        raise ValueError(f"train.json + preset {preset!r} of '{bundle}' set no integer {e}.") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu_fast")
    parser.add_argument("--dataset_dir", default="data/brain_lesion")
    parser.add_argument("--fraction", type=float, default=1.0, help="training fraction of the cells")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument(
        "--iterations", type=int, default=None, help="a short run of this many iterations; the full cell is projected"
    )
    parser.add_argument("--target", type=float, default=120.0, help="target seconds per cell")
    parser.add_argument("--jobs", type=int, default=1, help="cells that will share the machine (sets the threads)")
    parser.add_argument("--override", default="", help="extra overrides for both runs, one shell-quoted string")
    parser.add_argument("--out", default=None, help="cell folders (default: a temporary folder)")
    args = parser.parse_args(argv)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="preset_cell_time_"))
    overrides = ["--dataset_dir", args.dataset_dir, *shlex.split(args.override)]
    if args.iterations is not None:  # one epoch of that many iterations, validated once at its end
        overrides += ["--epochs", "1", "--iterations_per_epoch", str(args.iterations), "--val_interval", "1"]
    rows = []
    for family in args.families:
        name, variant = FAMILIES[family]
        bundle = ROOT / "bundles" / name
        result = run_cell(
            bundle, variant, args.fraction, out / name, seed=0, overrides=overrides, preset=args.preset,
            threads=threads,
        )  # fmt: skip
        epochs, validations = logged_seconds(cell_dir(out / name, variant, args.fraction, 0) / "train.log")
        train, evaluate = float(result["train_seconds"]), float(result["eval_seconds"])
        n_epochs, per_epoch, interval = schedule(bundle, args.preset)
        run_iterations = args.iterations if args.iterations is not None else n_epochs * per_epoch
        per_iteration = (sum(epochs) - sum(validations)) / run_iterations
        per_validation = sum(validations) / max(1, len(validations))
        startup = train - sum(epochs)
        n_validations = n_epochs // interval + (n_epochs % interval != 0)
        full = startup + per_iteration * n_epochs * per_epoch + per_validation * n_validations + evaluate
        rows.append((family, variant, run_iterations, per_iteration, per_validation, startup, evaluate, full))
        print(
            f"{family}: {train:.0f} s training ({run_iterations} iterations), {evaluate:.0f} s evaluation", flush=True
        )

    base = rows[0][7] if rows and rows[0][0] == "loss-only" else None
    settings = f"preset {args.preset!r}, fraction {args.fraction:g}, {threads} thread(s) per cell"
    kind = "projected from the short runs" if args.iterations is not None else "measured"
    print(f"\n{settings}, target {args.target:g} s; full cell {kind}\n")
    print(
        "| family | variant | iterations run | s / iteration | s / validation | start-up s | evaluation s "
        "| full cell s | vs target | vs loss-only |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for family, variant, n, per_iteration, per_validation, startup, evaluate, full in rows:
        ratio = f"{full / base:.2f}x" if base else "-"
        print(
            f"| {family} | `{variant}` | {n} | {per_iteration:.3f} | {per_validation:.1f} | {startup:.0f} "
            f"| {evaluate:.0f} | {full:.0f} | {full / args.target:.2f}x | {ratio} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
