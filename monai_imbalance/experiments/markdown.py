# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The comparison table as Markdown: one row per variant, per training fraction DSC, SEN, PRC and HD95.

Each entry is the mean over seeds of the per-seed means over cases, ``± sd`` over seeds when at least two seeds
define it (one seed: the mean alone; see :mod:`monai_imbalance.experiments.statistics`). DSC, SEN and PRC are in
%, HD95 in mm. Next to the value:

- ``\\*`` / ``\\*\\*``: the paired Wilcoxon signed-rank test against the reference (``vanilla``) over the
  (case, seed) pairs gives p < 0.05 / p < 0.01 (escaped so that Markdown shows the asterisks);
- :data:`WORSE` (``↓``), in the DSC columns only: the variant's mean DSC is below the reference's;
- ``(n=k)``: only ``k`` of the table's seeds are finished for the cell.

The best value of each column (HD95: the lowest) is in bold; ``-`` is a cell not run (or not finished), ``n/a``
a metric undefined in every case. A legend line under the table says all of this.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .statistics import METRICS, VANILLA, ColumnStats, significance_mark, table_statistics

__all__ = ["WORSE", "format_table"]

#: The mark of a mean DSC below the reference's.
WORSE = "↓"


def _entry(
    key: str,
    stats: ColumnStats | None,
    best: float | None,
    reference: ColumnStats | None,
    n_seeds: int,
) -> str:
    if stats is None:
        return "-"
    if math.isnan(stats.mean):
        return "n/a"
    scale, digits = (1.0, 2) if key == "hd95" else (100.0, 1)
    text = f"{scale * stats.mean:.{digits}f}"
    if stats.sd is not None:
        text += f" ± {scale * stats.sd:.{digits}f}"
    if best == stats.mean:
        text = f"**{text}**"
    mark = significance_mark(stats.p_value).replace("*", "\\*")
    if key == "dice" and reference is not None and stats.mean < reference.mean - 1e-9:  # NaN compares False
        mark = f"{mark} {WORSE}".strip()
    if mark:
        text += f" {mark}"
    if stats.n_seeds < n_seeds:
        text += f" (n={stats.n_seeds})"
    return text


def format_table(
    results: Sequence[dict[str, Any]],
    variants: Sequence[str],
    fractions: Sequence[float],
    seeds: Sequence[int] | None = None,
    reference: str = VANILLA,
    preset: str | None = None,
) -> str:
    """The Markdown table of the cell results, with its legend line (see the module doc).

    Args:
        results: cell results (one per variant, fraction and seed; ``cases`` for the paired tests).
        variants: the rows, in order.
        fractions: the training fractions, in order (four columns each).
        seeds: the table's seeds (a cell with fewer finished seeds shows ``(n=k)``); default: those of ``results``.
        reference: the variant the others are tested against.
        preset: the preset name, named in the legend.

    Returns:
        The table, an empty line and the legend line, ending in a newline.
    """
    fractions = [float(f) for f in fractions]
    seeds = sorted({int(r["seed"]) for r in results}) if seeds is None else list(seeds)
    stats = table_statistics(results, variants, fractions, reference)
    header = ["Variant"] + [f"{h} @ {f:g}" for f in fractions for _, h, _ in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    best: dict[tuple[float, str], float] = {}
    for f in fractions:
        for key, _, higher in METRICS:
            values = [stats[(v, f, key)].mean for v in variants if (v, f, key) in stats]
            values = [x for x in values if not math.isnan(x)]
            if values:
                best[(f, key)] = max(values) if higher else min(values)
    for v in variants:
        cells = [v]
        for f in fractions:
            for key, _, _ in METRICS:
                ref = stats.get((reference, f, key)) if v != reference else None
                cells.append(_entry(key, stats.get((v, f, key)), best.get((f, key)), ref, len(seeds)))
        lines.append("| " + " | ".join(cells) + " |")
    if results:
        lines.extend(["", _legend(results, seeds, reference, reference in variants, preset)])
    return "\n".join(lines) + "\n"


def _legend(
    results: Sequence[dict[str, Any]], seeds: Sequence[int], reference: str, tested: bool, preset: str | None
) -> str:
    classes = ", ".join(f"`{c}`" for c in sorted({str(r.get("class", "?")) for r in results}))
    splits = sorted(
        {str(c["split"]) for r in results for c in r.get("cases") or []}
        | {str(r["split"]) for r in results if "split" in r}
    )
    where = f"class {classes}" + (f" of the {', '.join(f'`{s}`' for s in splits)} split" if splits else "")
    text = (
        f"{where[0].upper()}{where[1:]}, seed{'s' * (len(seeds) > 1)} {', '.join(str(s) for s in seeds)}"
        + (f", preset `{preset}`" if preset else "")
        + ": per seed the mean over the cases, then the mean ± sd (ddof=1) over the seeds (one seed: its mean alone); "
        "DSC, SEN, PRC in %, HD95 in mm; best of each column in bold"
    )
    if tested:
        text += (
            f"; \\* p < 0.05, \\*\\* p < 0.01: two-sided paired Wilcoxon signed-rank test against `{reference}` over "
            f"the (case, seed) pairs; {WORSE}: mean DSC below `{reference}`'s"
        )
    if len(seeds) > 1:
        text += f"; (n=k): k of the {len(seeds)} seeds finished"
    return text + "; -: not run; n/a: undefined in every case."
