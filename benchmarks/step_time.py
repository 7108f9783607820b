# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Time the training step and the data loader of a bundle, and print a table with ratios against vanilla.

What it measures, on the exact objects a bundle config builds (network, loss, optimiser, data loader):

- ``loader``: patches per second out of ``train#dataloader`` (cached deterministic transforms, workers for the
  random crop and augmentation), after the cache is filled and one warm-up batch;
- ``step``: seconds per training iteration (forward, loss, backward, optimiser step) on a fixed batch, so data
  loading is excluded, median over ``--iters`` iterations after ``--warmup``; peak memory (CUDA allocator on
  GPU, the process's peak resident set size on CPU).

Each row is a variant (an override file under ``bundles/<name>/configs/variants/`` or the vanilla train.json);
later issues add their variants and the ``ratio`` column compares each one with vanilla measured in the same run.

Usage::

    python benchmarks/step_time.py                                  # phantoms, CPU-sized
    python benchmarks/step_time.py --dataset_dir data/deep_grey_matter --iters 20
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]


def _parser(bundle: str, variant: str | None, overrides: dict) -> ConfigParser:
    configs = [str(REPO / "bundles" / bundle / "configs" / "train.json")]
    if variant:
        configs.append(str(REPO / "bundles" / bundle / "configs" / "variants" / f"{variant}.json"))
    parser = ConfigParser()
    parser.read_config(configs)
    parser.update(overrides)
    return parser


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # kB on Linux


def time_loader(parser: ConfigParser, batches: int) -> float:
    """Patches per second from the training data loader (after warm-up)."""
    loader = parser.get_parsed_content("train#dataloader")
    it = iter(loader)
    next(it)
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += batch["image"].shape[0]
    return n / (time.perf_counter() - start)


def time_step(parser: ConfigParser, iters: int, warmup: int) -> tuple[float, float]:
    """Median seconds per training iteration on a fixed batch, and peak memory in MiB."""
    device = parser.get_parsed_content("device")
    trainer = parser.get_parsed_content("train#trainer")
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        trainer._iteration(trainer, batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times), _peak_memory_mb(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="asymmetric_segmentation")
    ap.add_argument("--variants", nargs="*", default=[], help="override files in configs/variants/ (vanilla first)")
    ap.add_argument("--dataset_dir", default=None, help="a prepared dataset; default: phantoms in a temp folder")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--loader_batches", type=int, default=20)
    ap.add_argument("--num_workers", type=int, default=2)
    args = ap.parse_args(argv)

    tmp = None
    dataset_dir = args.dataset_dir
    if dataset_dir is None:
        from monai_imbalance.data import make_phantom_dataset

        tmp = tempfile.TemporaryDirectory()
        dataset_dir = str(make_phantom_dataset(tmp.name, num_training=8, num_validation=2, shape=(96, 96, 96)))
    overrides = {"dataset_dir": dataset_dir, "bundle_root": tempfile.mkdtemp(), "num_workers": args.num_workers}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dataset {dataset_dir}")
    rows = []
    for variant in [None, *args.variants]:
        parser = _parser(args.bundle, variant, overrides)
        torch.manual_seed(0)
        patches_per_s = time_loader(parser, args.loader_batches)
        step_s, peak_mb = time_step(_parser(args.bundle, variant, overrides), args.iters, args.warmup)
        bs = parser["batch_size"] * parser["num_samples"]
        rows.append((variant or "vanilla", bs, str(parser["patch_size"]), step_s, patches_per_s, peak_mb))

    base = rows[0][3]
    print()
    print("| variant | patches/iter | patch | step (s) | ratio vs vanilla | loader (patches/s) | peak mem (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for name, bs, patch, step_s, pps, mem in rows:
        print(f"| {name} | {bs} | {patch} | {step_s:.3f} | {step_s / base:.2f} | {pps:.1f} | {mem:.0f} |")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
