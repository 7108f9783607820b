# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The CoLab context-label generator ``g_phi`` (a MONAI DynUNet with ``t`` outputs) and the segmenter/generator check.

Li, Kamnitsas, Ouyang, Chen, Glocker, "Context label learning: improving background class representations in semantic
segmentation", IEEE TMI 2023 (method section: the task generator): the task generator has the segmenter's architecture
(nnU-Net v1 ``Generic_UNet``, reproduced by :class:`monai.networks.nets.DynUNet`) with ``t`` output channels and no deep
supervision; ``softmax(g_phi(x))`` over its ``t`` channels gives the soft context labels of every voxel. The segmenter
``f_theta`` has ``K = C + t - 1`` outputs (:func:`~monai_imbalance.networks.context_channels`) and deep supervision.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import DynUNet
from torch import nn

from .context_channels import check_num_classes, check_num_context

__all__ = ["check_context_networks", "context_generator", "context_generator_like"]


def context_generator(
    num_context: int,
    spatial_dims: int,
    in_channels: int,
    kernel_size: Sequence[Sequence[int] | int],
    strides: Sequence[Sequence[int] | int],
    upsample_kernel_size: Sequence[Sequence[int] | int],
    filters: Sequence[int] | None = None,
    dropout: tuple | str | float | None = None,
    norm_name: tuple | str = ("INSTANCE", {"affine": True}),
    act_name: tuple | str = ("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
    res_block: bool = False,
    trans_bias: bool = False,
) -> DynUNet:
    """The context-label generator: a :class:`~monai.networks.nets.DynUNet` with ``t`` outputs, no deep supervision.

    Pass the segmenter's architecture arguments (all but ``out_channels`` and the deep-supervision ones) so that both
    networks share the architecture, as in the paper; or use :func:`context_generator_like` on a built segmenter.

    Args:
        num_context: ``t >= 1``, the number of context classes (the generator's output channels).
        spatial_dims, in_channels, kernel_size, strides, upsample_kernel_size, filters, dropout, norm_name, act_name,
            res_block, trans_bias: as in :class:`monai.networks.nets.DynUNet` (same defaults: nnU-Net's instance norm
            with affine parameters and LeakyReLU(0.01)).

    Returns:
        a DynUNet mapping ``(B, in_channels, *spatial)`` to ``(B, t, *spatial)`` context logits (in training mode
        too: deep supervision is off, so its output is never stacked).

    Raises:
        ValueError: ``num_context < 1`` (and DynUNet's own errors for inconsistent architecture arguments).

    Example (bundle config)::

        "generator": {"_target_": "monai_imbalance.networks.context_generator", "num_context": "@num_context",
                      "spatial_dims": 3, "in_channels": 1, "kernel_size": [3, 3, 3, 3],
                      "strides": [1, 2, 2, 2], "upsample_kernel_size": [2, 2, 2]}
    """
    t = check_num_context(num_context, "context_generator")
    return DynUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=t,
        kernel_size=kernel_size,
        strides=strides,
        upsample_kernel_size=upsample_kernel_size,
        filters=filters,
        dropout=dropout,
        norm_name=norm_name,
        act_name=act_name,
        deep_supervision=False,
        res_block=res_block,
        trans_bias=trans_bias,
    )


