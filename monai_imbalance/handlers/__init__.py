# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Ignite handlers for MONAI engines: atomic checkpoints and resume, evaluation reports."""

from __future__ import annotations

from .checkpoint import BestModelSaver, LatestCheckpointSaver, ResumeFromLatestCheckpoint, atomic_torch_save
from .segmentation_report import SegmentationReportHandler

__all__ = [
    "BestModelSaver",
    "LatestCheckpointSaver",
    "ResumeFromLatestCheckpoint",
    "SegmentationReportHandler",
    "atomic_torch_save",
]
