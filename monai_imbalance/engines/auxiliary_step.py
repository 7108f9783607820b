# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The optimiser step of an auxiliary module (CoLab's generator, learned augmentation policies) after a meta step.

Shared by :class:`~monai_imbalance.engines.ContextLabelLearner` (Li et al., IEEE TMI 2023, methods.md 2.4) and
:class:`~monai_imbalance.engines.AugmentationPolicyLearner` (methods.md 3.4-3.5): the auxiliary module is not wrapped
in DDP, so its gradients (already in ``.grad``) are averaged over the ranks here, every rank takes the same skip
decision, and a non-finite gradient skips the step, so that every rank keeps identical auxiliary parameters.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["finish_auxiliary_step", "is_distributed"]


def is_distributed() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def finish_auxiliary_step(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    skipped: bool,
    reason: str | None,
    nonfinite_reason: str = "nonfinite_auxiliary_grad",
) -> tuple[bool, str | None]:
    """All-reduce the gradients and the skip decision (DDP), check them, then step or clear ``optimizer``.

    Args:
        module: the auxiliary module whose trainable parameters hold the (local) hypergradient in ``.grad``.
        optimizer: its optimizer.
        skipped: whether this rank already decided to skip (a zero or non-finite look-ahead gradient).
        reason: why this rank skips (``None`` when it does not).
        nonfinite_reason: the reason reported when the (averaged) gradient is not finite.

    Returns:
        ``(skipped, reason)`` after the ranks agreed: ``True`` when any rank skipped or the averaged gradient is not
        finite (the gradients are then cleared and no step is taken), else the step was taken.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if is_distributed():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        flags = torch.tensor([float(skipped)], device=flat.device)
        dist.all_reduce(flat)
        dist.all_reduce(flags)
        if float(flags) > 0:
            skipped, reason = True, reason or "skipped on another rank"
        else:
            flat /= dist.get_world_size()
            for p, g in zip(params, torch.split(flat, [p.numel() for p in params]), strict=True):
                p.grad = g.view_as(p).clone()
    if not skipped and not all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params):
        skipped, reason = True, nonfinite_reason
    if skipped:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
    return skipped, reason
