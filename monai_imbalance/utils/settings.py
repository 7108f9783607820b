# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Check a component's settings before it is built: a JSON-style dict (a bundle config's sub-dict), an integer."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["check_int_setting", "check_settings"]


def check_settings(owner: str, config: Any, allowed: Iterable[str], required: Iterable[str] = ()) -> None:
    """Refuse a settings dict that is not a dict, has unknown keys or lacks a required one, naming the key.

    Args:
        owner: the config key the settings come from, e.g. ``"context_labels"``; it starts every message.
        config: the settings; must be a mapping (``None`` means "disabled" to the callers and is not passed here).
        allowed: the setting names the component accepts.
        required: names that must be present.

    Raises:
        ValueError: ``config`` is not a mapping, holds a name not in ``allowed`` (the message lists the allowed ones),
            or lacks a name of ``required``.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{owner} must be None (disabled) or a dict of settings, got {config!r}.")
    allowed = sorted(allowed)
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ValueError(f"{owner} has unknown setting(s) {unknown}; allowed: {allowed}.")
    missing = [name for name in required if name not in config]
    if missing:
        raise ValueError(f"{owner} needs {missing[0]}.")


def check_int_setting(owner: str, name: str, value: Any, minimum: int) -> int:
    """An integer setting ``>= minimum`` as a Python ``int`` (``True`` / ``False`` and floats are refused).

    Args:
        owner: the component the setting belongs to; it starts the message.
        name: the setting's name, named in the message.
        value: the value given.
        minimum: the smallest value allowed.

    Raises:
        ValueError: ``value`` is not an integer or is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{owner} {name} must be an integer >= {minimum}, got {name}={value!r}.")
    return int(value)
