# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""check_settings: a bundle's settings dict is refused with the offending key named."""

from __future__ import annotations

import pytest

from monai_imbalance.utils import check_settings


@pytest.mark.parametrize(
    "config, required, match",
    [
        ([1, 2], (), r"mixup must be None \(disabled\) or a dict of settings, got \[1, 2\]"),
        ({"alpha": 1, "beta": 2}, (), r"mixup has unknown setting\(s\) \['beta'\]; allowed: \['alpha', 'margin'\]"),
        ({"margin": 0.1}, ("alpha",), "mixup needs alpha"),
    ],
)
def test_bad_settings_name_the_key(config, required, match):
    with pytest.raises(ValueError, match=match):
        check_settings("mixup", config, ("margin", "alpha"), required)


def test_good_settings_pass():
    check_settings("mixup", {"alpha": 1}, ("alpha", "margin"), required=("alpha",))
    check_settings("mixup", {}, ("alpha",))
