# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Throughput of the policy-driven augmentation (``PolicyAugmentd``) against MONAI's ``RandAffined``.

Li, Kamnitsas, Dou, Qin, Glocker, "Joint Optimization of Class-Specific Training- and Test-Time Data Augmentation in
Segmentation", IEEE TMI 2023 (methods.md 3.1-3.2). One loader worker's work per patch, in a single process: an image
and a label patch (default 48^3, one channel) go through

- ``RandAffined`` (baseline): MONAI's random affine with ``prob=1``, rotations up to 25 degrees about each axis and
  zoom up to +-45 % (the pool's largest bins), bilinear image / nearest label, zero padding;
- ``PolicyAugmentd`` with the nnU-Net-like initial policy (``init=2``, foreground group: most operations are the
  identity on a given patch, as at the start of training);
- ``PolicyAugmentd`` with a uniform policy (``init=0``: every operation is a non-identity bin most of the time, the
  worst case);
- the nnU-Net-like policy on an enlarged crop (``--enlarged``, default 64^3) resampled to the patch size, as the
  authors do so that rotated corners hold data.

The variants run interleaved in rounds of ``--round`` patches (drift of a shared machine hits all alike); the table
gives patches per second and the ratio against ``RandAffined`` (> 1: faster). ``torch`` uses ``--threads`` threads
(default 1, one worker's share).

Usage::

    python benchmarks/augment_throughput.py                      # 48^3, 300 patches per variant
    python benchmarks/augment_throughput.py --patch 64 --patches 200 --threads 2
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from monai.transforms import RandAffined

from monai_imbalance.augment import AugmentationPolicy, SharedPolicyProbabilities
from monai_imbalance.transforms import PolicyAugmentd


def make_sample(size: int, seed: int) -> dict[str, Any]:
    """A normalised image and a label with a foreground sphere, ``(1, size, size, size)`` each."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, size, size, size, generator=g)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    label = ((grid - size / 2).pow(2).sum(0) < (size / 4) ** 2).long()[None]
    return {"image": image, "label": label, "patch_class": 1}


def variants(patch: int, enlarged: int) -> dict[str, tuple[Callable[[dict], dict], int]]:
    """``name -> (transform, input size)``, baseline first."""
    rad = math.radians(25.0)
    rand_affine = RandAffined(
        keys=["image", "label"],
        prob=1.0,
        rotate_range=(rad, rad, rad),
        scale_range=(0.45, 0.45, 0.45),
        mode=("bilinear", "nearest"),
        padding_mode="zeros",
    )
    rand_affine.set_random_state(0)
    out: dict[str, tuple[Callable[[dict], dict], int]] = {"RandAffined (baseline)": (rand_affine, patch)}
    for name, init, size in (
        ("PolicyAugmentd, nnU-Net-like init", 2, patch),
        ("PolicyAugmentd, uniform init (worst case)", 0, patch),
        (f"PolicyAugmentd, nnU-Net-like init, {enlarged}^3 -> {patch}^3", 2, enlarged),
    ):
        shared = SharedPolicyProbabilities(AugmentationPolicy(init=init))
        t = PolicyAugmentd(["image", "label"], shared, label_keys="label", spatial_size=patch)
        t.set_random_state(0)
        out[name] = (t, size)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--enlarged", type=int, default=64)
    parser.add_argument("--patches", type=int, default=300, help="patches per variant")
    parser.add_argument("--round", type=int, default=20, help="patches per variant per interleaved round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    var = variants(args.patch, args.enlarged)
    samples = {size: [make_sample(size, s) for s in range(8)] for size in {args.patch, args.enlarged}}
    for t, size in var.values():  # warm-up (lazy imports, allocator)
        for i in range(args.warmup):
            t(samples[size][i % 8])
    elapsed = dict.fromkeys(var, 0.0)
    done = dict.fromkeys(var, 0)
    while min(done.values()) < args.patches:
        for name, (t, size) in var.items():
            n = min(args.round, args.patches - done[name])
            start = time.perf_counter()
            for i in range(n):
                out = t(samples[size][(done[name] + i) % 8])
            elapsed[name] += time.perf_counter() - start
            done[name] += n
            assert tuple(out["image"].shape[1:]) == (args.patch,) * 3

    base = done["RandAffined (baseline)"] / elapsed["RandAffined (baseline)"]
    print(
        f"patch {args.patch}^3 (image + label), {args.patches} patches per variant, torch threads {args.threads}, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    )
    print(f"| {'variant':<52} | {'patches/s':>9} | {'ms/patch':>8} | {'vs RandAffined':>14} |")
    print(f"|{'-' * 54}|{'-' * 11}|{'-' * 10}|{'-' * 16}|")
    for name in var:
        rate = done[name] / elapsed[name]
        print(f"| {name:<52} | {rate:9.1f} | {1000 / rate:8.2f} | {rate / base:13.2f}x |")


if __name__ == "__main__":
    main()
