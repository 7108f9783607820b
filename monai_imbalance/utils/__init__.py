# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Small shared utilities."""

from __future__ import annotations

from .atomic import atomic_open, atomic_write_bytes, atomic_write_text
from .classes import check_rare_classes
from .names import index_by_name
from .settings import check_settings

__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_rare_classes",
    "check_settings",
    "index_by_name",
]
