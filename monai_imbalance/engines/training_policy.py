# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Learned training-time augmentation (TRA): the policy's meta step by the one-step look-ahead.

JCSAugment: Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data
augmentation in segmentation", IEEE TMI 2023, method section (class-specific training-time augmentation and its
meta-gradient). :class:`TrainingPolicyLearner` holds the policy, its optimiser and the meta step; the trainer's
``iteration_update`` :class:`~monai_imbalance.engines.AugmentationPolicyIteration` runs it before the segmenter step,
and the segmenter step can reuse the look-ahead's pass at ``theta``.

Example (JSON)::

    "policy_learner": {
        "_target_": "monai_imbalance.engines.TrainingPolicyLearner",
        "policy": "@policy", "optimizer": "@policy_optimizer", "shared": "@shared_policy",
        "interval": 1, "warmup_epochs": 0, "validation_loss": "ce_dice"
    }
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from monai_imbalance.augment import (
    AugmentationPolicy,
    PolicyWeights,
    SharedPolicyProbabilities,
    SingletonGroupBaseline,
)
from monai_imbalance.utils import check_int_setting, check_settings, highest_resolution, plain_tensor, unwrap_module

from .augmentation_losses import foreground_dice_loss, per_sample_ce_dice
from .auxiliary_step import finish_auxiliary_step
from .lookahead import (
    LookaheadTrainPass,
    LookaheadTrainStep,
    check_lookahead_settings,
    functional_forward,
    lookahead_hypergradient,
)

__all__ = ["DEFAULT_TRAINING_POLICY_LR", "VALIDATION_LOSSES", "TrainingPolicyLearner"]

logger = logging.getLogger(__name__)

#: The TRA policy's Adam learning rate for a U-Net (the authors' setting; DeepMedic 1e-3, nnFormer 2e-3).
DEFAULT_TRAINING_POLICY_LR = 5e-4
#: The meta-validation losses (the authors' ``--softdsc`` 0, 1, 2).
VALIDATION_LOSSES = {"ce": 0, "dice": 1, "ce_dice": 2}

_OWNER = "TrainingPolicyLearner"
_ALLOWED = (
    "policy",
    "optimizer",
    "lr_scheduler",
    "shared",
    "loss_function",
    "validation_loss",
    "interval",
    "warmup_epochs",
    "method",
    "r",
    "meta_lr",
    "baseline",
    "normalize",
    "singleton_baseline",
    "bins_key",
    "group_key",
    "reuse_lookahead_gradient",
)


