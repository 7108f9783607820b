# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Plots as PNG files (matplotlib, Agg backend, imported only inside the plotting functions)."""

from __future__ import annotations

from .context_montage import montage_slices, plot_context_montage
from .estimation_plots import plot_estimated_vs_true
from .logit_plots import plot_margin_histograms, save_figure
from .policy import plot_policy_evolution

__all__ = [
    "montage_slices",
    "plot_context_montage",
    "plot_estimated_vs_true",
    "plot_margin_histograms",
    "plot_policy_evolution",
    "save_figure",
]
