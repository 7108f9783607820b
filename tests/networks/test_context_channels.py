# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Channel layout of a CoLab segmenter (methods.md 2.1): K = C + t - 1, [ctx_0, FG_1.., ctx_1..]."""

from __future__ import annotations

import pytest

from monai_imbalance.networks import (
    context_channel,
    context_channel_indices,
    context_channels,
    foreground_channel_indices,
)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
@pytest.mark.parametrize("num_context", [1, 2, 4, 6])
def test_layout_partitions_the_channels(num_classes, num_context):
    k = context_channels(num_classes, num_context)
    assert k == num_classes + num_context - 1
    ctx = context_channel_indices(num_classes, num_context)
    fg = foreground_channel_indices(num_classes)
    # written out from the layout [ctx_0, FG_1 .. FG_{C-1}, ctx_1 .. ctx_{t-1}]
    layout = ["ctx0"] + [f"fg{c}" for c in range(1, num_classes)] + [f"ctx{j}" for j in range(1, num_context)]
    assert len(layout) == k
    assert [layout[i] for i in ctx] == [f"ctx{j}" for j in range(num_context)]
    assert [layout[i] for i in fg] == [f"fg{c}" for c in range(1, num_classes)]
    assert sorted(ctx + fg) == list(range(k))
    assert [context_channel(j, num_classes) for j in range(num_context)] == ctx


@pytest.mark.parametrize(
    "args,match",
    [
        ((2, 0), "num_context=0"),
        ((2, -1), "num_context=-1"),
        ((1, 2), "num_classes=1"),
        ((2, 1.5), "num_context=1.5"),
        ((True, 2), "num_classes=True"),
    ],
)
def test_bad_values(args, match):
    with pytest.raises(ValueError, match=match):
        context_channels(*args)


def test_bad_index_helpers():
    with pytest.raises(ValueError, match="num_context=0"):
        context_channel_indices(3, 0)
    with pytest.raises(ValueError, match="num_classes=1"):
        foreground_channel_indices(1)
    with pytest.raises(ValueError, match="context_class=-1"):
        context_channel(-1, 3)
