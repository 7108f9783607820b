# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""check_settings, check_int_setting: a bundle's settings are refused with the offending key named."""

from __future__ import annotations

import re

import numpy as np
import pytest

from monai_imbalance.utils import check_int_setting, check_settings


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


@pytest.mark.parametrize("value", [0, -1, 1.0, 2.5, True, "2", None])
def test_bad_integer_settings_name_the_key(value):
    with pytest.raises(
        ValueError, match=f"^{re.escape(f'learner interval must be an integer >= 1, got interval={value!r}.')}$"
    ):
        check_int_setting("learner", "interval", value, 1)


def test_good_integer_settings_become_int():
    assert check_int_setting("learner", "warmup_epochs", 0, 0) == 0
    value = check_int_setting("learner", "interval", np.int64(3), 1)
    assert value == 3 and type(value) is int