def context_generator_like(segmenter: DynUNet, num_context: int, width: float = 1.0) -> DynUNet:
    """Build the generator with the architecture of a built :class:`~monai.networks.nets.DynUNet` segmenter.

    The architecture arguments are read from the segmenter's attributes (``spatial_dims``, ``in_channels``,
    ``kernel_size``, ``strides``, ``upsample_kernel_size``, ``filters``, ``dropout``, ``norm_name``, ``act_name``,
    residual blocks, ``trans_bias``); the output has ``t`` channels and no deep supervision. The weights are freshly
    initialised (the generator is trained from scratch, as the authors do).

    Args:
        segmenter: the built segmenter.
        num_context: ``t >= 1``.
        width: a factor on the segmenter's filters (rounded, at least 1 each). 1 (default) is the paper's set-up,
            both networks with the same architecture; a smaller generator (0.5: about a quarter of
            the segmenter's convolution cost; the bundle's ``colab_t2_fast`` takes 0.25) is a departure from the
            paper that lowers CoLab's cost per iteration.

    Raises:
        ValueError: ``num_context < 1``, ``width`` not a number in ``(0, 1]``, or ``segmenter`` is not a DynUNet.
    """
    if not isinstance(segmenter, DynUNet):
        raise ValueError(
            f"context_generator_like: segmenter must be a monai.networks.nets.DynUNet, got {type(segmenter).__name__}; "
            "use context_generator(...) with explicit architecture arguments instead."
        )
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0.0 < float(width) <= 1.0:
        raise ValueError(f"context_generator_like: width must be a number in (0, 1], got width={width!r}.")
    from monai.networks.blocks.dynunet_block import UnetResBlock

    return context_generator(
        num_context=num_context,
        spatial_dims=segmenter.spatial_dims,
        in_channels=segmenter.in_channels,
        kernel_size=segmenter.kernel_size,
        strides=segmenter.strides,
        upsample_kernel_size=segmenter.upsample_kernel_size,
        filters=[max(1, round(f * float(width))) for f in segmenter.filters],
        dropout=segmenter.dropout,
        norm_name=segmenter.norm_name,
        act_name=segmenter.act_name,
        res_block=segmenter.conv_block is UnetResBlock,
        trans_bias=segmenter.trans_bias,
    )


def _attr(module: nn.Module, attr: str, role: str) -> int:
    value = getattr(module, attr, None)
    if value is None:
        raise ValueError(
            f"check_context_networks: cannot read {attr!r} of the {role} ({type(module).__name__}); pass a "
            f"monai.networks.nets.DynUNet or a module with an integer '{attr}' attribute."
        )
    return int(value)


def check_context_networks(
    segmenter: nn.Module, generator: nn.Module | None, num_classes: int, num_context: int
) -> int:
    """Check a CoLab segmenter / generator pair against ``C`` and ``t``; return ``K = C + t - 1``.

    Reads ``out_channels`` (and, where both have them, ``in_channels`` and ``spatial_dims``) from the modules, as
    :class:`~monai.networks.nets.DynUNet` stores them. Call it when a trainer or a bundle is set up, so that a
    configuration whose channel numbers disagree fails with a clear message instead of a shape error deep inside the
    loss.

    Args:
        segmenter: ``f_theta``, must have ``out_channels == C + t - 1``.
        generator: ``g_phi``, must have ``out_channels == t`` and no deep supervision; ``None`` (context from a fixed
            map, the baselines) checks the segmenter only.
        num_classes: ``C >= 2`` (background included).
        num_context: ``t >= 1``.

    Returns:
        ``K``, the segmenter's number of output channels.

    Raises:
        ValueError: invalid ``C`` or ``t``; an ``out_channels`` that does not match; a generator with deep
            supervision; different ``in_channels`` or ``spatial_dims``; a module without ``out_channels``.
    """
    name = "check_context_networks"
    c = check_num_classes(num_classes, name)
    t = check_num_context(num_context, name)
    k = c + t - 1
    seg_out = _attr(segmenter, "out_channels", "segmenter")
    if seg_out != k:
        raise ValueError(
            f"{name}: the segmenter has out_channels={seg_out}, but num_classes={c} and num_context={t} need "
            f"K = C + t - 1 = {k} output channels ([ctx_0, FG_1..FG_{c - 1}, ctx_1..ctx_{t - 1}])."
        )
    if generator is None:
        return k
    gen_out = _attr(generator, "out_channels", "generator")
    if gen_out != t:
        raise ValueError(
            f"{name}: the generator has out_channels={gen_out}, but num_context={t} needs t = {t} output channels."
        )
    if bool(getattr(generator, "deep_supervision", False)):
        raise ValueError(
            f"{name}: the generator has deep_supervision=True; it must output (B, t, *spatial) logits "
            "(build it with context_generator)."
        )
    for attr in ("in_channels", "spatial_dims"):
        a, b = getattr(segmenter, attr, None), getattr(generator, attr, None)
        if a is not None and b is not None and int(a) != int(b):
            raise ValueError(f"{name}: the segmenter has {attr}={a} but the generator has {attr}={b}; they must match.")
    return k
