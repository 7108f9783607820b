# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tensor and module helpers shared by the engines, handlers and augmentation code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["highest_resolution", "plain_tensor", "unwrap_module"]


def plain_tensor(x: Any, dtype: torch.dtype | None = None, detach: bool = False) -> torch.Tensor:
    """A plain ``torch.Tensor`` from a MONAI ``MetaTensor``, a tensor or an array.

    A ``MetaTensor`` loses its wrapper (``as_tensor()``, the same memory): its meta data mean nothing for mixed,
    perturbed or reduced values, and indexing a batched ``MetaTensor`` collates them. Anything else goes through
    ``torch.as_tensor`` (a plain tensor comes back as the same object).

    Args:
        x: a ``MetaTensor``, ``torch.Tensor``, numpy array or nested sequence of numbers.
        dtype: cast to this dtype (no copy when ``x`` already has it); ``None`` keeps the dtype.
        detach: detach the result from the autograd graph.

    Returns:
        a ``torch.Tensor`` (never a ``MetaTensor``) with the shape of ``x``.

    Example::

        image = plain_tensor(batch["image"], detach=True)  # (B, C, *spatial), meta data dropped
    """
    t = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t.detach() if detach else t


def unwrap_module(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel``; any other object is returned as is.

    Functional calls (``torch.func.functional_call``), probes that must not trigger DDP's gradient reduction and
    ``state_dict`` saving work on the wrapped module, whose parameter names carry no ``module.`` prefix.

    Args:
        network: a module, possibly wrapped.

    Returns:
        ``network.module`` for a DDP / DataParallel wrapper, else ``network``.
    """
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return network.module if isinstance(network, wrappers) else network


def highest_resolution(pred: torch.Tensor | Sequence[torch.Tensor], ndim: int | None = None) -> torch.Tensor:
    """The full-resolution logits ``(B, K, *spatial)`` of a segmentation network's output.

    MONAI's :class:`~monai.networks.nets.DynUNet` with ``deep_supervision=True`` returns, in training mode, its output
    and the deep-supervision heads upsampled to the output size stacked along dim 1: ``(B, 1 + deep_supr_num, K,
    *spatial)``, index 0 being the full-resolution output; in eval mode it returns ``(B, K, *spatial)``. Networks whose
    heads keep their own resolution return a list or tuple, highest resolution first.

    - a list or tuple: its first element;
    - a tensor with ``ndim + 1`` dimensions: a stacked deep-supervision output, ``pred[:, 0]``;
    - otherwise ``pred`` itself.

    Args:
        pred: the network output: ``(B, K, *spatial)``, stacked ``(B, heads, K, *spatial)`` or a list / tuple of
            ``(B, K, *spatial_s)``.
        ndim: the number of dimensions of plain logits, ``2 + spatial dims`` (e.g. ``image.ndim`` or ``label.ndim``
            of the batch). ``None``: a tensor is returned unchanged (a stacked output cannot be told apart), only a
            list / tuple is unpacked.

    Returns:
        the ``(B, K, *spatial)`` full-resolution logits (a view, never a copy; a ``MetaTensor`` stays one).

    Example::

        net = DynUNet(3, 1, 3, kernels, strides, strides[1:], deep_supervision=True, deep_supr_num=2).train()
        logits = highest_resolution(net(image), image.ndim)  # (B, 3, *spatial), not (B, 3, 3, *spatial)
    """
    if isinstance(pred, (list, tuple)):
        pred = pred[0]
    if ndim is not None and pred.ndim == ndim + 1:
        pred = pred[:, 0]
    return pred
