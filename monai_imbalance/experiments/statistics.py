# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The numbers of the comparison table: per seed the mean over cases, then mean ± sd over seeds, and paired tests.

A cell result (one variant, training fraction and seed; see :func:`~monai_imbalance.experiments.table.run_cell`)
holds the per-case metrics of the reported class in ``cases`` (rows with ``case``, ``split`` and one value per
metric, NaN where the metric is undefined for the case). Per (variant, fraction) and metric:

- each seed gives the mean over its cases (NaN cases left out, as in ``metrics_summary.csv``; a result without
  ``cases`` gives its ``<metric>_mean``);
- the column value is the mean of those seed means, with the sample standard deviation (``ddof=1``) over the seeds
  when at least two seeds are defined (``None`` otherwise);
- the variant is compared with the reference (``vanilla``) by a two-sided Wilcoxon signed-rank test
  (:func:`scipy.stats.wilcoxon`) over the (split, case, seed) pairs both define: the same case of the same seed is
  one pair. No difference at all gives ``p = 1``; no pair gives no test (``None``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "VANILLA",
    "METRICS",
    "ColumnStats",
    "seed_mean",
    "mean_sd",
    "paired_values",
    "wilcoxon_p",
    "significance_mark",
    "table_statistics",
    "summary_rows",
]

#: The name of the unmodified ``train.json`` in ``--variants`` and the reference of the paired tests.
VANILLA = "vanilla"
#: (metric key, table header, higher is better) of the reported metrics.
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("dice", "DSC", True),
    ("sensitivity", "SEN", True),
    ("precision", "PRC", True),
    ("hd95", "HD95", False),
)
#: (p-value bound, mark) of the significance marks, strictest first.
SIGNIFICANCE: tuple[tuple[float, str], ...] = ((0.01, "**"), (0.05, "*"))


@dataclass(frozen=True)
class ColumnStats:
    """One (variant, fraction, metric) entry of the table.

    Args:
        mean: the mean over seeds of the per-seed means over cases (NaN when no seed defines the metric).
        sd: the sample standard deviation (``ddof=1``) of the per-seed means; ``None`` with fewer than two.
        n_seeds: the number of finished seeds of the cell.
        p_value: the paired Wilcoxon p-value against the reference; ``None`` for the reference itself or without
            pairs.
        n_pairs: the number of (split, case, seed) pairs of the test.
    """

    mean: float
    sd: float | None
    n_seeds: int
    p_value: float | None = None
    n_pairs: int = 0


def seed_mean(result: dict[str, Any], metric: str) -> float:
    """The mean over the cases of one cell result (NaN cases left out); its ``<metric>_mean`` without ``cases``."""
    cases = result.get("cases")
    if not cases:
        return float(result.get(f"{metric}_mean", math.nan))
    values = [float(c[metric]) for c in cases]
    values = [v for v in values if not math.isnan(v)]
    return math.fsum(values) / len(values) if values else math.nan


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``ddof=1``) of the defined values; ``(nan, None)`` when none is.

    Args:
        values: one value per seed, NaN where undefined.
    """
    defined = [v for v in values if not math.isnan(v)]
    if not defined:
        return math.nan, None
    mean = math.fsum(defined) / len(defined)
    return mean, (float(np.std(defined, ddof=1)) if len(defined) > 1 else None)


def _case_values(
    results: Sequence[dict[str, Any]], variant: str, fraction: float, metric: str
) -> dict[tuple[str, str, int], float]:
    return {
        (str(c["split"]), str(c["case"]), int(r["seed"])): float(c[metric])
        for r in results
        if r["variant"] == variant and float(r["fraction"]) == float(fraction)
        for c in r.get("cases") or []
    }


def paired_values(
    results: Sequence[dict[str, Any]], variant: str, reference: str, fraction: float, metric: str
) -> tuple[list[float], list[float]]:
    """The (variant, reference) values of the (split, case, seed) pairs that both define, in sorted pair order.

    Args:
        results: cell results with ``cases``.
        variant: the compared variant.
        reference: the reference variant (e.g. ``vanilla``).
        fraction: the training fraction.
        metric: a metric key of :data:`METRICS`.
    """
    a = _case_values(results, variant, fraction, metric)
    b = _case_values(results, reference, fraction, metric)
    keys = sorted(k for k in a.keys() & b.keys() if not (math.isnan(a[k]) or math.isnan(b[k])))
    return [a[k] for k in keys], [b[k] for k in keys]


def wilcoxon_p(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Two-sided p-value of the Wilcoxon signed-rank test of the paired samples ``x``, ``y``.

    Args:
        x: the variant's values.
        y: the reference's values, paired with ``x``.

    Returns:
        :func:`scipy.stats.wilcoxon`'s p-value (zero differences dropped, its default); ``1.0`` when every
        difference is zero; ``None`` without pairs.
    """
    if len(x) != len(y):
        raise ValueError(f"paired samples differ in length: {len(x)} and {len(y)}.")
    if not x:
        return None
    if all(a == b for a, b in zip(x, y, strict=True)):
        return 1.0
    from scipy.stats import wilcoxon

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small samples: scipy warns about the normal approximation
        return float(wilcoxon(x, y).pvalue)


