# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Plots as PNG files (matplotlib, Agg backend, imported only inside the plotting functions)."""

from __future__ import annotations

from .logit_plots import plot_margin_histograms, save_figure

__all__ = ["plot_margin_histograms", "save_figure"]
