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


def test_fold_context_channels_is_exact_for_logits_and_probabilities():
    import torch

    from monai_imbalance.networks import fold_context_channels

    c, t = 3, 3
    logits = torch.randn(2, c + t - 1, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    probs = torch.softmax(logits, 1)
    ctx = context_channel_indices(c, t)
    expected = torch.cat([probs[:, ctx].sum(1, keepdim=True), probs[:, 1:c]], 1)
    folded = fold_context_channels(logits, c)
    assert folded.shape == (2, c, 4, 5)
    torch.testing.assert_close(torch.softmax(folded, 1), expected)
    torch.testing.assert_close(fold_context_channels(probs, c, reduction="sum"), expected)
    # max: channel 0 is the best context logit; its argmax is the paper's label rule
    best = fold_context_channels(logits, c, reduction="max")
    assert torch.equal(best[:, 0], logits[:, ctx].amax(1)) and torch.equal(best[:, 1:], logits[:, 1:c])
    rule = logits.argmax(1)
    assert torch.equal(best.argmax(1), torch.where(rule >= c, torch.zeros_like(rule), rule))
    # channel-first (K, *spatial) along dim 0; nothing to fold returns the input
    torch.testing.assert_close(fold_context_channels(logits[0], c, dim=0), folded[0])
    assert fold_context_channels(folded, c) is folded
    with pytest.raises(ValueError, match="fewer than num_classes"):
        fold_context_channels(logits, 6)
    with pytest.raises(ValueError, match="reduction"):
        fold_context_channels(logits, c, reduction="mean")
