# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Shared settings of the bundle tests: tiny enough that a training epoch takes about a second on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import pytest

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


@pytest.fixture(scope="session")
def tiny_overrides() -> dict:
    """Bundle overrides for tests: 16^3 patches, a 3-level DynUNet with 8-16-32 filters, no loader workers."""
    return {
        "epochs": 2,
        "val_interval": 1,
        "patch_size": [16, 16, 16],
        "filters": [8, 16, 32],
        "batch_size": 2,
        "num_samples": 2,
        "num_workers": 0,
    }
