# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Command line of the comparison table.

``python -m monai_imbalance.experiments table --bundle ... --variants ... --fractions ... --seeds ...``: train and
evaluate every cell, write the table; arguments after ``--`` are passed to every ``python -m monai.bundle run``
call, e.g. ``-- --epochs 10``.

``python -m monai_imbalance.experiments estimation --seeds 0 1 2 --results results/NAME [--models DIR_{seed}] ...``: the
estimation table (fit and shift benchmark of the performance estimators for one segmenter per seed; see
:mod:`monai_imbalance.experiments.estimation`).

``python -m monai_imbalance.experiments merge --from DIR --into DIR``: add the cells of a results folder filled
elsewhere (another worktree, machine or GPU session) to another, with the runs that made them.

``python -m monai_imbalance.experiments render --results results/NAME --readme README.md --marker NAME
[--check]``: write the table of a committed results folder between the README's ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->`` (``--check``: exit 1 when the block is stale).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .estimation import run_estimation_table
from .render import render_readme
from .results import cell_count, merge_results_dirs
from .table import VANILLA, run_table


def _table(args: argparse.Namespace, overrides: list[str], command: str) -> int:
    bundle = Path(args.bundle)
    variants = args.variants
    if variants is None:
        variants = [VANILLA, *sorted(p.stem for p in (bundle / "configs" / "variants").glob("*.json"))]
    out = Path(args.out) if args.out else bundle / "eval" / "table"
    print(
        run_table(
            bundle,
            variants,
            args.fractions,
            out,
            args.seeds,
            args.split,
            args.class_index,
            overrides,
            jobs=args.jobs,
            collect_only=args.collect,
            preset=args.preset,
            optimizer=args.optimizer,
            results_dir=args.results,
            command=command,
        )
    )
    wrote = f"wrote {out / 'results.md'} and {out / 'results.csv'}"
    print(wrote + (f"; results folder {args.results}" if args.results else ""))
    return 0


def _estimation(args: argparse.Namespace, overrides: list[str], command: str) -> int:
    if args.models is not None and "{seed}" not in args.models and len(args.seeds) > 1:
        raise ValueError(f"--models {args.models!r}: several seeds need '{{seed}}' in the path (one segmenter each).")
    out = Path(args.out) if args.out else Path(args.bundle) / "eval" / "estimation_table"
    print(
        run_estimation_table(
            args.bundle,
            args.seeds,
            out,
            args.results,
            models_template=args.models,
            preset=args.preset,
            overrides=overrides,
            command=command,
            collect_only=args.collect,
        )
    )
    print(f"results folder {args.results}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    added = merge_results_dirs(args.source, args.into)
    names = f" ({', '.join(added)})" if added else ""
    print(f"{args.into}: {cell_count(len(added))} added from {args.source}{names}")
    return 0


def _render(args: argparse.Namespace) -> int:
    changed = render_readme(args.results, args.readme, args.marker, check=args.check)
    if args.check and changed:
        print(
            f"error: the results:{args.marker} block of '{args.readme}' differs from '{args.results}'; run "
            f"python -m monai_imbalance.experiments render --results {args.results} --readme {args.readme} "
            f"--marker {args.marker}",
            file=sys.stderr,
        )
        return 1
    state = "up to date" if not changed else "written"
    print(f"{args.readme}: results:{args.marker} block {state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "monai_imbalance.experiments", *argv])
    overrides: list[str] = []
    if "--" in argv:
        overrides = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(prog="python -m monai_imbalance.experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table", help="train and evaluate every (variant, fraction, seed) cell; write the table")
    table.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/asymmetric_segmentation")
    table.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help=f"variant names ('{VANILLA}' = train.json alone unless variants/{VANILLA}.json exists; default: all)",
    )
    table.add_argument("--fractions", nargs="+", type=float, default=[0.05, 0.1, 0.2, 0.5])
    table.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds; each is its own cell (default: 0)")
    table.add_argument(
        "--preset", default=None, help="configs/presets/<NAME>.json, after train.json, before the variant"
    )
    table.add_argument(
        "--optimizer", default=None, help="configs/optimizers/<NAME>.json stacked last, e.g. sgd_nnunet (the authors')"
    )
    table.add_argument("--out", default=None, help="experiment folder (default: <bundle>/eval/table)")
    table.add_argument(
        "--results", default=None, help="results folder to commit (metrics only); its cells count as finished"
    )
    table.add_argument("--split", default="test", help="evaluation split (default: test)")
    table.add_argument("--class_index", type=int, default=None, help="class to report (default: the rarest)")
    table.add_argument("--jobs", type=int, default=1, help="cells trained at the same time (e.g. on a large GPU)")
    table.add_argument("--collect", action="store_true", help="train nothing; tabulate the cells finished so far")
    est = sub.add_parser("estimation", help="fit and benchmark the performance estimators for one segmenter per seed")
    est.add_argument("--bundle", default="bundles/performance_estimation", help="the performance-estimation bundle")
    est.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    est.add_argument(
        "--models",
        default=None,
        help="checkpoint folder per seed with '{seed}', e.g. runs/signature/cells/vanilla__f1__s{seed}/models "
        "(default: train one per seed with the bundle's train.json)",
    )
    est.add_argument("--preset", default=None, help="configs/presets/<NAME>.json, after train.json")
    est.add_argument("--out", default=None, help="working folder (default: <bundle>/eval/estimation_table)")
    est.add_argument("--results", required=True, help="results folder to commit; its seeds count as finished")
    est.add_argument("--collect", action="store_true", help="run nothing; tabulate the seeds finished so far")
    merge = sub.add_parser("merge", help="add the cells (and their runs) of one results folder to another")
    merge.add_argument("--from", dest="source", required=True, help="results folder with new cells")
    merge.add_argument("--into", required=True, help="results folder to complete (e.g. the committed one)")
    render = sub.add_parser("render", help="write the table of a results folder into a README's marked block")
    render.add_argument("--results", required=True, help="results folder, e.g. results/table2")
    render.add_argument("--readme", required=True, help="Markdown file with the marker pair")
    render.add_argument("--marker", required=True, help="NAME of <!-- results:NAME --> ... <!-- /results:NAME -->")
    render.add_argument("--check", action="store_true", help="write nothing; exit 1 when the block is stale")
    args = parser.parse_args(argv)
    if args.command in ("render", "merge") and overrides:
        parser.error(f"{args.command} takes no arguments after '--'")
    try:
        if args.command == "table":
            return _table(args, overrides, command)
        if args.command == "estimation":
            return _estimation(args, overrides, command)
        if args.command == "merge":
            return _merge(args)
        return _render(args)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
