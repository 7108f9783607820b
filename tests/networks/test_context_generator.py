# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The CoLab generator (DynUNet, t outputs, no deep supervision) and the segmenter/generator channel check."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DynUNet

from monai_imbalance.networks import check_context_networks, context_generator, context_generator_like

ARCH = dict(spatial_dims=2, in_channels=2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2])


def _segmenter(out_channels, **kw):
    return DynUNet(out_channels=out_channels, filters=[4, 8, 8], **ARCH, **kw)


@pytest.mark.parametrize("num_context", [1, 3])
def test_generator_has_t_outputs_and_no_deep_supervision(num_context):
    gen = context_generator(num_context, filters=[4, 8, 8], **ARCH)
    assert isinstance(gen, DynUNet) and gen.out_channels == num_context and not gen.deep_supervision
    gen.train()
    out = gen(torch.randn(2, 2, 16, 16))
    assert out.shape == (2, num_context, 16, 16)  # never stacked, even in training mode


def test_generator_like_copies_the_architecture():
    seg = _segmenter(4, deep_supervision=True, deep_supr_num=1, res_block=True)
    gen = context_generator_like(seg, 2)
    reference = DynUNet(out_channels=2, filters=[4, 8, 8], res_block=True, **ARCH)
    shapes = {k: v.shape for k, v in gen.state_dict().items()}
    assert shapes == {k: v.shape for k, v in reference.state_dict().items()}
    seg_shapes = {k: v.shape for k, v in seg.state_dict().items() if "deep_supervision" not in k}
    differing = {k for k in shapes if shapes[k] != seg_shapes[k]}
    assert differing and all(k.startswith("output_block") for k in differing)  # only the output layer differs
    assert check_context_networks(seg, gen, num_classes=3, num_context=2) == 4


def test_generator_like_width_scales_the_filters():
    seg = _segmenter(4, res_block=True)
    gen = context_generator_like(seg, 2, width=0.5)
    reference = DynUNet(out_channels=2, filters=[2, 4, 4], res_block=True, **ARCH)
    assert {k: v.shape for k, v in gen.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert gen(torch.randn(1, 2, 16, 16)).shape == (1, 2, 16, 16)
    assert list(context_generator_like(seg, 2, width=0.1).filters) == [1, 1, 1]  # at least one filter each


def test_generator_like_rejects_non_dynunet_and_bad_width():
    with pytest.raises(ValueError, match="DynUNet"):
        context_generator_like(torch.nn.Conv2d(1, 2, 1), 2)
    for width in (0, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="width"):
            context_generator_like(_segmenter(4), 2, width=width)


def test_check_networks_errors():
    gen = context_generator(2, filters=[4, 8, 8], **ARCH)
    with pytest.raises(ValueError, match=r"out_channels=3.*K = C \+ t - 1 = 4"):
        check_context_networks(_segmenter(3), gen, num_classes=3, num_context=2)
    with pytest.raises(ValueError, match=r"generator has out_channels=2.*num_context=3"):
        check_context_networks(_segmenter(5), gen, num_classes=3, num_context=3)
    with pytest.raises(ValueError, match="num_context=0"):
        check_context_networks(_segmenter(2), gen, num_classes=3, num_context=0)
    with pytest.raises(ValueError, match="num_classes=1"):
        check_context_networks(_segmenter(2), gen, num_classes=1, num_context=2)
    ds_gen = DynUNet(out_channels=2, filters=[4, 8, 8], deep_supervision=True, **ARCH)
    with pytest.raises(ValueError, match="deep_supervision"):
        check_context_networks(_segmenter(4), ds_gen, num_classes=3, num_context=2)
    other_in = DynUNet(out_channels=2, filters=[4, 8, 8], **{**ARCH, "in_channels": 1})
    with pytest.raises(ValueError, match="in_channels"):
        check_context_networks(_segmenter(4), other_in, num_classes=3, num_context=2)
    with pytest.raises(ValueError, match="cannot read 'out_channels'"):
        check_context_networks(torch.nn.Sequential(torch.nn.Conv2d(2, 4, 1)), gen, num_classes=3, num_context=2)
    with pytest.raises(ValueError, match="num_context=0"):
        context_generator(0, **ARCH)
