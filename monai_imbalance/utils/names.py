# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Look up an item of a named, ordered collection (an op pool, a transform pool) by name or position."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["index_by_name"]


def index_by_name(names: Sequence[str], key: str | int, what: str) -> int:
    """The position of ``key`` (a name in ``names`` or a position) in ``names``.

    Args:
        names: the collection's names, in order.
        key: a name or an integer position.
        what: what an item is called in error messages, e.g. ``"op"`` or ``"test-time transform"``.

    Raises:
        ValueError: an unknown name (the message lists the names when there are at most 20) or a position out of
            range.
    """
    if isinstance(key, str):
        if key not in names:
            listed = f" {list(names)}" if len(names) <= 20 else f" ({len(names)} names)"
            raise ValueError(f"{what} {key!r} is not in this pool{listed}.")
        return list(names).index(key)
    i = int(key)
    if not 0 <= i < len(names):
        raise ValueError(f"{what} index {key} out of range [0, {len(names)}).")
    return i
