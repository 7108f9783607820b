# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The optimiser step of an auxiliary module (CoLab's generator, learned augmentation policies) after a meta step.

Shared by :class:`~monai_imbalance.engines.ContextLabelLearner` (CoLab, Li et al., IEEE TMI 2023),
:class:`~monai_imbalance.engines.TrainingPolicyLearner` and :class:`~monai_imbalance.engines.TestTimePolicyLearner`
(JCSAugment, Li et al., IEEE TMI 2023): the auxiliary module is not wrapped in DDP, so its gradients (already in
``.grad``) are averaged over the ranks here, every rank takes the same skip decision, and a non-finite gradient skips
the step, so that every rank keeps identical auxiliary parameters.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["average_over_ranks", "finish_auxiliary_step", "is_distributed"]


def is_distributed() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def average_over_ranks(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mean of each tensor over the ranks, in one ``all_reduce`` of their concatenation (as is, without DDP).

    Used for gradients that do not pass through DDP's backward pass: the auxiliary modules' hypergradients and the
    segmenter gradient a reused look-ahead pass gives the normal step.
    """
    if not tensors or not is_distributed():
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    return [f.view_as(t) for f, t in zip(torch.split(flat, [t.numel() for t in tensors]), tensors, strict=True)]


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
        flags = torch.tensor([float(skipped)], device=params[0].device)
        dist.all_reduce(flags)
        if float(flags) > 0:
            skipped, reason = True, reason or "skipped on another rank"
        else:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            for p, g in zip(params, average_over_ranks(grads), strict=True):
                p.grad = g.clone()
    if not skipped and not all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params):
        skipped, reason = True, nonfinite_reason
    if skipped:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
    return skipped, reason
