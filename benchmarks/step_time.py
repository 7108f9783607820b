# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Time the training step and the data loader of a bundle, and print a table with ratios against vanilla.

What it measures, on the exact objects a bundle config builds (network, loss, optimiser, data loader):

- ``loader``: patches per second out of ``train#dataloader`` (cached deterministic transforms, workers for the
  random crop and augmentation), after the cache is filled and one warm-up batch;
- ``step``: seconds per training iteration (forward, loss, backward, optimiser step; for the regularised
  trainer all its extra steps) on a fixed batch (from a loader without worker processes, so that no prefetching
  competes with the timed steps), so data loading is excluded, median over ``--iters`` iterations
  after ``--warmup``; peak memory (CUDA allocator on GPU, the process's peak resident set size on CPU).

Each variant is measured in a fresh process, so its peak memory is its own.

Each row is a variant (an override file under ``bundles/<name>/configs/variants/``, or the path of any JSON override
file, e.g. one that sets ``context_learner#reuse_lookahead_gradient``; or the vanilla train.json); the
``ratio`` column compares each one with vanilla measured in the same run.

Amortised cost of periodic steps (CoLab's meta step every ``meta_interval`` iterations): the trainer's iteration
counter advances as in a real run (and its epoch is 1, so steps gated by a warm-up of 0 epochs run, as learned
augmentation's TRA and TEA steps), so with ``--statistic mean`` and ``--iters`` a multiple of the interval the mean is
the amortised step (the generator's forward pass of every iteration included); the ``meta`` column counts the meta
steps inside the timed window (CoLab's meta steps; for learned augmentation its TRA steps plus its TEA steps). On a
shared machine use ``--repeats``: the variants are then measured round after round (vanilla, variants, vanilla, ...),
each round gives its own ratio, and the table reports the median step time, the median of the per-round ratios and the
1-minute load average around each measurement.

``--interleave`` (for a machine whose load changes from minute to minute): all variants are built in one process and
timed in alternating blocks of ``--block`` consecutive iterations (default 5, one CoLab meta cycle: every block holds
exactly one meta step), ``--repeats`` rounds of (vanilla block, variant blocks); each round's ratio compares blocks
measured seconds apart. The step is then the mean over all blocks, the ratio the total time against vanilla's, and
peak memory is not reported (the variants share the process); the loader is not measured.

``--clock process`` times with the CPU time of the measuring process (``time.process_time``, all its threads) instead
of the wall clock: with ``--threads 1`` it is the step's own compute time, much less sensitive to other jobs on a
shared machine than the wall clock (memory-bandwidth and cache contention still show); with several threads it also
counts the threads' busy-waiting, so use it with ``--threads 1``.

Usage::

    python benchmarks/step_time.py                                  # phantoms, CPU-sized
    python benchmarks/step_time.py --dataset_dir data/deep_grey_matter --iters 20
    python benchmarks/step_time.py --variants $(ls bundles/asymmetric_segmentation/configs/variants | sed 's/.json//')
    python benchmarks/step_time.py --bundle context_label_segmentation --variants colab_t2 --statistic mean --iters 20
    python benchmarks/step_time.py --bundle context_label_segmentation --variants colab_t2 /tmp/colab_reuse.json \
        --statistic mean --iters 20 --repeats 3 --loader_batches 0 --threads 1
    python benchmarks/step_time.py --bundle context_label_segmentation --variants colab_t2 --interleave --repeats 8 \
        --threads 1 --clock process
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
    if variant and variant.endswith(".json"):
        configs.append(str(Path(variant).resolve()))  # any override file
    elif variant:
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


def _meta_steps(trainer: object) -> int | None:
    """CoLab's meta steps, or learned augmentation's TRA plus TEA steps, taken so far (``None``: neither)."""
    hook = getattr(trainer, "_process_function", None)  # the method's iteration_update
    learners = [getattr(hook, name, None) for name in ("learner", "training", "test_time")]
    learners = [learner for learner in learners if learner is not None]
    return sum(learner.steps for learner in learners) if learners else None


def time_step(
    parser: ConfigParser, iters: int, warmup: int, statistic: str = "median", clock_name: str = "wall"
) -> tuple[float, float, int | None]:
    """Seconds per training iteration on a fixed batch (median or mean over ``iters``), peak memory in MiB, meta steps.

    The trainer's iteration counter advances as in a real run, so steps that run every N iterations (CoLab's meta
    step) run at their real rate: use ``statistic="mean"`` and ``iters`` a multiple of N for their amortised cost.
    The third value is the number of meta steps inside the timed iterations (:func:`_meta_steps`; ``None`` without
    context labels or learned augmentation).
    ``clock_name="process"`` times with the process's CPU time instead of the wall clock (see the module docstring).
    """
    clock = time.process_time if clock_name == "process" else time.perf_counter
    device = parser.get_parsed_content("device")
    trainer = parser.get_parsed_content("train#trainer")
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, meta_before = [], _meta_steps(trainer)
    trainer.state.epoch = 1  # ignite's epoch is 0 before run(); steps after a warm-up of 0 epochs run from epoch 1
    for i in range(warmup + iters):
        if i == warmup:
            meta_before = _meta_steps(trainer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        trainer.state.iteration = i + 1
        start = clock()
        trainer._process_function(trainer, batch)  # iteration_update (CoLab, learned augmentation) or _iteration
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(clock() - start)
    meta = None if meta_before is None else _meta_steps(trainer) - meta_before
    return (statistics.mean if statistic == "mean" else statistics.median)(times), _peak_memory_mb(device), meta


def interleaved(bundle: str, names: list[str], overrides: dict, args: argparse.Namespace) -> list[dict]:
    """All variants in this process, timed in alternating blocks of ``args.block`` iterations (see the docstring).

    Returns:
        one dict per variant: ``blocks`` (seconds per block, by round), ``meta`` (meta steps per block, by round),
        ``patches``, ``patch`` and ``load`` (the 1-minute load average before and after each round).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    runs = []
    for name in names:
        parser = _parser(bundle, None if name == "vanilla" else name, {**overrides, "num_workers": 0})
        torch.manual_seed(0)
        trainer = parser.get_parsed_content("train#trainer")
        batch = next(iter(parser.get_parsed_content("train#dataloader")))
        runs.append(
            {
                "name": name,
                "variant": Path(name).stem,
                "patches": parser["batch_size"] * parser["num_samples"],
                "patch": str(parser["patch_size"]),
                "device": parser.get_parsed_content("device"),
                "trainer": trainer,
                "batch": batch,
                "blocks": [],
                "meta": [],
                "load": [],
            }
        )

    def iterations(run: dict, n: int) -> float:
        trainer, device = run["trainer"], run["device"]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        for _ in range(n):
            trainer.state.iteration += 1  # ignite counts from 1; the meta step runs at its real rate
            trainer._process_function(trainer, run["batch"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return clock() - start

    for run in runs:
        run["trainer"].state.iteration = 0
        run["trainer"].state.epoch = 1  # 0 before run(): steps after a warm-up of 0 epochs run from epoch 1
        iterations(run, args.warmup)
    for round_ in range(max(1, args.repeats)):
        load = os.getloadavg()[0]
        for run in runs:
            before = _meta_steps(run["trainer"])
            run["blocks"].append(iterations(run, args.block))
            run["meta"].append(0 if before is None else _meta_steps(run["trainer"]) - before)
        for run in runs:
            run["load"].append((load, os.getloadavg()[0]))
        ratios = ", ".join(f"{r['variant']} {r['blocks'][-1] / runs[0]['blocks'][-1]:.2f}" for r in runs[1:])
        print(f"round {round_}: {ratios} (load {load:.1f}/{os.getloadavg()[0]:.1f})", flush=True)
    return [{k: v for k, v in r.items() if k not in ("trainer", "batch", "device")} for r in runs]


def measure(bundle: str, variant: str | None, overrides: dict, args: argparse.Namespace) -> dict:
    """Loader throughput, step time and peak memory of one variant (run in its own process, see ``main``)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    parser = _parser(bundle, variant, overrides)
    torch.manual_seed(0)
    patches_per_s = time_loader(parser, args.loader_batches) if args.loader_batches > 0 else float("nan")
    load_before = os.getloadavg()[0]
    # the step's fixed batch comes from a loader without workers: no prefetching process runs while the step is timed
    step_parser = _parser(bundle, variant, {**overrides, "num_workers": 0})
    step_s, peak_mb, meta = time_step(step_parser, args.iters, args.warmup, args.statistic, args.clock)
    return {
        "variant": Path(variant).stem if variant else "vanilla",
        "patches": parser["batch_size"] * parser["num_samples"],
        "patch": str(parser["patch_size"]),
        "step_s": step_s,
        "meta": meta,
        "patches_per_s": patches_per_s,
        "peak_mb": peak_mb,
        "load": (load_before, os.getloadavg()[0]),
    }


def print_interleaved(runs: list[dict], args: argparse.Namespace) -> None:
    """The table of :func:`interleaved`: mean step, total ratio and per-round ratios against vanilla (first)."""
    base = runs[0]["blocks"]
    print()
    print(f"step = mean over {len(base)} interleaved blocks of {args.block} iterations, {args.clock} clock")
    print(
        "| variant | patches/iter | patch | step (s) | ratio vs vanilla | per-round ratios (min-median-max) "
        "| meta/block |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        ratios = sorted(b / v for b, v in zip(r["blocks"], base, strict=True))
        print(
            f"| {r['variant']} | {r['patches']} | {r['patch']} | {sum(r['blocks']) / (len(base) * args.block):.3f} | "
            f"{sum(r['blocks']) / sum(base):.2f} | {ratios[0]:.2f}-{statistics.median(ratios):.2f}-{ratios[-1]:.2f} | "
            f"{'/'.join(str(m) for m in sorted(set(r['meta'])))} |"
        )
    loads = [x for r in runs for pair in r["load"] for x in pair]
    print(f"1-minute load average during the rounds: {min(loads):.1f} to {max(loads):.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="asymmetric_segmentation")
    ap.add_argument("--variants", nargs="*", default=[], help="override files in configs/variants/ (vanilla first)")
    ap.add_argument("--dataset_dir", default=None, help="a prepared dataset; default: phantoms in a temp folder")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--loader_batches", type=int, default=20, help="0: skip the loader measurement")
    ap.add_argument("--num_workers", type=int, default=2)
    ap.add_argument("--statistic", choices=("median", "mean"), default="median", help="mean: amortised periodic steps")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of (vanilla, variants), each in fresh processes")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the measuring processes (0: default)")
    ap.add_argument("--interleave", action="store_true", help="all variants in one process, alternating blocks")
    ap.add_argument("--block", type=int, default=5, help="iterations per block with --interleave (a meta cycle)")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall", help="process: CPU time (with --threads 1)")
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
    if args.interleave:
        print_interleaved(interleaved(args.bundle, ["vanilla", *args.variants], overrides, args), args)
        if tmp is not None:
            tmp.cleanup()
        return 0
    keys = ("bundle", "iters", "warmup", "loader_batches", "statistic", "threads", "clock")
    passthrough = [f"--{k}={getattr(args, k)}" for k in keys]
    names = ["vanilla", *args.variants]
    for round_ in range(max(1, args.repeats)):
        for variant in names:
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
            row = json.loads(line[0][len("RESULT ") :])
            rows.append({**row, "round": round_, "name": variant})
            load = "/".join(f"{x:.1f}" for x in row["load"])
            print(f"round {round_}: {variant} {row['step_s']:.3f} s (load {load})", flush=True)

    print()
    print(f"step = {args.statistic} over {args.iters} iterations, {max(1, args.repeats)} round(s), {args.clock} clock")
    print(
        "| variant | patches/iter | patch | step (s) | ratio vs vanilla | per-round ratios | meta | loader (patches/s) "
        "| peak mem (MiB) | load 1-min |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for variant in names:
        mine = [r for r in rows if r["name"] == variant]
        ratios = [
            r["step_s"] / next(b["step_s"] for b in rows if b["name"] == "vanilla" and b["round"] == r["round"])
            for r in mine
        ]
        r = mine[0]
        loads = ", ".join("/".join(f"{x:.1f}" for x in m["load"]) for m in mine)
        print(
            f"| {r['variant']} | {r['patches']} | {r['patch']} | {statistics.median(m['step_s'] for m in mine):.3f} | "
            f"{statistics.median(ratios):.2f} | {', '.join(f'{x:.2f}' for x in ratios)} | "
            f"{'-' if r['meta'] is None else r['meta']} | {r['patches_per_s']:.1f} | "
            f"{max(m['peak_mb'] for m in mine):.0f} | {loads} |"
        )
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
