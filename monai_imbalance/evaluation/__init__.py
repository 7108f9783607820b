# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Evaluation: per-case, per-class DSC / sensitivity / precision / HD95 and their tables (CSV + Markdown).

- :func:`segmentation_case_metrics`: one case's metrics per class, from :mod:`monai.metrics`, with the documented
  rules for empty classes (see :mod:`monai_imbalance.evaluation.metrics`).
- :class:`SegmentationReport`: one row per (case, class), NaN-aware per-(split, class) summaries, and
  ``metrics_per_case.csv`` / ``metrics_summary.csv`` / ``metrics_summary.md``.

The ignite handler that fills a report from an evaluator is
:class:`monai_imbalance.handlers.segmentation_report.SegmentationReportHandler`.
"""

from __future__ import annotations

from .metrics import COUNT_NAMES, METRIC_NAMES, segmentation_case_metrics
from .report import CASE_COLUMNS, SUMMARY_COLUMNS, SegmentationReport

__all__ = [
    "CASE_COLUMNS",
    "COUNT_NAMES",
    "METRIC_NAMES",
    "SUMMARY_COLUMNS",
    "SegmentationReport",
    "segmentation_case_metrics",
]
