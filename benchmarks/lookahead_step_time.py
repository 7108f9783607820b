# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Time and peak memory of the one-step look-ahead hypergradient against a vanilla training step.

What it measures, on a DynUNet segmenter with CoLab's meta objective (methods.md 2.4: soft-target cross-entropy with
the generator's soft labels ``q`` as the auxiliary tensor, foreground BCE after the virtual step):

- ``vanilla``: one forward, backward and SGD step on the batch;
- ``finite_difference`` / ``exact``: :func:`~monai_imbalance.engines.lookahead_hypergradient` (the generator's
  soft labels are computed once, outside, as in a CoLab meta step);
- ``per_sample_fd`` / ``per_sample_exact``: :func:`~monai_imbalance.engines.per_sample_lookahead_hypergradient`;

seconds per call (median over ``--iters`` after one warm-up) and peak memory: the CUDA allocator's peak on GPU, the
growth of the process's peak resident set size over the model and data set-up on CPU (allocator caching included;
each row runs in a fresh process, so its peak is its own). The ``ratio`` columns compare with vanilla. The last line
gives the relative difference of the finite-difference and exact hypergradients (``r = 1e-2``, float32), on the same
batch.

Usage::

    python benchmarks/lookahead_step_time.py                         # CPU-sized: 32^3 patch, batch 2
    python benchmarks/lookahead_step_time.py --size 96 --batch 2 --filters 32 64 128 256 320 --iters 10
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

ROWS = ("vanilla", "finite_difference", "exact", "per_sample_fd", "per_sample_exact")


def _setup(args: argparse.Namespace, device: torch.device):
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    levels = len(args.filters)
    net = DynUNet(
        3, 1, 3, [3] * levels, [1] + [2] * (levels - 1), [2] * (levels - 1), filters=args.filters, res_block=False
    ).to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 1, *(args.size,) * 3, generator=g).to(device)
    y = (torch.rand(args.batch, 1, *(args.size,) * 3, generator=g) < 0.1).long().to(device)
    gen = torch.nn.Conv3d(1, 2, 1).to(device)  # a stand-in generator; its cost is not part of the look-ahead
    return net, x, y, gen


def _soft_target(gen: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    q = torch.softmax(gen(x), 1)
    fg = (y == 1).float()
    return torch.cat([q[:, :1] * (1 - fg), fg, q[:, 1:] * (1 - fg)], 1)


def _soft_ce(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * torch.log_softmax(out, 1)).sum(1).mean()


def _fg_bce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(out, 1)[:, 1:2].clamp(1e-6, 1 - 1e-6)
    return torch.nn.functional.binary_cross_entropy(p, (y == 1).float())


def _step(row: str, net, x, y, gen, opt):
    from monai_imbalance.engines import functional_forward, lookahead_hypergradient, per_sample_lookahead_hypergradient

    if row == "vanilla":
        opt.zero_grad()
        _soft_ce(net(x), _soft_target(gen, x, y).detach()).backward()
        opt.step()
        return None
    q = _soft_target(gen, x, y)
    if row.startswith("per_sample"):
        method = "exact" if row.endswith("exact") else "finite_difference"
        return per_sample_lookahead_hypergradient(
            net,
            lambda p, qb, xb, yb: _soft_ce(functional_forward(net, p, xb[None]), qb[None]),
            lambda p, xb, yb: _fg_bce(functional_forward(net, p, xb[None]), yb[None]),
            q,
            (x, y),
            1e-2,
            method=method,
        )
    return lookahead_hypergradient(
        net,
        lambda p: _soft_ce(functional_forward(net, p, x), q),
        lambda p: _fg_bce(functional_forward(net, p, x), y),
        q,
        1e-2,
        method=row,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(row: str, args: argparse.Namespace) -> dict:
    """Seconds per call and peak memory (MiB) of one row, in this process."""
    device = torch.device(args.device)
    net, x, y, gen = _setup(args, device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _step(row, net, x, y, gen, opt)  # warm-up (counted in the peak, not in the time)
    _sync(device)
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        _step(row, net, x, y, gen, opt)
        _sync(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"row": row, "seconds": statistics.median(times), "peak_mib": peak / 2**20}


def fd_vs_exact(args: argparse.Namespace) -> float:
    device = torch.device(args.device)
    net, x, y, gen = _setup(args, device)
    fd = _step("finite_difference", net, x, y, gen, None).grads[0]
    exact = _step("exact", net, x, y, gen, None).grads[0]
    return float((fd - exact).norm() / exact.norm())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=32, help="cubic patch side")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--filters", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one row, print JSON
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return
    results = []
    for row in args.rows:
        cmd = [sys.executable, __file__, "--one", row, "--size", str(args.size), "--batch", str(args.batch)]
        cmd += ["--filters", *map(str, args.filters), "--iters", str(args.iters), "--device", args.device]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(out))
    vanilla = next((r for r in results if r["row"] == "vanilla"), None)
    print(f"DynUNet filters={args.filters}, patch {args.size}^3, batch {args.batch}, device {args.device}")
    print(f"| {'row':<18} | {'s/call':>8} | {'ratio':>6} | {'peak MiB':>9} | {'ratio':>6} |")
    print(f"|{'-' * 20}|{'-' * 10}:|{'-' * 7}:|{'-' * 10}:|{'-' * 7}:|")
    for r in results:
        t_ratio = r["seconds"] / vanilla["seconds"] if vanilla else float("nan")
        m_ratio = r["peak_mib"] / vanilla["peak_mib"] if vanilla and vanilla["peak_mib"] > 0 else float("nan")
        print(f"| {r['row']:<18} | {r['seconds']:8.3f} | {t_ratio:6.2f} | {r['peak_mib']:9.1f} | {m_ratio:6.2f} |")
    print(f"relative difference finite_difference vs exact (r=1e-2, float32): {fd_vs_exact(args):.3e}")


if __name__ == "__main__":
    main()
