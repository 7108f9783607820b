# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""plain_tensor, unwrap_module and highest_resolution (DynUNet's stacked deep-supervision output)."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.networks.nets import DynUNet

from monai_imbalance.utils import highest_resolution, plain_tensor, unwrap_module


def test_plain_tensor_drops_the_meta_tensor_and_converts_arrays():
    meta = MetaTensor(torch.ones(2, 3, requires_grad=True))
    out = plain_tensor(meta)
    assert type(out) is torch.Tensor and out.requires_grad
    assert not plain_tensor(meta, detach=True).requires_grad
    assert plain_tensor(np.zeros((2, 2), dtype=np.int64), dtype=torch.float32).dtype == torch.float32
    x = torch.zeros(3)
    assert plain_tensor(x) is x


def test_unwrap_module():
    net = torch.nn.Linear(2, 2)
    assert unwrap_module(torch.nn.DataParallel(net)) is net
    assert unwrap_module(net) is net


def test_highest_resolution_unstacks_dynunet_deep_supervision():
    torch.manual_seed(0)
    kernels, strides = [3, 3, 3], [1, 2, 2]
    net = DynUNet(2, 1, 3, kernels, strides, strides[1:], deep_supervision=True, deep_supr_num=1)
    image = torch.randn(2, 1, 16, 16)
    net.train()
    stacked = net(image)
    assert stacked.shape == (2, 2, 3, 16, 16)
    head = highest_resolution(stacked, image.ndim)
    assert head.shape == (2, 3, 16, 16) and torch.equal(head, stacked[:, 0])
    assert highest_resolution(stacked) is stacked  # without ndim a tensor cannot be told apart
    net.eval()
    with torch.no_grad():
        plain = net(image)
    assert highest_resolution(plain, image.ndim) is plain
    heads = [torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 8, 8)]
    assert highest_resolution(heads) is heads[0] and highest_resolution(tuple(heads), 4) is heads[0]
