# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Time the training step and the data loader of a bundle, and print a table with ratios against vanilla.

What it measures, on the exact objects a bundle config builds (network, loss, optimiser, data loader):

- ``loader``: patches per second out of ``train#dataloader`` (cached deterministic transforms, workers for the
  random crop and augmentation), after the cache is filled and one warm-up batch;
- ``step``: seconds per training iteration (forward, loss, backward, optimiser step; for the regularised
  trainer all its extra steps) on a fixed batch, so data loading is excluded, median over ``--iters`` iterations
  after ``--warmup``; peak memory (CUDA allocator on GPU, the process's peak resident set size on CPU).

Each variant is measured in a fresh process, so its peak memory is its own.

Each row is a variant (an override file under ``bundles/<name>/configs/variants/`` or the vanilla train.json);
later issues add their variants and the ``ratio`` column compares each one with vanilla measured in the same run.

Usage::

    python benchmarks/step_time.py                                  # phantoms, CPU-sized
    python benchmarks/step_time.py --dataset_dir data/deep_grey_matter --iters 20
    python benchmarks/step_time.py --variants $(ls bundles/asymmetric_segmentation/configs/variants | sed 's/.json//')
    python benchmarks/step_time.py --bundle context_label_segmentation --variants colab_t2 --statistic mean --iters 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]


def _parser(bundle: str, variant: str | None, overrides: dict) -> ConfigParser:
    configs = [str(REPO / "bundles" / bundle / "configs" / "train.json")]
    variants = REPO / "bundles" / bundle / "configs" / "variants"
    if variant is None and (variants / "vanilla.json").is_file():
        variant = "vanilla"  # a bundle whose train.json is not its vanilla (e.g. CoLab) ships variants/vanilla.json
    if variant:
        configs.append(str(variants / f"{variant}.json"))
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


def time_step(parser: ConfigParser, iters: int, warmup: int, statistic: str = "median") -> tuple[float, float]:
    """Seconds per training iteration on a fixed batch (median or mean over ``iters``), and peak memory in MiB.

    The trainer's iteration counter advances as in a real run, so steps that run every N iterations (CoLab's meta
    step) run at their real rate: use ``statistic="mean"`` and ``iters`` a multiple of N for their amortised cost.
    """
    device = parser.get_parsed_content("device")
    trainer = parser.get_parsed_content("train#trainer")
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        trainer.state.iteration = i + 1
        start = time.perf_counter()
        trainer._iteration(trainer, batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return (statistics.mean if statistic == "mean" else statistics.median)(times), _peak_memory_mb(device)


def measure(bundle: str, variant: str | None, overrides: dict, args: argparse.Namespace) -> dict:
    """Loader throughput, step time and peak memory of one variant (run in its own process, see ``main``)."""
    parser = _parser(bundle, variant, overrides)
    torch.manual_seed(0)
    patches_per_s = time_loader(parser, args.loader_batches)
    step_s, peak_mb = time_step(_parser(bundle, variant, overrides), args.iters, args.warmup, args.statistic)
    return {
        "variant": variant or "vanilla",
        "patches": parser["batch_size"] * parser["num_samples"],
        "patch": str(parser["patch_size"]),
        "step_s": step_s,
        "patches_per_s": patches_per_s,
        "peak_mb": peak_mb,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="asymmetric_segmentation")
    ap.add_argument("--variants", nargs="*", default=[], help="override files in configs/variants/ (vanilla first)")
    ap.add_argument("--dataset_dir", default=None, help="a prepared dataset; default: phantoms in a temp folder")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--loader_batches", type=int, default=20)
    ap.add_argument("--num_workers", type=int, default=2)
    ap.add_argument("--statistic", choices=("median", "mean"), default="median", help="mean: amortised periodic steps")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key=json_value, e.g. patch_size=[32,32,32]")
    ap.add_argument("--single", default=None, help=argparse.SUPPRESS)  # internal: measure one variant, print JSON
    args = ap.parse_args(argv)

    if args.single is not None:
        overrides = json.loads(os.environ["STEP_TIME_OVERRIDES"])
        variant = None if args.single == "vanilla" else args.single
        print("RESULT " + json.dumps(measure(args.bundle, variant, overrides, args)))
        return 0

    tmp = None
    dataset_dir = args.dataset_dir
    if dataset_dir is None:
        from monai_imbalance.data import make_phantom_dataset

        tmp = tempfile.TemporaryDirectory()
        dataset_dir = str(make_phantom_dataset(tmp.name, num_training=8, num_validation=2, shape=(96, 96, 96)))
    overrides = {"dataset_dir": dataset_dir, "bundle_root": tempfile.mkdtemp(), "num_workers": args.num_workers}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dataset {dataset_dir}")
    rows = []
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    passthrough = [f"--{k}={getattr(args, k)}" for k in ("bundle", "iters", "warmup", "loader_batches", "statistic")]
    for variant in ["vanilla", *args.variants]:
        # each variant in a fresh process: peak memory is its own, and no state leaks between variants
        out = subprocess.run(
            [sys.executable, __file__, "--single", variant, *passthrough],
            capture_output=True,
            text=True,
            env={**os.environ, "STEP_TIME_OVERRIDES": json.dumps(overrides)},
        )
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            print(f"variant {variant} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(line[0][len("RESULT ") :]))
        print(f"measured {variant}", flush=True)

    base = rows[0]["step_s"]
    print()
    print(f"step = {args.statistic} over {args.iters} iterations")
    print("| variant | patches/iter | patch | step (s) | ratio vs vanilla | loader (patches/s) | peak mem (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['patches']} | {r['patch']} | {r['step_s']:.3f} | {r['step_s'] / base:.2f} | "
            f"{r['patches_per_s']:.1f} | {r['peak_mb']:.0f} |"
        )
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
