# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Time one training step with each loss of :mod:`monai_imbalance.losses` against MONAI's ``DiceCELoss``.

One step is forward, loss, backward and an SGD step of a small 3D DynUNet (the ``asymmetric_segmentation`` bundle's
network: filters 16-32-64-128, residual blocks, instance norm) on a fixed batch (default 4 patches of 48^3, one
input channel). Every variant starts from the same weights. The variants run interleaved, one step each per round,
so drift of the machine (thermal, other load) hits all of them alike; the table reports the median step time over
``--iters`` rounds after ``--warmup`` rounds, its ratio against the ``DiceCELoss`` step of the same run, and the
median time of the loss alone (forward + backward of the loss on fixed logits).

The baseline is the bundle's loss: ``DiceCELoss(to_onehot_y=True, softmax=True, include_background=False,
batch=True)``. The variants are the cross-entropy rows of Li, Kamnitsas, Glocker (IEEE TMI 2021), each with the
nnU-Net Dice term (``lambda_dice=1``), and the F2 loss. Target (issue 3): loss-only variants <= 1.05x.

Usage::

    python benchmarks/loss_step_time.py                      # CPU, 4 x 48^3, 30 rounds (about 5 min on 2 cores)
    python benchmarks/loss_step_time.py --iters 20 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import DynUNet

from monai_imbalance.losses import FBetaLoss, MarginFocalLoss


def variants(rare: tuple[int, ...]) -> dict[str, torch.nn.Module]:
    """The losses to time, baseline first."""
    return {
        "DiceCELoss (baseline)": DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True),
        "ce + Dice": MarginFocalLoss(lambda_dice=1.0),
        "large margin (m=1) + Dice": MarginFocalLoss(margin=1.0, lambda_dice=1.0),
        "asymmetric large margin (m=1) + Dice": MarginFocalLoss(margin=1.0, rare_classes=rare, lambda_dice=1.0),
        "focal (gamma=4) + Dice": MarginFocalLoss(gamma=4.0, lambda_dice=1.0),
        "asymmetric focal (gamma=4) + Dice": MarginFocalLoss(gamma=4.0, rare_classes=rare, lambda_dice=1.0),
        "F2": FBetaLoss(beta=2.0),
    }


def make_batch(
    batch: int, patch: int, num_classes: int, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed image batch and a label batch with a small foreground sphere per class (imbalanced, as in CT/MR)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, patch, patch, patch, generator=g)
    grid = torch.stack(torch.meshgrid(*[torch.arange(patch, dtype=torch.float32)] * 3, indexing="ij"))
    y = torch.zeros(batch, 1, patch, patch, patch, dtype=torch.long)
    for b in range(batch):
        for c in range(1, num_classes):
            centre = torch.rand(3, 1, 1, 1, generator=g) * patch
            radius = patch / (4 + 2 * c)
            y[b, 0][((grid - centre) ** 2).sum(0) < radius**2] = c
    return x.to(device), y.to(device)


def make_network(filters: list[int], num_classes: int) -> DynUNet:
    n = len(filters)
    return DynUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=num_classes,
        kernel_size=[[3, 3, 3]] * n,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        upsample_kernel_size=[[2, 2, 2]] * (n - 1),
        filters=filters,
        norm_name="instance",
        deep_supervision=False,
        res_block=True,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=30, help="timed rounds (one step of every variant per round)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--filters", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--num_classes", type=int, default=2)
    ap.add_argument("--rare", type=int, nargs="+", default=[1], help="rare classes of the asymmetric variants")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    x, y = make_batch(args.batch, args.patch, args.num_classes, device, args.seed)
    template = make_network(args.filters, args.num_classes).to(device)
    losses = variants(tuple(args.rare))
    nets = {name: copy.deepcopy(template) for name in losses}
    opts = {name: torch.optim.SGD(nets[name].parameters(), lr=1e-3, momentum=0.9) for name in losses}
    logits = torch.randn(args.batch, args.num_classes, *([args.patch] * 3), device=device)

    def step(name: str) -> None:
        net, opt, loss_fn = nets[name], opts[name], losses[name]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()

    def loss_only(name: str) -> None:
        z = logits.clone().requires_grad_(True)
        losses[name](z, y).backward()

    step_times: dict[str, list[float]] = {name: [] for name in losses}
    loss_times: dict[str, list[float]] = {name: [] for name in losses}
    for r in range(args.warmup + args.iters):
        for name in losses:
            t_step = _timed(lambda name=name: step(name), device)
            t_loss = _timed(lambda name=name: loss_only(name), device)
            if r >= args.warmup:
                step_times[name].append(t_step)
                loss_times[name].append(t_loss)

    base = statistics.median(step_times["DiceCELoss (baseline)"])
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}"
    print(
        f"Training step of a 3D DynUNet (filters {'-'.join(map(str, args.filters))}), batch {args.batch} x "
        f"{args.patch}^3, {args.num_classes} classes, rare {tuple(args.rare)}, SGD; median of {args.iters} rounds "
        f"after {args.warmup} warm-up; device {device} ({hw}, {torch.get_num_threads()} threads), torch "
        f"{torch.__version__}.\n"
    )
    print("| loss | step (s) | ratio vs DiceCELoss | loss fwd+bwd (ms) |")
    print("| --- | ---: | ---: | ---: |")
    for name in losses:
        med = statistics.median(step_times[name])
        print(f"| {name} | {med:.3f} | {med / base:.3f}x | {1e3 * statistics.median(loss_times[name]):.1f} |")


if __name__ == "__main__":
    main()
