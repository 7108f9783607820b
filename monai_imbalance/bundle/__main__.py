"""Command line: ``python -m monai_imbalance.bundle verify bundles/<name> [--checks metadata,configs] [--schema FILE]
[--untrained]``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Sequence

from .verify import CHECKS, verify_bundle


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 when every check passed, 1 otherwise.
    """
    parser = argparse.ArgumentParser(prog="python -m monai_imbalance.bundle", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="run the Model Zoo's bundle checks offline (one line per check)")
    verify.add_argument("bundle", nargs="+", help="bundle folder(s), e.g. bundles/asymmetric_segmentation")
    verify.add_argument(
        "--checks", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)} (default: all)"
    )
    verify.add_argument(
        "--schema",
        default=None,
        help="metadata schema for MONAI's verify_metadata (e.g. the Zoo's meta_schema_*.json that metadata.json's "
        "'schema' names, downloaded once); default: the offline schema shipped in monai_imbalance/bundle/schemas",
    )
    verify.add_argument(
        "--untrained",
        action="store_true",
        help="without models/model.pt, export a freshly initialised network (reported as UNTRAINED) instead of failing",
    )
    verify.add_argument("--verbose", action="store_true", help="keep MONAI's INFO logging")
    args = parser.parse_args(argv)
    if not args.verbose:
        import monai.bundle.scripts  # noqa: F401  (its logger is configured on import)

        for name in ("monai", "monai.bundle", "monai.bundle.scripts", "monai.apps"):
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        parser.error(f"unknown check(s) {unknown}; choose from {list(CHECKS)}")
    failed = False
    for bundle in args.bundle:
        print(f"verify {bundle}", flush=True)
        start = time.perf_counter()
        results = verify_bundle(
            bundle,
            checks,
            echo=lambda line: print(line, flush=True),
            schema_file=args.schema,
            allow_untrained=args.untrained,
        )
        bad = [r.name for r in results if not r.passed]
        failed = failed or bool(bad)
        verdict = f"FAILED ({', '.join(bad)})" if bad else "all checks passed"
        if any(r.passed and r.message.startswith("UNTRAINED") for r in results):
            verdict += " (UNTRAINED: no models/model.pt, the export checked a freshly initialised network)"
        print(f"{bundle}: {verdict} in {time.perf_counter() - start:.1f}s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
