# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Experiments across variants, training fractions and seeds (``python -m monai_imbalance.experiments table``), the
estimation table over seeds (``... estimation``), their committed results and the README tables generated from them
(``python -m monai_imbalance.experiments render``)."""

from __future__ import annotations

from .estimation import estimation_markdown, estimation_statistics, run_estimation_table
from .headline import headline_markdown
from .markdown import format_table
from .render import render_readme
from .results import load_cells, results_markdown, write_results_dir
from .statistics import METRICS, VANILLA, paired_values, table_statistics, wilcoxon_p
from .table import cell_dir, config_files, load_cell, run_cell, run_table, write_results

__all__ = [
    "METRICS",
    "VANILLA",
    "cell_dir",
    "config_files",
    "estimation_markdown",
    "estimation_statistics",
    "format_table",
    "headline_markdown",
    "load_cell",
    "load_cells",
    "paired_values",
    "render_readme",
    "results_markdown",
    "run_cell",
    "run_estimation_table",
    "run_table",
    "table_statistics",
    "wilcoxon_p",
    "write_results",
    "write_results_dir",
]
