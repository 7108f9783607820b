# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_imbalance.utils import check_rare_classes


@pytest.mark.parametrize(
    "given, expected",
    [(None, None), (2, (2,)), ([3, 1, 3], (1, 3)), ((1,), (1,)), (torch.tensor([2, 1]), (1, 2)), (np.int64(1), (1,))],
)
def test_normalised(given, expected):
    assert check_rare_classes(given, num_classes=4) == expected


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "is empty"),
        (True, "class indices"),
        ("1", "class indices"),
        ([1.5], "integer class indices, got 1.5"),
        ([True], "integer class indices, got True"),
        ([-1], "negative class index -1"),
        ([1, 5], r"rare_classes=\[1, 5\] holds class 5, out of range for 4 classes"),
    ],
)
def test_rejected_with_the_value_named(bad, match):
    with pytest.raises(ValueError, match=match):
        check_rare_classes(bad, num_classes=4, name="Loss")
    with pytest.raises(ValueError, match="^Loss: "):
        check_rare_classes(bad, num_classes=4, name="Loss")
