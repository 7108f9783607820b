# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Cost of the ``LogitDistributionHandler`` on a bundle's training epoch: with vs without, same phantoms, same seed.

The bundle's ``train.json`` is run through ``ConfigWorkflow`` with ``logit_plots`` false and true, alternating
(off, on, on, off, ...) so a changing background load hits both alike. Measured per run:

- ``epoch s``: ignite's epoch time (the iterations and data loading, including the handler's sampling at every
  ``FORWARD_COMPLETED``; validation is off: ``val_interval`` beyond the run, so only the training epoch counts);
- ``report s``: the handler's end-of-epoch report (PNG per class, ``.npz``, JSON, TensorBoard), paid once every
  ``interval`` (= ``val_interval``) epochs.

The handler samples only in the epochs that end in a report (every ``val_interval`` epochs), so the measured
epoch (a report epoch) is its worst case; other epochs cost nothing. The issue's target is a ratio <= 1.05.

Usage::

    python benchmarks/logit_handler_cost.py                        # tiny (16^3) and default (48^3) patches
    python benchmarks/logit_handler_cost.py --sizes default --repeats 3 --iterations 4
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow

from monai_imbalance.data import make_phantom_dataset
from monai_imbalance.handlers.logit_distribution import LogitDistributionHandler

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "asymmetric_segmentation" / "configs"
SIZES = {
    "tiny": {"patch_size": [16, 16, 16], "filters": [8, 16, 32]},
    "default": {},  # the bundle's 48^3 patches and 16-32-64-128 DynUNet
}


def run_once(dataset: Path, root: Path, size: str, on: bool, iterations: int, seed: int) -> tuple[float, float]:
    """One training epoch of ``iterations`` iterations; returns (epoch seconds, report seconds)."""
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        workflow_type="train",
        dataset_dir=str(dataset),
        bundle_root=str(root),
        epochs=1,
        val_interval=1000,
        iterations_per_epoch=iterations,
        num_workers=0,
        seed=seed,
        logit_plots=on,
        **SIZES[size],
    )
    wf.initialize()
    trainer = wf.trainer
    report = 0.0
    handlers = [h for h in wf.parser.get_parsed_content("train#handlers") if isinstance(h, LogitDistributionHandler)]
    assert len(handlers) == int(on)
    for handler in handlers:  # time the end-of-epoch report (the handler samples in epoch 1 = the last epoch)
        original = handler.report

        def timed(*args, _original=original, **kwargs):
            nonlocal report
            t = time.perf_counter()
            out = _original(*args, **kwargs)
            report += time.perf_counter() - t
            return out

        handler.report = timed
    wf.run()
    epoch = float(trainer.state.times["EPOCH_COMPLETED"])
    wf.finalize()
    return epoch, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "default"], choices=sorted(SIZES))
    parser.add_argument("--repeats", type=int, default=2, help="ABBA pairs per size (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=6, help="iterations per epoch (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_phantom_dataset(Path(tmp) / "phantom", num_training=4, num_validation=1, shape=(64, 64, 64))
        for size in args.sizes:
            times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            run_once(dataset, Path(tmp) / "warmup", size, True, 2, args.seed)  # warm-up (allocator, caches)
            for r in range(args.repeats):
                for on in (False, True, True, False) if r % 2 == 0 else (True, False, False, True):
                    times[on].append(
                        run_once(dataset, Path(tmp) / f"{size}_{r}_{on}", size, on, args.iterations, args.seed)
                    )
            off = statistics.median(t for t, _ in times[False])
            with_handler = statistics.median(t for t, _ in times[True])
            report = statistics.median(r for _, r in times[True])
            rows.append((size, off, with_handler, with_handler / off, report))
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {args.iterations} iterations per epoch, "
        f"median of {2 * args.repeats} runs each\n"
    )
    print("| patch | epoch s (off) | epoch s (on) | ratio on/off | report s (once per interval) |")
    print("|---|---|---|---|---|")
    for size, off, on, ratio, report in rows:
        print(f"| {size} | {off:.2f} | {on:.2f} | {ratio:.3f}x | {report:.2f} |")


if __name__ == "__main__":
    main()
