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
``OMP_NUM_THREADS`` = cores / ``--jobs``). The training log gives the seconds of each epoch (an epoch that ends with
a validation includes it); the rest of the training run is its start-up (imports, caching the volumes). The full
cell is start-up + the mean epoch x the preset's epochs + evaluation: the measured cell when the preset's epochs ran,
a projection with ``--epochs`` below them (give a multiple of the preset's ``val_interval`` so that validations
weigh as in the full run and the run writes ``model.pt``).

Usage::

    python benchmarks/preset_cell_time.py --preset cpu_fast --dataset_dir data/brain_lesion \
        --override "--classes ['lesion']"
    python benchmarks/preset_cell_time.py --families loss-only CoLab --epochs 2   # a quick projection
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


def epoch_seconds(train_log: Path) -> list[float]:
    """The seconds of each training epoch in a cell's ``train.log`` (the trainer's lines, not the validator's)."""
    seconds: dict[int, float] = {}
    for line in train_log.read_text(errors="replace").replace("\r", "\n").splitlines():
        m = _EPOCH.search(line)
        if m and "Trainer" in line:  # the trainer's engine, not the validation's SupervisedEvaluator
            h, mi, s = int(m.group(2)), int(m.group(3)), float(m.group(4))
            seconds[int(m.group(1))] = h * 3600 + mi * 60 + s
    return [seconds[k] for k in sorted(seconds)]


def preset_epochs(bundle: Path, preset: str) -> int:
    """``epochs`` of the preset file, else of ``train.json``."""
    for f in (bundle / "configs" / "presets" / f"{preset}.json", bundle / "configs" / "train.json"):
        value = json.loads(f.read_text()).get("epochs")
        if isinstance(value, int):
            return value
    raise ValueError(f"no integer 'epochs' in the preset {preset!r} or train.json of '{bundle}'.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu_fast")
    parser.add_argument("--dataset_dir", default="data/brain_lesion")
    parser.add_argument("--fraction", type=float, default=1.0, help="training fraction of the cells")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--epochs", type=int, default=None, help="shorter runs; the full cell is then projected")
    parser.add_argument("--target", type=float, default=120.0, help="target seconds per cell")
    parser.add_argument("--jobs", type=int, default=1, help="cells that will share the machine (sets the threads)")
    parser.add_argument("--override", default="", help="extra overrides for both runs, one shell-quoted string")
    parser.add_argument("--out", default=None, help="cell folders (default: a temporary folder)")
    args = parser.parse_args(argv)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="preset_cell_time_"))
    overrides = ["--dataset_dir", args.dataset_dir, *shlex.split(args.override)]
    if args.epochs is not None:
        overrides += ["--epochs", str(args.epochs)]
    rows = []
    for family in args.families:
        name, variant = FAMILIES[family]
        bundle = ROOT / "bundles" / name
        result = run_cell(
            bundle, variant, args.fraction, out / name, seed=0, overrides=overrides, preset=args.preset,
            threads=threads,
        )  # fmt: skip
        epochs = epoch_seconds(cell_dir(out / name, variant, args.fraction, 0) / "train.log")
        train, evaluate = float(result["train_seconds"]), float(result["eval_seconds"])
        full_epochs = preset_epochs(bundle, args.preset)
        startup = train - sum(epochs)
        projected = startup + (sum(epochs) / max(1, len(epochs))) * full_epochs + evaluate
        rows.append((family, variant, len(epochs), sum(epochs) / max(1, len(epochs)), startup, evaluate, projected))
        print(f"{family}: {train:.0f} s training ({len(epochs)} epochs), {evaluate:.0f} s evaluation", flush=True)

    base = rows[0][6] if rows and rows[0][0] == "loss-only" else None
    settings = f"preset {args.preset!r}, fraction {args.fraction:g}, {threads} thread(s) per cell"
    print(f"\n{settings}, target {args.target:g} s\n")
    print(
        "| family | variant | epochs run | s / epoch | start-up s | evaluation s "
        "| full cell s | vs target | vs loss-only |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for family, variant, n, per_epoch, startup, evaluate, projected in rows:
        ratio = f"{projected / base:.2f}x" if base else "-"
        print(
            f"| {family} | `{variant}` | {n} | {per_epoch:.1f} | {startup:.0f} | {evaluate:.0f} | {projected:.0f} "
            f"| {projected / args.target:.2f}x | {ratio} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
