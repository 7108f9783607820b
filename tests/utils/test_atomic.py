# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
from __future__ import annotations

import os
import stat

import pytest

from monai_imbalance.utils import atomic_open, atomic_write_bytes, atomic_write_text


def test_write_and_replace(tmp_path):
    path = tmp_path / "a" / "b.txt"
    atomic_write_text("one\r\n", path)
    assert path.read_bytes() == b"one\r\n"  # newlines as given
    atomic_write_bytes(b"two", path)
    assert path.read_bytes() == b"two"
    assert sorted(os.listdir(path.parent)) == ["b.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # usual permissions, not mkstemp's 0o600


def test_error_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "c.bin"
    atomic_write_bytes(b"old", path)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(path) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["c.bin"]


def test_read_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="write mode"):
        with atomic_open(tmp_path / "x", "rb"):
            pass