@dataclass
class TrainingPolicyLearner:
    """Settings, state and meta step of the learned training-time augmentation (TRA; JCSAugment, IEEE TMI 2023).

    TRA meta step, every ``interval`` iterations after ``warmup_epochs``. The training batch carries the bins the
    loader workers drew and each patch's class group (``policy_bins`` ``(B, O)``, ``policy_group`` ``(B,)``, written by
    :class:`~monai_imbalance.transforms.PolicyAugmentd`); the straight-through weights
    ``w = policy.weights(bins, groups).weight`` (value 1) are recomputed with gradient, and::

        L_tr(theta, w) = (1/B) sum_b w_b * l_b(f_theta(x_b), y_b)        # l_b: per-sample CE + soft Dice (BG excluded)
        theta'         = theta - lr * grad_theta L_tr                       # lr: the segmenter's current learning rate
        L_val(theta')  on a held-out validation batch                       # CE + batch Dice by default
        g_b            = d L_val(theta'(w)) / d w_b                         # lookahead_hypergradient, aux = w

    then :meth:`~monai_imbalance.augment.AugmentationPolicy.accumulate_hypergradient` (per-group baseline, per-bin
    normalisation), the optimizer's step and ``shared.update(policy)``. In the joint method the validation prediction
    is ``P = T^{-1}(f_theta'(T(x)))`` for a test-time transform ``T`` per patch, voxels moved out of the field of view
    left out of the loss (:meth:`meta_step`'s ``transformed``).
    A skipped look-ahead or a non-finite policy gradient skips the optimizer step (logged, counted in ``skipped``).
    Under DDP the policy is not wrapped: its gradients and the skip flag are averaged over the ranks and its parameters
    broadcast from rank 0 at the start (:meth:`broadcast`).

    Attributes:
        policy: the training-time policy, one categorical per operation and class group.
        optimizer: its optimizer; ``None``: Adam, lr :data:`DEFAULT_TRAINING_POLICY_LR`, betas (0.9, 0.999), no weight
            decay (the authors' setting).
        lr_scheduler: its scheduler, stepped once per TRA step (the authors: poly 0.9).
        shared: the shared probability table the loader workers sample from; ``update(policy)`` after each step.
        loss_function: the training loss per patch, ``loss(pred, label)`` returning ``(B,)`` or ``(B, ...)`` (averaged
            over the non-batch dimensions); default :func:`~monai_imbalance.engines.per_sample_ce_dice`.
        validation_loss: the meta-validation loss, ``"ce"``, ``"dice"`` (batch Dice) or ``"ce_dice"`` (default, the
            U-Net setting), or the authors' ``softdsc`` number 0 / 1 / 2.
        interval: iterations between TRA steps (the authors' ``augupdate``, 1); runs when ``iteration % interval == 0``.
        warmup_epochs: epochs of plain training before the first TRA step (0).
        method: hypergradient method (:func:`~monai_imbalance.engines.lookahead_hypergradient`):
            ``"forward_difference"`` (default: one training-batch forward pass less than the authors' central
            ``"finite_difference"``, error first order in ``r``) or ``"exact"``.
        r: finite-difference radius, ``R = r / ||v||``; ``None``: the method's default (1e-3 one-sided, 0.01 central,
            the authors').
        meta_lr: the virtual step's learning rate; ``None``: the segmenter optimizer's current learning rate.
        baseline: subtract the per-group mean of the weight gradients (the authors' rule; True).
        normalize: divide by the per-group, per-op bin counts (True).
        singleton_baseline: a class group with a single patch in the batch would get a zero gradient from its own
            batch mean; with ``True`` (default) its baseline is instead the running mean of that group's earlier
            batch means (:class:`~monai_imbalance.augment.SingletonGroupBaseline`, which counts them), so it still
            learns. ``False``: the authors' batch mean alone.
        bins_key: batch key of the sampled bins ``(B, O)``.
        group_key: batch key of the class-group indices ``(B,)``.
        reuse_lookahead_gradient: on TRA iterations, let the trainer's normal step reuse the look-ahead's gradient and
            prediction at ``theta`` instead of another forward/backward pass (exact: ``L_tr(theta, w)`` is evaluated
            with weights of value 1 on the batch and at the parameters the normal step starts from). ``None``
            (default): whenever that is exact (:meth:`resolve_reuse`, :meth:`reused_step_loss`). ``True``: require it.
            ``False``: never.
        steps, skipped: TRA steps taken / skipped.
    """

    policy: AugmentationPolicy
    optimizer: torch.optim.Optimizer | None = None
    lr_scheduler: Any | None = None
    shared: SharedPolicyProbabilities | None = None
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    validation_loss: str | int = "ce_dice"
    interval: int = 1
    warmup_epochs: int = 0
    method: str = "forward_difference"
    r: float | None = None
    meta_lr: float | None = None
    baseline: bool = True
    normalize: bool = True
    singleton_baseline: bool = True
    bins_key: str = "policy_bins"
    group_key: str = "policy_group"
    reuse_lookahead_gradient: bool | None = None
    steps: int = field(default=0, init=False)
    skipped: int = field(default=0, init=False)
    _singles: SingletonGroupBaseline = field(default_factory=SingletonGroupBaseline, init=False, repr=False)
    _reuse: bool = field(default=False, init=False, repr=False)
    _train_step: LookaheadTrainStep | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.policy, AugmentationPolicy):
            raise ValueError(f"{_OWNER} policy must be an AugmentationPolicy, got {type(self.policy)}.")
        if self.shared is not None and not isinstance(self.shared, SharedPolicyProbabilities):
            raise ValueError(f"{_OWNER} shared must be a SharedPolicyProbabilities, got {self.shared!r}.")
        self.interval = check_int_setting(_OWNER, "interval", self.interval, 1)
        self.warmup_epochs = check_int_setting(_OWNER, "warmup_epochs", self.warmup_epochs, 0)
        if self.reuse_lookahead_gradient is not None and not isinstance(self.reuse_lookahead_gradient, bool):
            raise ValueError(
                f"{_OWNER} reuse_lookahead_gradient must be true, false or null (automatic), got "
                f"reuse_lookahead_gradient={self.reuse_lookahead_gradient!r}."
            )
        self._reuse = self.reuse_lookahead_gradient is True  # the trainer resolves null (resolve_reuse)
        key = self.validation_loss
        if isinstance(key, numbers.Integral) and not isinstance(key, bool):
            names = {v: k for k, v in VALIDATION_LOSSES.items()}
            if int(key) not in names:
                raise ValueError(f"{_OWNER} validation_loss must be 0, 1 or 2 (softdsc), got {key!r}.")
            key = names[int(key)]
        if key not in VALIDATION_LOSSES:
            raise ValueError(
                f"{_OWNER} validation_loss must be one of {list(VALIDATION_LOSSES)}, got "
                f"validation_loss={self.validation_loss!r}."
            )
        self.validation_loss = key
        check_lookahead_settings(_OWNER, self.method, self.r, self.meta_lr)
        for name in ("baseline", "normalize", "singleton_baseline"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{_OWNER} {name} must be true or false, got {getattr(self, name)!r}.")
        for name in ("bins_key", "group_key"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{_OWNER} {name} must be a batch key (str), got {getattr(self, name)!r}.")
        if self.loss_function is not None and not callable(self.loss_function):
            raise ValueError(f"{_OWNER} loss_function must be callable, got {self.loss_function!r}.")
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(
                self.policy.parameters(), lr=DEFAULT_TRAINING_POLICY_LR, betas=(0.9, 0.999), weight_decay=0.0
            )

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> TrainingPolicyLearner:
        """Build from a JSON-style dict; raises ``ValueError`` naming an unknown or bad setting."""
        check_settings(_OWNER, config, _ALLOWED, required=("policy",))
        return cls(**dict(config))

    def is_due(self, iteration: int, epoch: int) -> bool:
        """Whether the TRA step runs at this 1-based iteration of this 1-based epoch."""
        return epoch > self.warmup_epochs and iteration % self.interval == 0

    # -- reusing the look-ahead's pass at theta for the normal step ---------------------------------------------
    @property
    def reuses_lookahead_gradient(self) -> bool:
        """Whether TRA steps keep their pass at ``theta`` for the normal step (the setting, resolved)."""
        return self._reuse

    def resolve_reuse(self, blockers: Iterable[str] = (), inexact: Iterable[str] = ()) -> bool:
        """Decide whether the trainer's normal step reuses the look-ahead's pass (``reuse_lookahead_gradient``).

        Args:
            blockers: trainer settings under which the reused step cannot replace the normal step (another inferer,
                ``accumulation_steps > 1``, an extra step: :func:`~monai_imbalance.engines.lookahead_step_blockers`);
                named in the error.
            inexact: trainer settings under which it replaces it only up to precision (AMP, ``compile``: the reused
                gradient is float32): allowed with ``reuse_lookahead_gradient=True``, not automatically.

        Returns:
            the decision (also :attr:`reuses_lookahead_gradient`).

        Raises:
            ValueError: ``reuse_lookahead_gradient=True`` with a blocker.
        """
        blockers, inexact = list(blockers), list(inexact)
        if self.reuse_lookahead_gradient is True and blockers:
            raise ValueError(
                f"{_OWNER} reuse_lookahead_gradient=true cannot be used with {'; '.join(blockers)}; set it to null "
                "(reuse only where exact) or false."
            )
        if self.reuse_lookahead_gradient is None:
            self._reuse = not blockers and not inexact
            if not self._reuse:
                logger.info(
                    "learned augmentation: the normal step of a TRA iteration runs its own forward/backward pass "
                    "(reuse of the look-ahead's pass is off with %s).",
                    "; ".join(blockers + inexact),
                )
        else:
            self._reuse = bool(self.reuse_lookahead_gradient)
        return self._reuse

    def pop_train_step(self) -> LookaheadTrainStep | None:
        """The last TRA step's pass at ``theta`` (kept when :attr:`reuses_lookahead_gradient`), once; else ``None``."""
        step, self._train_step = self._train_step, None
        return step

    def reused_step_loss(
        self, loss_function: Callable[[Any, Any], torch.Tensor], step: LookaheadTrainStep, label: Any
    ) -> torch.Tensor | None:
        """The trainer's loss on the kept prediction, when its gradient is the look-ahead's; else ``None``.

        The reused gradient is ``grad_theta L_tr(theta, w) = J^T grad_pred L_tr`` (``J``: the network's Jacobian at
        ``theta`` on this batch, ``w`` of value exactly 1). It is the normal step's gradient ``J^T grad_pred loss``
        exactly when the two losses have the same gradient with respect to the prediction, checked here on the kept
        prediction (two loss evaluations and their backward passes to the prediction, no network pass):
        ``||g_trainer - g_tra|| <= 1e-4 ||g_trainer||``. It holds when the trainer's loss is the batch mean of this
        learner's per-sample loss, e.g. ``DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)`` and
        :func:`~monai_imbalance.engines.per_sample_ce_dice` on equal-sized patches; a batch Dice, class weights or
        deep-supervision heads in the trainer's loss do not.

        Args:
            loss_function: the trainer's loss, ``loss(pred, label)``.
            step: the kept pass (its ``pred``: a tensor, or a list / tuple of heads).
            label: the batch's label ``(B, 1, *spatial)``, as the trainer gives it to its loss.

        Returns:
            the trainer's loss (detached scalar), or ``None`` (run the normal step): the gradients differ (a warning,
            and reuse is switched off in automatic mode) or a loss is not finite (this iteration only).

        Raises:
            ValueError: the gradients differ and ``reuse_lookahead_gradient=True``.
        """
        heads = [step.pred] if isinstance(step.pred, torch.Tensor) else list(step.pred)
        leaves = [h.detach().requires_grad_(True) for h in heads]
        pred = leaves[0] if isinstance(step.pred, torch.Tensor) else type(step.pred)(leaves)
        with torch.enable_grad():
            theirs = loss_function(pred, label).mean()
            mine = self._per_sample_loss(pred, plain_tensor(label)).mean()
            grads = [torch.autograd.grad(v, leaves, allow_unused=True) for v in (theirs, mine)]
        theirs, mine = theirs.detach(), mine.detach()
        if not (math.isfinite(float(theirs)) and math.isfinite(float(mine))):
            return None
        diff = ref = 0.0
        for a, b, leaf in zip(*grads, leaves, strict=True):
            a = torch.zeros_like(leaf) if a is None else a
            b = torch.zeros_like(leaf) if b is None else b
            diff += float(((a.double() - b.double()) ** 2).sum())
            ref += float((a.double() ** 2).sum())
        if math.sqrt(diff) <= 1e-4 * math.sqrt(ref):
            return theirs
        relative = math.sqrt(diff / max(ref, 1e-300))
        msg = (
            f"the trainer's loss ({float(theirs):.7g}) and the TRA training loss L_tr(theta, w) ({float(mine):.7g}) "
            f"have different gradients on the same prediction (relative difference {relative:.2g}): "
            "the look-ahead's gradient is not the normal step's. Give the learner a per-sample loss_function whose "
            "batch mean is the trainer's loss"
        )
        if self.reuse_lookahead_gradient is True:
            raise ValueError(f"{_OWNER} reuse_lookahead_gradient=true: {msg}.")
        logger.warning("%s; the normal step now runs its own forward/backward pass.", msg)
        self._reuse = False
        return None

    # -- the meta step --------------------------------------------------------------------------------------------
    def policy_batch(self, batchdata: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch's bins ``(B, O)`` and class groups ``(B,)`` (long, on ``device``)."""
        out = []
        for key in (self.bins_key, self.group_key):
            if not isinstance(batchdata, Mapping) or key not in batchdata:
                raise ValueError(
                    f"{_OWNER} expects '{key}' in the training batch: augment the patches with "
                    "monai_imbalance.transforms.PolicyAugmentd (it records the sampled bins and the class group)."
                )
            out.append(plain_tensor(batchdata[key]).to(device).long())
        return out[0], out[1].reshape(-1)

    def _per_sample_loss(self, pred: Any, label: torch.Tensor) -> torch.Tensor:
        logits = highest_resolution(pred, label.ndim)
        loss = per_sample_ce_dice(logits, label) if self.loss_function is None else self.loss_function(logits, label)
        if loss.ndim == 0 or loss.shape[0] != label.shape[0]:
            raise ValueError(
                f"{_OWNER} loss_function must return per-sample losses (B,) or (B, ...) with B = {label.shape[0]}, "
                f"got shape {tuple(loss.shape)}; use reduction='none'."
            )
        return loss.flatten(1).mean(1) if loss.ndim > 1 else loss

    def _validation_loss(
        self, pred: torch.Tensor, label: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """CE and / or batch foreground Dice (``validation_loss``), over the voxels of ``mask`` ``(B, 1, *sp)``."""
        loss = pred.new_zeros(())
        if self.validation_loss in ("ce", "ce_dice"):
            ce = F.cross_entropy(pred, label[:, 0].long(), reduction="none")
            loss = loss + (ce.mean() if mask is None else (ce * mask[:, 0]).sum() / mask.sum().clamp_min(1.0))
        if self.validation_loss in ("dice", "ce_dice"):
            loss = loss + foreground_dice_loss(pred, label, mask)
        return loss

    def meta_step(
        self,
        network: torch.nn.Module,
        segmenter_optimizer: torch.optim.Optimizer,
        image: torch.Tensor,
        label: torch.Tensor,
        bins: torch.Tensor,
        groups: torch.Tensor,
        validation: tuple[torch.Tensor, torch.Tensor],
        generator: torch.Generator | None = None,
        transformed: Any | None = None,
    ) -> dict[str, float]:
        """One TRA policy update by the one-step look-ahead hypergradient (JCSAugment, TRA meta-gradient).

        Args:
            network: the segmenter (a DDP wrapper is unwrapped).
            segmenter_optimizer: gives the virtual step's learning rate unless ``meta_lr``.
            image: the augmented training batch ``(B, C_in, *spatial)``.
            label: ``(B, 1, *spatial)`` class indices.
            bins: ``(B, O)`` the bins the loader drew.
            groups: ``(B,)`` the class-group indices.
            validation: ``(image, label)`` of a held-out validation batch ``(B_v, C_in, *sp)``, ``(B_v, 1, *sp)``.
            generator: optional ``torch.Generator`` for the re-drawn Gumbel noise of the weights.
            transformed: the validation batch seen through test-time transforms (a
                :class:`~monai_imbalance.engines.TransformedValidation`: its ``predict(forward, image)`` and ``mask``);
                ``None``: the plain validation batch.

        Returns:
            ``{"policy_meta_loss": L_val(theta'), "policy_meta_skipped": 0.0 or 1.0}``. When
            :attr:`reuses_lookahead_gradient`, the pass at ``theta`` is kept for :meth:`pop_train_step`.
        """
        assert self.optimizer is not None
        self._train_step = None
        segmenter = unwrap_module(network)
        lr = float(self.meta_lr if self.meta_lr is not None else segmenter_optimizer.param_groups[0]["lr"])
        val_image, val_label = validation
        mask = None if transformed is None else transformed.mask
        weights: PolicyWeights = self.policy.weights(bins, groups, generator=generator)
        w = weights.weight
        # value exactly 1 (the straight-through value 1 - y + y is 1 only up to rounding), gradient of w: L_tr(theta, w)
        # and its gradient in theta are then those of the unweighted batch loss, the normal step's
        w_one = (w - w.detach()) + 1.0
        first = LookaheadTrainPass(segmenter, self._reuse)

        def train_loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
            pred = functional_forward(segmenter, params, image)
            first.keep(pred)  # the first call is at theta (lookahead_hypergradient)
            per_sample = self._per_sample_loss(pred, label)
            return (w_one.to(per_sample.dtype) * per_sample).mean()

        def val_loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
            def forward(x: torch.Tensor) -> torch.Tensor:
                return highest_resolution(functional_forward(segmenter, params, x), x.ndim)

            pred = forward(val_image) if transformed is None else transformed.predict(forward, val_image)
            return self._validation_loss(pred, val_label, mask)

        result = lookahead_hypergradient(segmenter, train_loss, val_loss, [w], lr, method=self.method, r=self.r)
        self.steps += 1
        self._train_step = first.step(result)
        self.optimizer.zero_grad(set_to_none=True)
        skipped, reason = result.skipped, result.reason
        if not skipped:
            singles = self._singles(result.grads[0], groups) if self.baseline and self.singleton_baseline else None
            self.policy.accumulate_hypergradient(weights, result.grads[0], self.baseline, self.normalize, singles)
        skipped, reason = finish_auxiliary_step(self.policy, self.optimizer, skipped, reason, "nonfinite_policy_grad")
        if skipped:
            self.skipped += 1
            logger.warning(
                "TRA policy meta step %d skipped (%s); %d of %d TRA steps skipped so far.",
                self.steps,
                reason,
                self.skipped,
                self.steps,
            )
        elif self.shared is not None:
            self.shared.update(self.policy)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        return {"policy_meta_loss": float(result.val_loss), "policy_meta_skipped": float(skipped)}

    # -- DDP and checkpoints -------------------------------------------------------------------------------------
    def broadcast(self) -> None:
        """Copy rank 0's policy to every rank (no-op without a process group) and refresh the shared table."""
        if dist.is_available() and dist.is_initialized():
            with torch.no_grad():
                for tensor in self.policy.parameters():
                    dist.broadcast(tensor, src=0)
        if self.shared is not None:
            self.shared.update(self.policy)

    def state_dict(self) -> dict[str, Any]:
        """The policy, its optimizer and the counters (tensors, containers, primitives)."""
        assert self.optimizer is not None
        state = {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}
        return {**state, "steps": self.steps, "skipped": self.skipped, "singletons": self._singles.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` and refresh the shared table (a policy for another pool or grouping raises)."""
        assert self.optimizer is not None
        for name in ("policy", "optimizer"):
            if name not in state:
                raise ValueError(f"{_OWNER} state lacks '{name}'.")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps, self.skipped = int(state.get("steps", 0)), int(state.get("skipped", 0))
        self._singles.load_state_dict(state.get("singletons", {}))
        if self.shared is not None:
            self.shared.update(self.policy)
