# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Networks for context label learning (CoLab; Li, Kamnitsas, Ouyang, Chen, Glocker, IEEE TMI 2023).

- :func:`context_generator` / :func:`context_generator_like`: the context-label generator, a MONAI ``DynUNet`` with
  ``t`` outputs and no deep supervision.
- :func:`check_context_networks`: the segmenter must have ``K = C + t - 1`` outputs, the generator ``t``.
- :func:`context_channels`, :func:`context_channel_indices`, :func:`foreground_channel_indices`,
  :func:`context_channel`: the channel layout ``[ctx_0, FG_1 .. FG_{C-1}, ctx_1 .. ctx_{t-1}]``.
- :func:`fold_context_channels`: ``K`` channels -> the ``C`` original classes (the one folding rule: context
  probabilities add up to the background's, ``logsumexp`` of their logits).
"""

from __future__ import annotations

from .context_channels import (
    FOLD_REDUCTIONS,
    check_num_classes,
    check_num_context,
    context_channel,
    context_channel_indices,
    context_channels,
    fold_context_channels,
    foreground_channel_indices,
)
from .context_generator import check_context_networks, context_generator, context_generator_like

__all__ = [
    "FOLD_REDUCTIONS",
    "check_context_networks",
    "check_num_classes",
    "check_num_context",
    "context_channel",
    "context_channel_indices",
    "context_channels",
    "context_generator",
    "context_generator_like",
    "fold_context_channels",
    "foreground_channel_indices",
]
