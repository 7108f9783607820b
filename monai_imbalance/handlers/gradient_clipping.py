# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Gradient-norm clipping of a trainer's optimizer steps, as nnU-Net clips its segmenter's updates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from monai.utils import min_version, optional_import

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["GradientNormClipping"]


class GradientNormClipping:
    """Clips the total norm of the gradients before every step of a trainer's optimizer.

    Isensee, Jaeger, Kohl, Petersen, Maier-Hein, "nnU-Net: a self-configuring method for deep learning-based
    biomedical image segmentation", Nature Methods 2021 (methods: the training procedure, SGD with Nesterov momentum
    0.99 and poly learning-rate decay; the released trainer also clips the gradient norm at 12 between the backward
    pass and the step). Li, Kamnitsas, Ouyang, Chen, Glocker, "Context label learning: improving background class
    representations in semantic segmentation", IEEE TMI 2023, and Li, Kamnitsas, Dou, Qin, Glocker, "Joint
    optimization of class-specific training- and test-time data augmentation in segmentation", IEEE TMI 2023, train
    their segmenters this way. With ``g`` the gradients of all parameters and ``n = ||g||_p`` their total norm
    (``torch.nn.utils.clip_grad_norm_``), ``g <- g * min(1, max_norm / (n + 1e-6))``: the direction is kept, the
    length is at most ``max_norm``, and a gradient inside the bound is left as it is.

    The clipping runs in a step pre-hook of the optimizer (``torch.optim.Optimizer.register_step_pre_hook``), not on
    ``IterationEvents.BACKWARD_COMPLETED``, so that every step the optimizer takes uses clipped gradients:

    - the extra steps of a trainer that steps more than once per iteration (adversarial, mixup) and the step a
      look-ahead trainer takes from its kept gradients are clipped too;
    - with ``accumulation_steps > 1`` the accumulated gradient is clipped once, at the step (MONAI fires
      ``BACKWARD_COMPLETED`` after every micro-batch);
    - with AMP, ``GradScaler.step`` unscales the gradients before it calls ``optimizer.step()`` (and skips the step,
      hook included, when they hold inf or NaN), so the hook clips the true gradients;
    - under ``DistributedDataParallel`` the gradients are already averaged over the ranks, so every rank clips the
      same gradient and the weights stay equal (the handler must run on every rank).

    The parameters clipped are those of the optimizer's parameter groups (with ``@network.parameters()``, the
    network's). The virtual step of a one-step look-ahead is not an optimizer step and is not clipped.

    Args:
        max_norm: the bound on the total gradient norm (nnU-Net: 12); positive.
        norm_type: the p of the p-norm (``float("inf")`` for the largest absolute value).

    Attributes:
        total_norm: the total norm of the gradients before the last clipping (a 0-d tensor on the gradients'
            device), ``None`` before the first step.

    Example::

        GradientNormClipping(max_norm=12.0).attach(trainer)  # a SupervisedTrainer; clips trainer.optimizer's steps
    """

    def __init__(self, max_norm: float = 12.0, norm_type: float = 2.0) -> None:
        if not max_norm > 0:
            raise ValueError(f"max_norm must be positive, got {max_norm}.")
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)
        self.total_norm: torch.Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._hook: Any = None

    def attach(self, engine: Engine) -> None:
        """Clip every step of ``engine.optimizer`` (a ``SupervisedTrainer``'s) from the start of each run.

        A trainer attaches its handlers while it is built, before it holds its optimizer, so the hook is registered
        on ``Events.STARTED`` (and at once when the engine already has an optimizer). Attaching again, or another
        run, keeps one hook.
        """
        if not engine.has_event_handler(self._install, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._install)
        if isinstance(getattr(engine, "optimizer", None), torch.optim.Optimizer):
            self._install(engine)

    def _install(self, engine: Engine) -> None:
        """Register the step pre-hook on ``engine.optimizer`` (replacing one this handler registered before).

        Raises:
            TypeError: ``engine`` has no optimizer.
            ValueError: the optimizer unscales AMP gradients inside its own step (``fused=True``): its pre-hook would
                see scaled gradients.
        """
        optimizer = getattr(engine, "optimizer", None)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(self).__name__} needs an engine with an optimizer (a SupervisedTrainer).")
        if optimizer is self.optimizer and self._hook is not None:
            return
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            raise ValueError(
                f"{type(optimizer).__name__} unscales AMP gradients inside its step (fused=True), after the step "
                "pre-hooks: the clipping would see scaled gradients. Use the optimizer without fused=True."
            )
        self.detach()
        self.optimizer = optimizer
        self._hook = optimizer.register_step_pre_hook(self._clip)

    def detach(self, engine: Engine | None = None) -> None:
        """Stop clipping: remove the hook from the optimizer and, given ``engine``, the handler that registers it at
        the start of each of its runs."""
        if engine is not None and engine.has_event_handler(self._install, Events.STARTED):
            engine.remove_event_handler(self._install, Events.STARTED)
        if self._hook is not None:
            self._hook.remove()
        self._hook = None
        self.optimizer = None

    def _clip(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if params:
            self.total_norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type)
