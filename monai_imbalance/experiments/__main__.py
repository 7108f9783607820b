# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Command line: ``python -m monai_imbalance.experiments table --bundle ... --variants ... --fractions ...``.

Arguments after ``--`` are passed to every ``python -m monai.bundle run`` call, e.g. ``-- --epochs 10``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .table import VANILLA, run_table


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        overrides = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(prog="python -m monai_imbalance.experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table", help="train and evaluate every (variant, fraction) cell; write results.md/.csv")
    table.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/asymmetric_segmentation")
    table.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help=f"variant names ('{VANILLA}' = train.json alone unless variants/{VANILLA}.json exists; default: all)",
    )
    table.add_argument("--fractions", nargs="+", type=float, default=[0.05, 0.1, 0.2, 0.5])
    table.add_argument("--out", default=None, help="experiment folder (default: <bundle>/eval/table)")
    table.add_argument("--seed", type=int, default=0)
    table.add_argument("--split", default="test", help="evaluation split (default: test)")
    table.add_argument("--class_index", type=int, default=None, help="class to report (default: the rarest)")
    table.add_argument("--jobs", type=int, default=1, help="cells trained at the same time (e.g. on a large GPU)")
    table.add_argument("--collect", action="store_true", help="train nothing; tabulate the cells finished so far")
    args = parser.parse_args(argv)

    bundle = Path(args.bundle)
    variants = args.variants
    if variants is None:
        variants = [VANILLA, *sorted(p.stem for p in (bundle / "configs" / "variants").glob("*.json"))]
    out = Path(args.out) if args.out else bundle / "eval" / "table"
    try:
        print(
            run_table(
                bundle,
                variants,
                args.fractions,
                out,
                args.seed,
                args.split,
                args.class_index,
                overrides,
                jobs=args.jobs,
                collect_only=args.collect,
            )
        )
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out / 'results.md'} and {out / 'results.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
