# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
from __future__ import annotations

import pytest

from monai_imbalance.utils import scaled_learning_rate


def test_the_rule_gives_the_authors_total_budget_up_to_the_cap():
    assert scaled_learning_rate(3e-4, 80_000, 1_600) == pytest.approx(3e-4 * 50)  # lr x updates = 24 either way
    assert scaled_learning_rate(3e-4, 80_000, 1_600) * 1_600 == pytest.approx(3e-4 * 80_000)
    assert scaled_learning_rate(5e-4, 200_000, 400) == pytest.approx(5e-4 * 100)  # 500 x, capped at 100 x
    assert scaled_learning_rate(5e-4, 200_000, 400, cap=1000) == pytest.approx(5e-4 * 500)
    assert scaled_learning_rate(5e-4, 200_000, 400_000) == 5e-4  # a longer schedule keeps the paper's rate


@pytest.mark.parametrize(
    "args, match",
    [((0.0, 10, 1), "lr"), ((1e-3, 0, 1), "reference_updates"), ((1e-3, 10, float("nan")), "updates"),
     ((1e-3, 10, 1, 0.5), "cap")],
)  # fmt: skip
def test_bad_values_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        scaled_learning_rate(*args)
