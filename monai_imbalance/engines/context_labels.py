# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Context label learning (CoLab): context targets for the normal step and the generator's meta step.

Li, Kamnitsas, Ouyang, Chen, Glocker, "Context label learning: improving background class representations in semantic
segmentation", IEEE TMI 2023, method section (context labels, the task generator and its meta-objective). The segmenter
``f_theta`` has ``K = C + t - 1`` output channels ``[ctx_0, FG_1 .. FG_{C-1}, ctx_1 .. ctx_{t-1}]``; its training
target splits the background into ``t`` context classes, which come from a generator ``q = softmax(g_phi(x))``
trained by meta-learning (CoLab), from a hard context map in the batch (``context_key``: the k-means, dilated-ring or
human-defined baselines), or, with ``num_context = 1``, from nothing (plain training).
:class:`ContextLabelLearner` holds the settings and the meta step; :class:`ContextLabelIteration` is the trainer's
``iteration_update`` (meta step, then the trainer's own iteration); :class:`ContextTargetLoss` is the trainer's loss,
so the engine's output keeps the original ``C``-class label.

Example (JSON)::

    "context_learner": {
        "_target_": "monai_imbalance.engines.ContextLabelLearner",
        "num_classes": 2, "num_context": 2,
        "generator": "@generator", "optimizer": "@generator_optimizer",
        "meta_interval": 5, "mask_key": "context_mask"
    },
    "trainer": {
        "_target_": "monai.engines.SupervisedTrainer",
        ...,
        "loss_function": {"_target_": "monai_imbalance.engines.ContextTargetLoss", "loss_function": "@loss",
                          "learner": "@context_learner"},
        "iteration_update": {"_target_": "monai_imbalance.engines.ContextLabelIteration", "learner": "@context_learner"}
    }
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from monai_imbalance.losses import compose_context_target, context_foreground_bce
from monai_imbalance.networks import check_context_networks
from monai_imbalance.utils import (
    add_to_output,
    check_int_setting,
    check_settings,
    highest_resolution,
    plain_tensor,
    unwrap_module,
)

from .auxiliary_step import finish_auxiliary_step
from .lookahead import (
    LookaheadTrainPass,
    LookaheadTrainStep,
    apply_hypergradient,
    check_lookahead_settings,
    functional_forward,
    lookahead_hypergradient,
    lookahead_step_blockers,
    step_from_lookahead,
)

__all__ = ["LOOKAHEAD_MODES", "ContextLabelIteration", "ContextLabelLearner", "ContextTargetLoss"]

logger = logging.getLogger(__name__)

_ALLOWED = (
    "num_classes",
    "num_context",
    "generator",
    "optimizer",
    "lr_scheduler",
    "meta_interval",
    "mask_key",
    "context_key",
    "method",
    "r",
    "meta_lr",
    "lookahead",
    "reuse_lookahead_gradient",
)

#: How the meta step splits the batch: the authors' one look-ahead and generator step per sample, or one for the batch.
LOOKAHEAD_MODES = ("per_sample", "batched")


def _optional_key(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"context_labels {name} must be a batch key (str) or null, got {name}={value!r}.")
    return value


@dataclass
class ContextLabelLearner:
    """Settings and state of context-label training (CoLab, Li et al., IEEE TMI 2023).

    With a generator, every ``meta_interval`` iterations before the normal step, for each sample in turn (the
    authors' loop; ``lookahead="batched"``: once for the batch): the one-step look-ahead hypergradient
    (:func:`~monai_imbalance.engines.lookahead_hypergradient`) of a virtual SGD step of the segmenter on the context
    target (learning rate: the segmenter's current one), the foreground BCE of the updated segmenter on the same
    data (the paper's meta-objective: the "validation" data is the training sample itself), and its
    gradient back to ``phi``; the generator's own optimizer steps on it. A zero or non-finite gradient skips the
    update (logged, counted in ``skipped``). The normal step then trains on
    :func:`~monai_imbalance.losses.compose_context_target` of the detached context probabilities of the updated
    generator, the label and, with ``mask_key``, the distance restriction ``M``, as the authors' code does. Under DDP
    the generator is not wrapped: its hypergradient is averaged over the ranks and its parameters broadcast from rank
    0 at the start. The meta step runs in float32 (no autocast) on the segmenter's module.

    Attributes:
        num_classes: ``C``, classes of the labels (background included).
        num_context: ``t >= 1`` context classes; the segmenter must have ``C + t - 1`` output channels.
        generator: the context generator ``g_phi`` (``t`` output channels); ``None`` for the baselines.
        optimizer: the generator's optimizer (required with a generator).
        lr_scheduler: the generator's scheduler, stepped once per meta step (optional).
        meta_interval: iterations between meta steps (the authors: 5); the meta step runs when
            ``iteration % meta_interval == 0`` (ignite counts iterations from 1).
        mask_key: batch key of the distance-restriction mask ``M`` ``(B, 1, *spatial)`` (``None``: ``M = 1``).
        context_key: batch key of a hard context map ``(B, 1, *spatial)`` in ``0..t-1`` (baselines).
        method: hypergradient method, ``"finite_difference"`` (the authors' central difference),
            ``"forward_difference"`` (one-sided: one segmenter forward pass less per meta step) or ``"exact"`` (double
            backward); see :func:`~monai_imbalance.engines.lookahead_hypergradient`.
        r: finite-difference scale ``R = r / ||v||``; ``None``: the method's default (the authors' 0.01 for the
            central difference; 1e-3 for the one-sided one).
        meta_lr: the virtual step's learning rate; ``None``: the segmenter optimizer's current learning rate.
        lookahead: ``"per_sample"`` (default, the authors' loop over the batch): each sample in turn gets its own
            look-ahead and generator step, its context labels computed by the generator as the previous sample left
            it, so a meta step takes ``B`` generator updates and has no cross-sample terms; ``"batched"``: one
            look-ahead of the batch-mean loss and one generator update per meta step (``B`` times fewer updates,
            about ``B`` times cheaper).
        reuse_lookahead_gradient: on meta iterations, let the normal step reuse the look-ahead's gradient and
            prediction at ``theta``: the segmenter then steps on the target of the generator *before* its update
            (a simultaneous instead of the authors' alternating update, on one iteration in ``meta_interval``). It
            runs in float32 without autocast, needs a ``SimpleInferer`` and ``accumulation_steps=1``, and falls back
            to the normal step when the look-ahead's gradient is not finite. Default ``False``: the authors' order,
            the normal step recomputes both with the updated generator.
        steps: meta steps taken.
        updates: generator updates attempted (``B`` per meta step with ``lookahead="per_sample"``, else 1).
        skipped: generator updates skipped (zero or non-finite gradient).
    """

    num_classes: int
    num_context: int = 2
    generator: torch.nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    lr_scheduler: Any | None = None
    meta_interval: int = 5
    mask_key: str | None = None
    context_key: str | None = None
    method: str = "finite_difference"
    r: float | None = None
    meta_lr: float | None = None
    lookahead: str = "per_sample"
    reuse_lookahead_gradient: bool = False
    steps: int = 0
    updates: int = 0
    skipped: int = 0
    _train_step: LookaheadTrainStep | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.num_classes = check_int_setting("context_labels", "num_classes", self.num_classes, 2)
        self.num_context = check_int_setting("context_labels", "num_context", self.num_context, 1)
        self.meta_interval = check_int_setting("context_labels", "meta_interval", self.meta_interval, 1)
        self.mask_key = _optional_key("mask_key", self.mask_key)
        self.context_key = _optional_key("context_key", self.context_key)
        if self.generator is not None and self.context_key is not None:
            raise ValueError(
                f"context_labels: give a generator (CoLab) or a context_key (baseline context maps), not both "
                f"(context_key={self.context_key!r})."
            )
        if self.generator is not None and self.optimizer is None:
            raise ValueError("context_labels: a generator needs its own optimizer (context_labels optimizer is null).")
        if self.num_context > 1 and self.generator is None and self.context_key is None:
            raise ValueError(
                f"context_labels: num_context={self.num_context} needs a generator or a context_key to split the "
                "background; use num_context=1 for plain training."
            )
        check_lookahead_settings("context_labels", self.method, self.r, self.meta_lr)
        if not isinstance(self.reuse_lookahead_gradient, bool):
            raise ValueError(
                "context_labels reuse_lookahead_gradient must be true or false, got "
                f"reuse_lookahead_gradient={self.reuse_lookahead_gradient!r}."
            )
        if self.lookahead not in LOOKAHEAD_MODES:
            raise ValueError(f"context_labels lookahead must be one of {LOOKAHEAD_MODES}, got {self.lookahead!r}.")
        if self.reuse_lookahead_gradient and self.lookahead != "batched":
            raise ValueError(
                "context_labels reuse_lookahead_gradient=true needs lookahead='batched' (the normal step reuses one "
                f"look-ahead pass of the whole batch), got lookahead={self.lookahead!r}."
            )

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> ContextLabelLearner:
        """Build from a JSON-style dict; raises ``ValueError`` naming an unknown or bad setting."""
        check_settings("context_labels", config, _ALLOWED, required=("num_classes",))
        return cls(**dict(config))

    @property
    def num_channels(self) -> int:
        """``K = C + t - 1``, the segmenter's output channels."""
        return self.num_classes + self.num_context - 1

    def check_segmenter(self, network: torch.nn.Module) -> None:
        """Check the segmenter (and generator) output channels against ``C`` and ``t`` (clear error on mismatch)."""
        check_context_networks(unwrap_module(network), self.generator, self.num_classes, self.num_context)

    # -- the context probabilities -------------------------------------------------------------------------------
    def _batch_tensor(self, batchdata: Any, key: str, device: torch.device) -> torch.Tensor:
        if not isinstance(batchdata, Mapping) or key not in batchdata:
            raise ValueError(
                f"context_labels expects '{key}' in the batch (it is configured as a batch key); add the transform "
                "that writes it before the crop, and crop it with the image."
            )
        value = batchdata[key]
        return plain_tensor(value).to(device)

    def mask(self, batchdata: Any, device: torch.device) -> torch.Tensor | None:
        """The distance-restriction mask ``(B, 1, *spatial)`` float, or ``None`` without ``mask_key``."""
        if self.mask_key is None:
            return None
        return self._batch_tensor(batchdata, self.mask_key, device).float()

    def probabilities(self, image: torch.Tensor, batchdata: Any) -> torch.Tensor:
        """Context probabilities ``(B, t, *spatial)``: the generator's softmax (with graph), a one-hot map, or ones."""
        if self.generator is not None:
            return torch.softmax(self.generator(image), dim=1)
        if self.context_key is not None:
            context = self._batch_tensor(batchdata, self.context_key, image.device)
            if context.shape[1:2] != (1,) or context.shape[2:] != image.shape[2:]:
                raise ValueError(
                    f"context map '{self.context_key}' must be (B, 1, *spatial) matching the image "
                    f"{tuple(image.shape)}, got {tuple(context.shape)}."
                )
            context = context[:, 0].round().long() if context.is_floating_point() else context[:, 0].long()
            if context.numel() and (int(context.min()) < 0 or int(context.max()) >= self.num_context):
                raise ValueError(
                    f"context map '{self.context_key}' has values in [{int(context.min())}, {int(context.max())}]; "
                    f"expected 0..{self.num_context - 1} (num_context={self.num_context})."
                )
            return torch.nn.functional.one_hot(context, self.num_context).movedim(-1, 1).to(image.dtype)
        return image.new_ones((image.shape[0], 1, *image.shape[2:]))

    def target(self, probabilities: torch.Tensor, label: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The ``K``-channel soft target (CoLab's context labels) of ``probabilities`` ``(B, t, *sp)`` and ``label``."""
        return compose_context_target(probabilities, label, self.num_classes, mask)

    # -- the meta step -------------------------------------------------------------------------------------------
    def is_meta_iteration(self, iteration: int) -> bool:
        """Whether the meta step runs at this (1-based) iteration."""
        return self.generator is not None and iteration % self.meta_interval == 0

    def meta_step(
        self,
        network: torch.nn.Module,
        loss_function: Callable,
        segmenter_optimizer: torch.optim.Optimizer,
        image: torch.Tensor,
        label: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> dict[str, float]:
        """The generator's meta step: one-step look-ahead hypergradients (CoLab's meta-objective) and its updates.

        One update per sample, in turn (``lookahead="per_sample"``), or one for the batch (``"batched"``); the
        generator's scheduler steps once per meta step.

        Args:
            network: the segmenter (a DDP wrapper is unwrapped), ``K`` output channels.
            loss_function: the soft-target training loss ``loss(pred, target)`` (e.g. ``ContextLabelLoss``).
            segmenter_optimizer: gives the virtual step's learning rate (``param_groups[0]["lr"]``) unless ``meta_lr``.
            image: ``(B, C_in, *spatial)``.
            label: ``(B, 1, *spatial)`` class indices.
            mask: the distance restriction ``(B, 1, *spatial)`` or ``None``.

        Returns:
            ``{"meta_loss": L_val(theta') before each update (mean over the updates), "meta_skipped": the fraction of
            the updates skipped}``. With ``reuse_lookahead_gradient``, the training pass at ``theta`` is kept for
            :meth:`pop_train_step`.
        """
        assert self.generator is not None and self.optimizer is not None
        self._train_step = None
        segmenter = unwrap_module(network)
        lr = float(self.meta_lr if self.meta_lr is not None else segmenter_optimizer.param_groups[0]["lr"])
        self.generator.train()
        self.steps += 1
        if self.lookahead == "batched":
            samples = [(image, label, mask)]
        else:
            samples = [
                (image[b : b + 1], label[b : b + 1], None if mask is None else mask[b : b + 1])
                for b in range(image.shape[0])
            ]
        val_losses, skipped = [], 0
        for x, y, m in samples:
            val_loss, was_skipped = self._generator_update(segmenter, loss_function, lr, x, y, m)
            val_losses.append(val_loss)
            skipped += int(was_skipped)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        return {"meta_loss": sum(val_losses) / len(val_losses), "meta_skipped": skipped / len(samples)}

    def _generator_update(
        self,
        segmenter: torch.nn.Module,
        loss_function: Callable,
        lr: float,
        image: torch.Tensor,
        label: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> tuple[float, bool]:
        """One look-ahead on ``image`` (a sample or the batch) and one generator step; ``(L_val(theta'), skipped)``."""
        assert self.generator is not None and self.optimizer is not None
        # the generator runs once: the hypergradient is taken w.r.t. its soft labels q and then back-propagated
        # through q to phi by apply_hypergradient (the chain rule the authors' three generator passes compute).
        # The target is composed once; every call of train_loss differentiates through the same graph to q.
        q = torch.softmax(self.generator(image), dim=1)
        target = self.target(q, label, mask)
        first = LookaheadTrainPass(segmenter, self.reuse_lookahead_gradient)

        def train_loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
            pred = functional_forward(segmenter, params, image)
            first.keep(pred)  # the first call is at theta (lookahead_hypergradient)
            return loss_function(pred, target).mean()

        def val_loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
            pred = highest_resolution(functional_forward(segmenter, params, image), image.ndim)
            return context_foreground_bce(pred, label, self.num_classes)

        result = lookahead_hypergradient(segmenter, train_loss, val_loss, [q], lr, method=self.method, r=self.r)
        self.updates += 1
        self._train_step = first.step(result)
        skipped, reason = result.skipped, result.reason
        self.optimizer.zero_grad(set_to_none=True)
        if not skipped:
            apply_hypergradient([q], result.grads)
        skipped, reason = finish_auxiliary_step(
            self.generator, self.optimizer, skipped, reason, "nonfinite_generator_grad"
        )
        if skipped:
            self.skipped += 1
            logger.warning(
                "CoLab generator update %d skipped (%s); %d of %d updates skipped so far.",
                self.updates,
                reason,
                self.skipped,
                self.updates,
            )
        return float(result.val_loss), skipped

    def pop_train_step(self) -> LookaheadTrainStep | None:
        """The last meta step's training pass at ``theta`` (``reuse_lookahead_gradient``), once; else ``None``."""
        step, self._train_step = self._train_step, None
        return step

    def broadcast_generator(self) -> None:
        """Copy rank 0's generator parameters and buffers to every rank (no-op without a process group)."""
        if self.generator is None or not (dist.is_available() and dist.is_initialized()):
            return
        with torch.no_grad():
            for tensor in [*self.generator.parameters(), *self.generator.buffers()]:
                dist.broadcast(tensor, src=0)


class ContextTargetLoss:
    """``loss(pred, compose_context_target(q, label, C, M))`` with the context probabilities of the current batch.

    The trainer sets :attr:`probabilities` and :attr:`mask` for each batch before its normal step; ``SupervisedTrainer``
    then calls this object as its loss with the original label, so only the loss sees the ``K``-channel target.

    Args:
        loss_function: a soft-target loss over ``K`` channels, ``loss(pred, target)``.
        learner: the :class:`ContextLabelLearner` (gives ``C`` and the composition).
    """

    def __init__(self, loss_function: Callable, learner: ContextLabelLearner) -> None:
        self.loss_function = loss_function
        self.learner = learner
        self.probabilities: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None

    def mixup_loss(
        self,
        pred: Any,
        label: torch.Tensor,
        lam: float,
        rare_classes: Sequence[int] | None,
        margin: float,
        mix_labels: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """The loss of a mixup step of ``lam * x + (1 - lam) * x.flip(0)`` on the mixed context target.

        Symmetric (``rare_classes=None``): ``lam * T(x) + (1 - lam) * T(x.flip(0))``, the context targets mixed as the
        images are. Asymmetric: the label of each voxel by the asymmetric rule of ``mix_labels`` (the rare label wins;
        called as ``mix_labels(y, y.flip(0), lam, C, rare_classes, margin=margin)``, e.g.
        :func:`~monai_imbalance.engines.mixup_labels`), its background split by the mixed context probabilities
        ``lam * q + (1 - lam) * q.flip(0)``, and the voxels the rule leaves ambiguous masked out of the loss (which
        must accept ``mask=``, as :class:`~monai_imbalance.losses.ContextLabelLoss` does).

        Args:
            pred: the segmenter's output on the mixed batch, ``K`` channels.
            label: ``(B, 1, *spatial)`` class indices of the unmixed batch.
            lam: the mixing weight of the batch (``1 - lam`` of its flipped partner).
            rare_classes: the rare classes of the asymmetric rule, or ``None``.
            margin: the rule's margin.
            mix_labels: the rule, ``(y_a, y_b, lam, C, rare_classes, margin=) -> (target (B, C, *sp), mask)``.
        """
        if self.probabilities is None:
            raise RuntimeError("ContextTargetLoss called before the trainer set the batch's context probabilities.")
        label = plain_tensor(label)
        q, m = self.probabilities, self.mask
        q_b, m_b, y_b = q.flip(0), None if m is None else m.flip(0), label.flip(0)
        if rare_classes is None:
            target = lam * self.learner.target(q, label, m) + (1.0 - lam) * self.learner.target(q_b, y_b, m_b)
            return self.loss_function(pred, target)
        target_c, keep = mix_labels(label, y_b, lam, self.learner.num_classes, rare_classes, margin=margin)
        mixed = target_c.argmax(1, keepdim=True)  # the rule's label (ambiguous voxels: 0, masked out)
        m_mix = None if m is None else lam * m + (1.0 - lam) * m_b
        target = self.learner.target(lam * q + (1.0 - lam) * q_b, mixed, m_mix)
        return self.loss_function(pred, target, mask=keep)

    def __call__(self, pred: Any, label: torch.Tensor) -> torch.Tensor:
        if self.probabilities is None:
            raise RuntimeError("ContextTargetLoss called before the trainer set the batch's context probabilities.")
        label = plain_tensor(label)
        return self.loss_function(pred, self.learner.target(self.probabilities, label, self.mask))


class ContextLabelIteration:
    """The ``iteration_update`` of a trainer with context labels (CoLab, Li et al., IEEE TMI 2023).

    Each iteration: every ``meta_interval`` iterations the generator's meta step
    (:meth:`ContextLabelLearner.meta_step`), then the trainer's own iteration (``engine._iteration``, e.g.
    ``SupervisedTrainer``'s step) on the ``K``-channel context target: the trainer's loss must be a
    :class:`ContextTargetLoss` of the same learner, whose context probabilities this object sets for the batch. With
    ``reuse_lookahead_gradient``, the normal step of a meta iteration is the look-ahead's pass at ``theta``
    (:func:`~monai_imbalance.engines.step_from_lookahead`). The first call checks the trainer and copies rank 0's
    generator to every rank (DDP). The output gains ``meta_loss`` and ``meta_skipped`` on meta iterations.

    Args:
        learner: the :class:`ContextLabelLearner`, or its JSON settings.

    Raises:
        ValueError: (first call) a loss that is not this learner's :class:`ContextTargetLoss`, a segmenter with the
            wrong number of output channels, a trainer with an adversarial or mixup step on the raw batch, or
            ``reuse_lookahead_gradient`` with trainer settings that block it.
    """

    def __init__(self, learner: ContextLabelLearner | Mapping[str, Any]) -> None:
        if not isinstance(learner, ContextLabelLearner):
            learner = ContextLabelLearner.from_mapping(learner)
        self.learner = learner
        self._checked = False

    def _check(self, engine: Any) -> None:
        loss = engine.loss_function
        if not isinstance(loss, ContextTargetLoss) or loss.learner is not self.learner:
            raise ValueError(
                "context labels: the trainer's loss_function must be monai_imbalance.engines.ContextTargetLoss of the "
                f"same ContextLabelLearner as the iteration_update (got {type(loss).__name__})."
            )
        self.learner.check_segmenter(engine.network)
        extra = tuple(getattr(engine, "extra_steps", ()))
        for step in extra:
            if getattr(getattr(engine, step, None), "raw", False):
                raise ValueError(
                    f"context labels with the trainer's {step} step need {step} raw=false: the step's context target "
                    "is that of the (augmented) batch of the normal step."
                )
        blockers = lookahead_step_blockers(engine)
        if self.learner.reuse_lookahead_gradient and blockers:
            raise ValueError(
                f"context_labels reuse_lookahead_gradient=true cannot be used with {'; '.join(blockers)} (the reused "
                "step replaces the normal step's forward/backward pass); set it to false."
            )
        self.learner.broadcast_generator()
        self._checked = True

    def __call__(self, engine: Any, batchdata: Any) -> Any:
        """The meta step when due, then the trainer's iteration on the context target; returns its output.

        Args:
            engine: the trainer (a ``SupervisedTrainer``).
            batchdata: the collated batch: ``image`` ``(B, C_in, *sp)``, ``label`` ``(B, 1, *sp)`` and the learner's
                ``mask_key`` / ``context_key`` maps ``(B, 1, *sp)``.
        """
        if not self._checked:
            self._check(engine)
        learner = self.learner
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        image, label = plain_tensor(batch[0]), plain_tensor(batch[1])
        mask = learner.mask(batchdata, image.device)
        extra: dict[str, Any] = {}
        if learner.is_meta_iteration(engine.state.iteration):
            engine.network.train()  # as the normal step: after a validation run the segmenter is in eval mode
            extra.update(
                learner.meta_step(
                    engine.network, engine.loss_function.loss_function, engine.optimizer, image, label, mask
                )
            )
            reused = learner.pop_train_step()  # None unless reuse_lookahead_gradient (and a finite gradient)
            if reused is not None:
                return add_to_output(step_from_lookahead(engine, batch[0], batch[1], reused), extra)
        loss = engine.loss_function
        with torch.no_grad():
            loss.probabilities = learner.probabilities(image, batchdata)
        loss.mask = mask
        try:
            output = engine._iteration(engine, batchdata)
        finally:
            loss.probabilities = None
            loss.mask = None
        return add_to_output(output, extra)
