# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Histograms of logit margins per split, the figure of Li, Kamnitsas, Glocker, IEEE TMI 2021 (Figs. 1, 5-7).

For one class ``c``, each split's sampled margins ``m = z_c - max_{k != c} z_k`` of voxels labelled ``c`` are drawn as
a density histogram on shared bins, with the decision boundary at ``m = 0`` and each split's mean as a dashed line
in the split's colour. A rare class whose test histogram sits left of its training one (towards or across 0) is
overfitted: the under-segmentation the paper explains.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from monai_imbalance.utils import atomic_open

__all__ = ["plot_margin_histograms", "save_figure"]

_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def plot_margin_histograms(
    samples: Mapping[str, np.ndarray],
    title: str = "",
    bins: int = 100,
    ax: Any | None = None,
    xlabel: str = "margin z_c - max_(k!=c) z_k",
) -> Any:
    """One density histogram per split on shared bins, the boundary at 0 and the split means marked.

    Args:
        samples: ``{split: (n,) margins}`` (e.g. ``{"train": ..., "validation": ...}``); an empty split is listed in
            the legend with ``n=0`` and draws no bars.
        title: axes title.
        bins: number of shared bins.
        ax: matplotlib axes to draw in (default a new ``6.4 x 4`` figure).
        xlabel: x-axis label.

    Returns:
        the matplotlib ``Figure`` (its first axes holds one histogram patch container per split).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
    else:
        fig = ax.figure
    arrays = {s: np.asarray(x, dtype=np.float64).ravel() for s, x in samples.items()}
    finite = [x[np.isfinite(x)] for x in arrays.values()]
    values = np.concatenate(finite) if finite else np.empty(0)
    low, high = (float(values.min()), float(values.max())) if values.size else (-1.0, 1.0)
    low, high = min(low, 0.0), max(high, 0.0)
    if high - low < 1e-6:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    for i, (split, x) in enumerate(arrays.items()):
        x = x[np.isfinite(x)]
        colour = _COLOURS[i % len(_COLOURS)]
        mean = float(x.mean()) if x.size else float("nan")
        label = f"{split} (n={x.size}, mean={mean:.2f}, <0: {(x < 0).mean() if x.size else float('nan'):.1%})"
        ax.hist(x, bins=edges, density=bool(x.size), histtype="stepfilled", alpha=0.4, color=colour, label=label)
        if x.size:
            ax.axvline(mean, color=colour, linestyle="--", linewidth=1.5)
    ax.axvline(0.0, color="black", linewidth=1.5, label="decision boundary")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save ``fig`` as a PNG atomically (temporary file in the same folder, then ``os.replace``) and close it.

    Args:
        fig: a matplotlib figure.
        path: destination ``.png``; its folder is created.
        dpi: resolution.

    Returns:
        the destination path.
    """
    import matplotlib.pyplot as plt

    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)
