# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Ignite handlers for MONAI engines: atomic checkpoints and resume, evaluation reports, logit distributions,
context-label montages, augmentation-policy plots, performance estimation, gradient-norm clipping."""

from __future__ import annotations

from .checkpoint import BestModelSaver, LatestCheckpointSaver, ResumeFromLatestCheckpoint, atomic_torch_save
from .context_montage import ContextLabelMontageHandler
from .gradient_clipping import GradientNormClipping
from .logit_distribution import (
    LogitDistributionHandler,
    LogitMarginSampler,
    format_margin_summary,
    logit_margins,
    summarize_margins,
    write_margin_report,
)
from .performance_estimation import ESTIMATION_MODES, PerformanceEstimationHandler, format_estimates, write_estimates
from .policy_plot import PolicyPlotHandler
from .segmentation_report import SegmentationReportHandler
from .validation import FinalEpochValidationHandler

__all__ = [
    "BestModelSaver",
    "ContextLabelMontageHandler",
    "ESTIMATION_MODES",
    "FinalEpochValidationHandler",
    "GradientNormClipping",
    "LatestCheckpointSaver",
    "LogitDistributionHandler",
    "LogitMarginSampler",
    "PerformanceEstimationHandler",
    "PolicyPlotHandler",
    "ResumeFromLatestCheckpoint",
    "SegmentationReportHandler",
    "atomic_torch_save",
    "format_estimates",
    "format_margin_summary",
    "logit_margins",
    "summarize_margins",
    "write_estimates",
    "write_margin_report",
]
