# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Small shared utilities: atomic file writes, settings and class checks, and tensor helpers.

- :func:`plain_tensor`: a plain ``torch.Tensor`` from a ``MetaTensor``, tensor or array.
- :func:`unwrap_module`: the module inside ``DistributedDataParallel`` / ``DataParallel``.
- :func:`highest_resolution`: the full-resolution logits of a network output (DynUNet's stacked deep supervision).
- :func:`scaled_learning_rate`: a meta learning rate scaled to a schedule shorter than the authors'.
- :func:`add_to_output`: extra values (an extra step's loss) in an engine's iteration output.
"""

from __future__ import annotations

from .atomic import atomic_open, atomic_write_bytes, atomic_write_text
from .classes import check_rare_classes
from .engine_output import add_to_output
from .names import index_by_name
from .schedule import scaled_learning_rate
from .settings import check_int_setting, check_settings
from .tensors import highest_resolution, plain_tensor, unwrap_module

__all__ = [
    "add_to_output",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_int_setting",
    "check_rare_classes",
    "check_settings",
    "highest_resolution",
    "index_by_name",
    "plain_tensor",
    "scaled_learning_rate",
    "unwrap_module",
]
