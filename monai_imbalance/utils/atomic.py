# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Atomic file writes: readers see the old file or the complete new one, never a part of it.

Every file the package writes for users (checkpoints, tables, figures, samples) goes through :func:`atomic_open`:
the content goes to a temporary file in the destination's folder (same file system), which is flushed,
``fsync``-ed and moved into place with :func:`os.replace`; on any error the temporary file is removed and the old
destination is left as it was. Files get the usual permissions (``open`` honours the umask).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text"]


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``path`` when the ``with`` block ends without error.

    Args:
        path: the destination; its folder is created.
        mode: a write mode, ``"wb"`` or ``"w"``.
        kwargs: passed to :func:`open` (e.g. ``encoding``, ``newline``).

    Yields:
        the open temporary file.
    """
    if not any(m in mode for m in "wax"):
        raise ValueError(f"atomic_open needs a write mode, got mode={mode!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically and return the path."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return Path(path)
