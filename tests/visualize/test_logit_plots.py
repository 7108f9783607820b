# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The logit-margin histogram is a real figure: one histogram per split, the boundary, the means, a PNG on disk."""

from __future__ import annotations

import numpy as np

from monai_imbalance.visualize import plot_margin_histograms, save_figure


def test_histogram_figure_has_both_splits_boundary_and_means(tmp_path):
    import matplotlib.image

    rng = np.random.default_rng(0)
    samples = {"train": rng.normal(3.0, 1.0, 2000), "validation": rng.normal(0.5, 1.5, 1500)}
    fig = plot_margin_histograms(samples, title="lesion", bins=40)
    (ax,) = fig.axes
    histograms = [p for p in ax.patches if not p.get_label().startswith("_")]  # one filled step polygon per split
    assert len(histograms) == 2 and all(len(p.get_xy()) > 40 for p in histograms)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("train (n=2000") and legend[1].startswith("validation (n=1500")
    assert "decision boundary" in legend
    xs = sorted(round(float(line.get_xdata()[0]), 3) for line in ax.get_lines())  # boundary + 2 means
    assert xs == sorted([0.0, round(float(samples["train"].mean()), 3), round(float(samples["validation"].mean()), 3)])
    path = save_figure(fig, tmp_path / "sub" / "fig.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100 and image[..., :3].std() > 0.05  # not a blank canvas
    assert not list(path.parent.glob(".*tmp*"))


def test_empty_split_still_plots():
    fig = plot_margin_histograms({"train": np.array([1.0, 2.0]), "test": np.empty(0)})
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("test (n=0") for t in legend)
