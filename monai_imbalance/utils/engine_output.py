# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Extra values in an ignite engine's iteration output (a dict, or a list of dicts when decollated)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["add_to_output"]


def add_to_output(output: Any, extra: dict[str, Any]) -> Any:
    """Add ``extra`` to every item of an iteration output and return the output.

    Args:
        output: ``engine.state.output``: a dict, or a list of dicts (``decollate=True``).
        extra: values to add (e.g. an extra step's loss): tensors stay tensors in a dict output and become Python
            numbers in a decollated one, as ``Decollated(detach=True)`` gives ``loss``.

    Returns:
        ``output``, updated in place.
    """
    if isinstance(output, list):
        extra = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in extra.items()}
    for item in output if isinstance(output, list) else [output]:
        if isinstance(item, dict):
            item.update(extra)
    return output