def significance_mark(p_value: float | None) -> str:
    """``"**"`` for p < 0.01, ``"*"`` for p < 0.05, else ``""``."""
    if p_value is None:
        return ""
    return next((mark for bound, mark in SIGNIFICANCE if p_value < bound), "")


def table_statistics(
    results: Sequence[dict[str, Any]],
    variants: Sequence[str],
    fractions: Sequence[float],
    reference: str = VANILLA,
) -> dict[tuple[str, float, str], ColumnStats]:
    """The :class:`ColumnStats` of every (variant, fraction, metric) with at least one finished seed.

    Args:
        results: cell results (``variant``, ``fraction``, ``seed``, ``cases`` or ``<metric>_mean``).
        variants: the table's variants.
        fractions: the table's training fractions.
        reference: the variant the others are tested against (no tests when it is not among ``variants``).
    """
    out: dict[tuple[str, float, str], ColumnStats] = {}
    for f in fractions:
        for v in variants:
            cell = [r for r in results if r["variant"] == v and float(r["fraction"]) == float(f)]
            if not cell:
                continue
            for key, _, _ in METRICS:
                mean, sd = mean_sd([seed_mean(r, key) for r in cell])
                p, n_pairs = None, 0
                if v != reference and reference in variants:
                    x, y = paired_values(results, v, reference, f, key)
                    p, n_pairs = wilcoxon_p(x, y), len(x)
                out[(v, float(f), key)] = ColumnStats(mean, sd, len({int(r["seed"]) for r in cell}), p, n_pairs)
    return out


def summary_rows(
    results: Sequence[dict[str, Any]],
    variants: Sequence[str],
    fractions: Sequence[float],
    reference: str = VANILLA,
) -> list[dict[str, Any]]:
    """One row per (variant, fraction, metric) of :func:`table_statistics`, for ``summary.csv``.

    Args:
        results, variants, fractions, reference: as in :func:`table_statistics`.

    Returns:
        dicts with ``variant, fraction, metric, mean, sd, n_seeds, p_value, n_pairs`` (``sd`` and ``p_value``
        empty where undefined).
    """
    stats = table_statistics(results, variants, fractions, reference)
    return [
        {
            "variant": v,
            "fraction": f,
            "metric": m,
            "mean": s.mean,
            "sd": "" if s.sd is None else s.sd,
            "n_seeds": s.n_seeds,
            "p_value": "" if s.p_value is None else s.p_value,
            "n_pairs": s.n_pairs,
        }
        for (v, f, m), s in stats.items()
    ]
