# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
from __future__ import annotations

import pytest

from monai_imbalance.utils import index_by_name


def test_index_by_name_and_position():
    names = ("identity", "scale", "gamma")
    assert index_by_name(names, "gamma", "op") == 2
    assert index_by_name(names, 1, "op") == 1
    with pytest.raises(ValueError, match=r"op 'blur' is not in this pool \['identity', 'scale', 'gamma'\]"):
        index_by_name(names, "blur", "op")
    with pytest.raises(ValueError, match=r"op index 3 out of range \[0, 3\)"):
        index_by_name(names, 3, "op")
    with pytest.raises(ValueError, match=r"index -1 out of range"):
        index_by_name(names, -1, "op")
    many = [f"t{i}" for i in range(30)]
    with pytest.raises(ValueError, match=r"transform 'x' is not in this pool \(30 names\)"):
        index_by_name(many, "x", "transform")
