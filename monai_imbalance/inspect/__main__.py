# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Command line of :mod:`monai_imbalance.inspect`.

``python -m monai_imbalance.inspect logits --config_file bundles/<name>/configs/train.json --checkpoint model.pt
--splits train validation test --out <dir> [--dataset_dir X --<config id> value ...]``: the logit-margin report
(Li, Kamnitsas, Glocker, IEEE TMI 2021) of a trained model. Arguments the command does not know are config
overrides, as with ``python -m monai.bundle run``: ``--dataset_dir data/x``, ``--patch_size "[32, 32, 32]"``,
``--device "\\$torch.device('cpu')"``; values are read as JSON (else as Python literals, else as strings).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "parse_overrides", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommand ``logits``)."""
    parser = argparse.ArgumentParser(prog="python -m monai_imbalance.inspect", description="Inspect trained models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    logits = commands.add_parser(
        "logits",
        help="logit-margin histograms per class and split for a trained model (no training)",
        description=(
            "Per class c, histograms of the margin z_c - max_(k!=c) z_k of class-balanced voxel samples of each split "
            "(sliding-window logits of the validation preprocessing), the boundary at 0 and means marked; an .npz of "
            "the samples, a JSON summary, and the summary table on stdout. Unknown --key value pairs override the "
            "bundle config: --training_fraction and --seed select the training cases as in training."
        ),
    )
    logits.add_argument("--config_file", required=True, nargs="+", help="bundle train config(s), merged in order")
    logits.add_argument("--checkpoint", required=True, help="model.pt (state dict) or latest.pt ('model' entry)")
    logits.add_argument("--splits", nargs="+", default=["train", "validation", "test"], help="(default: %(default)s)")
    logits.add_argument("--out", required=True, help="output folder")
    logits.add_argument("--samples_per_class", type=int, default=50_000, help="(default: %(default)s)")
    logits.add_argument("--max_cases", type=int, default=None, help="cases per split at most (default: all)")
    logits.add_argument(
        "--sampler_seed",
        type=int,
        default=0,
        help="seed of the voxel samplers (default: %(default)s); --seed is the "
        "bundle's (it selects the training cases of a training fraction)",
    )
    logits.add_argument("--bins", type=int, default=100, help="histogram bins (default: %(default)s)")
    return parser


def _value(text: str) -> Any:
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            continue
    return text


def parse_overrides(extra: Sequence[str]) -> dict[str, Any]:
    """``["--dataset_dir", "x", "--epochs=3"]`` -> ``{"dataset_dir": "x", "epochs": 3}``.

    Raises:
        ValueError: an item that is not ``--key value`` or ``--key=value``.
    """
    overrides: dict[str, Any] = {}
    items = list(extra)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--") or len(item) < 3:
            raise ValueError(f"expected a --key value override, got {item!r}.")
        if "=" in item:
            key, text = item[2:].split("=", 1)
            i += 1
        elif i + 1 < len(items):
            key, text = item[2:], items[i + 1]
            i += 2
        else:
            raise ValueError(f"override {item!r} has no value.")
        overrides[key] = _value(text)
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = parse_overrides(extra)
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from monai_imbalance.inspect import inspect_logits

    config = args.config_file[0] if len(args.config_file) == 1 else args.config_file
    summary = inspect_logits(
        config,
        args.checkpoint,
        args.out,
        splits=args.splits,
        overrides=overrides,
        samples_per_class=args.samples_per_class,
        max_cases=args.max_cases,
        seed=args.sampler_seed,
        bins=args.bins,
    )
    print(f"wrote {len(summary['files'])} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
