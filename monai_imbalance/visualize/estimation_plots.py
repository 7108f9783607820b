# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Estimated vs true Dice per test condition, one panel per estimator: the scatter of Li, Kamnitsas, Islam, Chen,
Glocker, "Estimating Model Performance under Domain Shifts with Class-Specific Confidence Scores", MICCAI 2022.

Each point is one test condition (and foreground class): the mean estimated Dice over its cases against the mean true
Dice. Synthetic shifts are coloured by shift type, their marker size grows with the severity; the unshifted test set
is a black circle, natural shifts black stars. Points on the diagonal are perfect estimates; the panel title gives
the estimator's MAE over the synthetic conditions and the natural ones (Dice points).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["plot_estimated_vs_true"]

_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


def plot_estimated_vs_true(
    conditions: Sequence[Mapping[str, Any]], estimators: Sequence[str] | None = None, columns: int = 4
) -> Any:
    """One scatter panel per estimator of the per-condition mean estimated vs true Dice.

    Args:
        conditions: rows with ``condition``, ``kind`` (``identity`` / ``synthetic`` / ``natural``), ``shift``,
            ``severity``, ``estimator``, ``estimated`` and ``true`` (the benchmark's ``conditions.csv``).
        estimators: the panels, in order (default every estimator in the rows).
        columns: panels per row.

    Returns:
        the matplotlib ``Figure`` (one axes per estimator, then hidden spare axes).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(estimators) if estimators is not None else list(dict.fromkeys(str(r["estimator"]) for r in conditions))
    if not names:
        raise ValueError("plot_estimated_vs_true: no estimator to plot (empty conditions).")
    shifts = list(dict.fromkeys(str(r["shift"]) for r in conditions if r["kind"] == "synthetic"))
    colour = {s: _COLOURS[i % len(_COLOURS)] for i, s in enumerate(shifts)}
    columns = max(1, min(int(columns), len(names)))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index >= len(names):
            ax.set_visible(False)
            continue
        est = names[index]
        mine = [r for r in conditions if str(r["estimator"]) == est]
        errors: dict[str, list[float]] = {"synthetic": [], "natural": []}
        for r in mine:
            x, y, kind = float(r["true"]), float(r["estimated"]), str(r["kind"])
            if kind in errors:
                errors[kind].append(abs(x - y))
            if kind == "synthetic":
                size = 12 + 10 * int(r["severity"])
                ax.scatter(x, y, s=size, color=colour[str(r["shift"])], alpha=0.8, edgecolors="none")
            elif kind == "natural":
                ax.scatter(x, y, s=120, marker="*", color="black")
            else:
                ax.scatter(x, y, s=40, marker="o", facecolors="none", edgecolors="black")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        syn = 100 * sum(errors["synthetic"]) / len(errors["synthetic"]) if errors["synthetic"] else math.nan
        nat = 100 * sum(errors["natural"]) / len(errors["natural"]) if errors["natural"] else math.nan
        ax.set_title(f"{est}: MAE syn {syn:.1f}, nat {nat:.1f}", fontsize=9)
        if index % columns == 0:
            ax.set_ylabel("estimated Dice")
        if index >= (rows - 1) * columns or index + columns >= len(names):
            ax.set_xlabel("true Dice")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colour[s], label=s) for s in shifts] + [
        plt.Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="black", label="no shift"),
        plt.Line2D([], [], marker="*", linestyle="", color="black", markersize=10, label="natural"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
