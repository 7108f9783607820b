# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Experiments across variants and training fractions (``python -m monai_imbalance.experiments table``)."""

from __future__ import annotations

from .table import METRICS, VANILLA, cell_dir, format_table, run_cell, run_table, write_results

__all__ = ["METRICS", "VANILLA", "cell_dir", "format_table", "run_cell", "run_table", "write_results"]
