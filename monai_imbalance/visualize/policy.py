# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The evolution of learned augmentation policies over training: one panel per class group, one line per operation.

Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data augmentation in
segmentation", IEEE TMI 2023 (experiments on the learned policies): the paper's point is that the learned foreground
policy applies stronger transformations than the background one. The figure shows, for each class group (e.g.
background- and foreground-centred patches), the probability that each operation is applied, ``1 - P^G_o(identity)``,
against the epoch; optionally a last panel with the probabilities of selected test-time transforms (e.g. the current top
K).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["plot_policy_evolution"]


def _series(name: str, values: Sequence[float], length: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape[0] != length:
        raise ValueError(f"{name} has {arr.shape[0]} values but there are {length} epochs.")
    return arr


def plot_policy_evolution(
    epochs: Sequence[int],
    applied: Mapping[str, Mapping[str, Sequence[float]]],
    test_time: Mapping[str, Sequence[float]] | None = None,
    title: str = "",
) -> Any:
    """Draw the per-operation probabilities of each class group's policy over the epochs.

    Args:
        epochs: ``(E,)`` the epochs recorded (x axis).
        applied: ``{group: {op: (E,) probability that op is applied}}``, i.e. ``1 - P(identity)`` per epoch; one
            panel per group (e.g. ``"background"``, ``"foreground"``), one line per operation, same colour for the
            same operation in every panel.
        test_time: optional ``{transform: (E,) probability}`` of test-time transforms, drawn in an extra panel.
        title: figure title.

    Returns:
        the matplotlib ``Figure``; its axes are the group panels in order, then the test-time panel; each panel holds
        one line per operation (transform), labelled with its name.

    Raises:
        ValueError: no epoch, no group, a group without operations, or a series whose length is not ``E``.
    """
    x = np.asarray(epochs, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("epochs is empty: record at least one epoch before plotting.")
    if not applied:
        raise ValueError("applied has no class group.")
    panels: list[tuple[str, dict[str, np.ndarray]]] = []
    for group, ops in applied.items():
        if not ops:
            raise ValueError(f"group {group!r} has no operation.")
        panels.append((f"{group} policy", {op: _series(f"{group}/{op}", v, x.size) for op, v in ops.items()}))
    if test_time:
        panels.append(
            ("test-time policy (probability)", {t: _series(f"test_time/{t}", v, x.size) for t, v in test_time.items()})
        )

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ops_order = list(dict.fromkeys(op for _, ops in panels[: len(applied)] for op in ops))
    cmap = plt.get_cmap("tab20")
    colours = {op: cmap(i % cmap.N) for i, op in enumerate(ops_order)}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.8, 3.8), sharey=True, squeeze=False)
    marker = "o" if x.size == 1 else None
    for i, (ax, (name, series)) in enumerate(zip(axes[0], panels, strict=True)):
        is_test_time = test_time and i == len(panels) - 1
        for label, y in series.items():
            colour = None if is_test_time else colours[label]
            ax.plot(x, y, label=label, color=colour, marker=marker, linewidth=1.5)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
        if is_test_time:
            ax.legend(fontsize=6, loc="upper right")
    axes[0][0].set_ylabel("P(applied) = 1 - P(identity)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0.0, 0.0, 1.0 - 1.6 / fig.get_figwidth(), 1.0))
    return fig
