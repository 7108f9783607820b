# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The headline table of several results folders (the repository README's "Does it work?"): chosen rows of each
table beside the seed's numbers, read from the committed files, never typed.

A headline folder holds ``headline.json``::

    {"rows": [
        {"table": "II, asymmetric regularisation", "results": "results/table2_asymmetric_brain_lesion",
         "variant": "asymmetric_combination", "fraction": 0.05, "metrics": ["dice", "sensitivity", "precision"],
         "seed": "63.4 DSC, 63.1 SEN (tumour core)"},
        {"table": "estimation", "results": "results/table_estimation_brain_lesion", "estimator": "cs-atc",
         "columns": ["synthetic", "natural"], "seed": "CS-ATC 1.6 (ATLAS, synthetic)"}
    ]}

``results`` is relative to the repository root (the folder's grandparent). A comparison row shows each metric as
mean ± sd over the seeds (:func:`~monai_imbalance.experiments.statistics.table_statistics`), its paired test against
``vanilla`` and the seeds finished; an estimation row the MAE of the estimator in each column, its test against the
global twin (:func:`~monai_imbalance.experiments.estimation.estimation_statistics`). A row whose results are missing
reads "not run yet".
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .estimation import estimation_statistics
from .results import load_cells
from .statistics import METRICS, VANILLA, significance_mark, table_statistics

__all__ = ["HEADLINE", "headline_markdown"]

#: The spec file of a headline folder.
HEADLINE = "headline.json"
_NAMES = {key: header for key, header, _ in METRICS}


def _value(name: str, mean: float, sd: float | None) -> str:
    return f"{name} {100 * mean:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def _versus(mean: float, other: float, p_value: float, other_name: str) -> str:
    mark = significance_mark(p_value).replace("*", "\\*")
    return f" ({'above' if mean > other else 'below'} {other_name}{', ' + mark if mark else ', n.s.'})"


def _seed_text(n: int, total: int) -> str:
    return f"{n} seed{'s' * (n != 1)}" + (f" of {total}" if n < total else "")


def _comparison(root: Path, row: Mapping[str, Any]) -> str:
    folder = root / row["results"]
    cells = load_cells(folder) if folder.is_dir() else []
    variant, fraction = row["variant"], float(row["fraction"])
    if not any(c["variant"] == variant and float(c["fraction"]) == fraction for c in cells):
        return "not run yet"
    variants = sorted({c["variant"] for c in cells} | {VANILLA})
    stats = table_statistics(cells, variants, [fraction])
    provenance = folder / "provenance.json"
    planned = json.loads(provenance.read_text()).get("seeds", []) if provenance.is_file() else []
    total = len(set(planned) | {int(c["seed"]) for c in cells})
    parts = []
    for key in row.get("metrics", ["dice", "sensitivity", "precision"]):
        s = stats[(variant, fraction, key)]
        text = _value(_NAMES[key], s.mean, s.sd)
        ref = stats.get((VANILLA, fraction, key))
        if variant != VANILLA and ref is not None and s.p_value is not None:
            text += _versus(s.mean, ref.mean, s.p_value, VANILLA)
        parts.append(text)
    n = stats[(variant, fraction, "dice")].n_seeds
    return ", ".join(parts) + f"; {_seed_text(n, max(total, n))}"


def _estimation(root: Path, row: Mapping[str, Any]) -> str:
    folder = root / row["results"]
    try:
        estimators, columns, stats = estimation_statistics(folder)
    except FileNotFoundError:
        return "not run yet"
    est = row["estimator"]
    if est not in estimators:
        return "not run yet"
    headers = dict(columns)
    parts = []
    for key in row.get("columns", ["synthetic", "natural"]):
        s = stats[(est, key)]
        if math.isnan(s["mean"]):
            continue
        text = _value(headers[key], s["mean"], s["sd"])
        if s["twin"] is not None and s["p_value"] is not None:
            text += _versus(s["mean"], stats[(s["twin"], key)]["mean"], s["p_value"], s["twin"])
        parts.append(text)
    n = stats[(est, columns[0][0])]["n_seeds"]
    return f"MAE {', '.join(parts)}; {_seed_text(n, n)}"


def headline_markdown(folder: str | os.PathLike) -> str:
    """The headline table of a folder with ``headline.json`` (see the module doc), then its legend.

    Raises:
        FileNotFoundError: without ``headline.json``.
        ValueError: a row without ``table``, ``results`` or ``seed``, or with neither ``variant`` nor ``estimator``.
    """
    folder = Path(folder)
    spec_path = folder / HEADLINE
    if not spec_path.is_file():
        raise FileNotFoundError(f"'{spec_path}' not found.")
    spec = json.loads(spec_path.read_text())
    root = folder.resolve().parents[1]
    lines = ["| table | row | this repository | the seed (its task) |", "| --- | --- | --- | --- |"]
    for i, row in enumerate(spec.get("rows", [])):
        missing = [k for k in ("table", "results", "seed") if k not in row]
        if missing or ("variant" in row) == ("estimator" in row):
            raise ValueError(
                f"'{spec_path}': row {i} needs table, results, seed and one of variant / estimator (missing: "
                f"{', '.join(missing) or 'variant or estimator'})."
            )
        if "variant" in row:
            label = f"{row['variant']} @ {float(row['fraction']):g}"
            value = _comparison(root, row)
        else:
            label, value = row["estimator"], _estimation(root, row)
        lines.append(f"| {row['table']} | {label} | {value} | {row['seed']} |")
    legend = spec.get(
        "legend",
        "Mean ± sd over the seeds finished (the bundle READMEs hold every row, seed and case); \\* p < 0.05, "
        "\\*\\* p < 0.01, n.s.: not significant (paired Wilcoxon signed-rank tests: against vanilla over the "
        "(case, seed) pairs; an estimator against its global twin over the (condition, seed) pairs).",
    )
    return "\n".join(lines) + f"\n\n{legend}\n"
