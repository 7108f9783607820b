# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Learned augmentation: the TRA meta step, the TEA step and their joint schedule.

JCSAugment: Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data
augmentation in segmentation", IEEE TMI 2023, method section (class-specific training-time augmentation, its
meta-gradient, test-time augmentation and their joint optimisation). :class:`AugmentationPolicyLearner` holds the
settings, the state and the steps; :class:`AugmentationPolicyIteration` is the trainer's ``iteration_update``, so one
iteration is: TRA meta step -> TEA step -> segmenter step.

Example (JSON; the held-out validation loader holds patches of training cases left out of the training loader, e.g.
by :func:`monai_imbalance.data.holdout_split`)::

    "augmentation_learner": {
        "_target_": "monai_imbalance.engines.AugmentationPolicyLearner",
        "num_classes": 2,
        "policy": "@policy", "optimizer": "@policy_optimizer", "shared": "@shared_policy",
        "test_time_policy": "@test_time_policy", "test_time_optimizer": "@test_time_optimizer",
        "validation_loader": "@meta_validation_loader",
        "meta_interval": 1, "test_time_interval": 1, "warmup_epochs": 0, "test_time_warmup_epochs": 0,
        "num_test_time_samples": 10, "validation_loss": "ce_dice"
    },
    "trainer": {
        "_target_": "monai.engines.SupervisedTrainer",
        ...,
        "iteration_update": {
            "_target_": "monai_imbalance.engines.AugmentationPolicyIteration", "learner": "@augmentation_learner"
        }
    }
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from monai_imbalance.augment import (
    AugmentationPolicy,
    PolicyWeights,
    SharedPolicyProbabilities,
    TestTimePolicy,
)
from monai_imbalance.utils import add_to_output, check_settings, highest_resolution, plain_tensor, unwrap_module

from .auxiliary_step import finish_auxiliary_step
from .lookahead import (
    LookaheadTrainPass,
    LookaheadTrainStep,
    check_lookahead_settings,
    functional_forward,
    lookahead_hypergradient,
    lookahead_step_blockers,
    step_from_lookahead,
)

__all__ = [
    "DEFAULT_TEST_TIME_LR",
    "DEFAULT_TRAINING_POLICY_LR",
    "VALIDATION_LOSSES",
    "AugmentationPolicyIteration",
    "AugmentationPolicyLearner",
    "foreground_dice_loss",
    "per_sample_ce_dice",
]

logger = logging.getLogger(__name__)

#: The TRA policy's Adam learning rate for a U-Net (the authors' setting; DeepMedic 1e-3, nnFormer 2e-3).
DEFAULT_TRAINING_POLICY_LR = 5e-4
#: The TEA policy's Adam learning rate in joint training (the authors' setting; 5e-3 for TEA only).
DEFAULT_TEST_TIME_LR = 5e-5
#: The meta-validation losses (the authors' ``--softdsc`` 0, 1, 2).
VALIDATION_LOSSES = {"ce": 0, "dice": 1, "ce_dice": 2}

_ALLOWED = (
    "num_classes",
    "policy",
    "optimizer",
    "lr_scheduler",
    "shared",
    "test_time_policy",
    "test_time_optimizer",
    "test_time_lr_scheduler",
    "validation_loader",
    "loss_function",
    "validation_loss",
    "meta_interval",
    "test_time_interval",
    "warmup_epochs",
    "test_time_warmup_epochs",
    "num_test_time_samples",
    "test_time_patches",
    "augment_validation",
    "method",
    "r",
    "meta_lr",
    "baseline",
    "normalize",
    "bins_key",
    "group_key",
    "reuse_lookahead_gradient",
    "test_time_batch_size",
)


def per_sample_ce_dice(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """The TRA training loss per patch: cross-entropy + soft Dice over the foreground classes (JCSAugment, TRA).

    Args:
        pred: logits ``(B, C, *spatial)``.
        label: class indices ``(B, 1, *spatial)``.

    Returns:
        ``(B,)``: mean voxel CE of each patch plus ``1 - mean_{c >= 1} Dice_c`` of each patch (MONAI ``DiceLoss``,
        softmax, background excluded, ``reduction="none"``).
    """
    from monai.losses import DiceLoss

    target = label.long()
    ce = F.cross_entropy(pred, target[:, 0], reduction="none").flatten(1).mean(1)
    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, reduction="none")(pred, target)
    return ce + dice.flatten(1).mean(1)


def foreground_dice_loss(pred: torch.Tensor, label: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Batch soft Dice loss over all foreground classes, optionally restricted to a mask (JCSAugment's TEA loss).

    ``Dice_fg`` of the TEA loss and of the meta-validation loss; the authors' code used class 1 only.

    Args:
        pred: logits ``(B, C, *spatial)``.
        label: class indices ``(B, 1, *spatial)``.
        mask: ``(B, 1, *spatial)`` or ``(1, 1, *spatial)``, voxels to count (``None``: all).

    Returns:
        a scalar, ``1 - mean_{c >= 1} Dice_c`` with the sums taken over the batch (MONAI ``MaskedDiceLoss``,
        ``batch=True``).
    """
    from monai.losses import DiceLoss, MaskedDiceLoss

    if mask is None:
        return DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)(pred, label.long())
    loss = MaskedDiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    return loss(pred, label.long(), mask=mask)


def _uses_batch_statistics(model: torch.nn.Module) -> bool:
    """Whether a forward pass of ``model`` in its current mode mixes the samples of a batch.

    BatchNorm normalises with the batch's statistics in training mode, and in eval mode too without running statistics
    (``track_running_stats=False``); instance, group and layer normalisation, convolutions and activations act on each
    sample alone. When this is ``False``, one forward pass of a stacked batch gives each sample the output of its own
    forward pass (up to float rounding), which is how the TEA step and the TEA-transformed TRA validation batch are
    batched.
    """
    return any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats)
        for m in model.modules()
    )


def _int_setting(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"augmentation_policy {name} must be an integer >= {minimum}, got {name}={value!r}.")
    return int(value)


@dataclass
class AugmentationPolicyLearner:
    """Settings and state of learned augmentation (TRA, TEA, joint; JCSAugment, Li et al., IEEE TMI 2023).

    TRA meta step, every ``meta_interval`` iterations after ``warmup_epochs``. The training batch carries the bins
    the loader workers drew and each patch's class group (``policy_bins`` ``(B, O)``, ``policy_group`` ``(B,)``,
    written by :class:`~monai_imbalance.transforms.PolicyAugmentd`); the straight-through weights
    ``w = policy.weights(bins, groups).weight`` (value 1) are recomputed with gradient, and::

        L_tr(theta, w) = (1/B) sum_b w_b * l_b(f_theta(x_b), y_b)        # l_b: per-sample CE + soft Dice (BG excluded)
        theta'         = theta - lr * grad_theta L_tr                       # lr: the segmenter's current learning rate
        L_val(theta')  on a batch of the held-out validation loader         # CE + batch Dice by default
        g_b            = d L_val(theta'(w)) / d w_b                         # lookahead_hypergradient, aux = w

    then :meth:`~monai_imbalance.augment.AugmentationPolicy.accumulate_hypergradient` (per-group baseline, per-bin
    normalisation), the policy optimizer's step and ``shared.update(policy)``. With a test-time policy the
    validation prediction is ``P = T^{-1}(f_theta'(T(x)))`` for a transform ``T`` drawn from it, voxels moved out of
    the field of view left out of the loss.

    TEA step, every ``test_time_interval`` iterations after ``test_time_warmup_epochs``, on ``test_time_patches``
    validation patches: ``Z`` transforms ``t_z`` drawn with straight-through weights ``w_z``, predictions without
    gradient in eval mode ``P_z = T_z^{-1}(f_theta(T_z(x)))``, and::

        L_TEA = sum_z (w_z / sum w) * Dice_fg(P_z, y; mask = voxels inside the field of view of T_z)

    with ``Dice_fg`` the batch soft Dice over all foreground classes (:func:`foreground_dice_loss`); ``g_z = d L_TEA /
    d w_z`` goes through the test-time policy's ``accumulate_hypergradient`` to its own optimizer.

    A skipped look-ahead, a non-finite TEA loss or a non-finite policy gradient skips that policy's optimizer step
    (logged, counted in ``skipped`` / ``test_time_skipped``). Under DDP the policies are not wrapped: their gradients
    and skip flags are averaged over the ranks and their parameters broadcast from rank 0 at the start. For
    checkpoints, list the policies and their optimizers in the ``save_dict``, or the learner as one entry
    (:meth:`state_dict`; :meth:`load_state_dict` also refreshes the shared table).

    Attributes:
        num_classes: ``C``, classes of the labels (background included).
        policy: the training-time policy (TRA); ``None``: no TRA meta step.
        optimizer: the TRA policy's optimizer; ``None``: Adam, lr :data:`DEFAULT_TRAINING_POLICY_LR`, betas
            (0.9, 0.999), no weight decay (the authors' setting).
        lr_scheduler: the TRA policy's scheduler, stepped once per TRA step (the authors: poly 0.9).
        shared: the shared probability table the loader workers sample from; ``update(policy)`` after each TRA step.
        test_time_policy: the test-time policy (TEA); ``None``: no TEA step, and a plain validation batch for TRA.
        test_time_optimizer: its optimizer; ``None``: Adam, lr :data:`DEFAULT_TEST_TIME_LR`.
        test_time_lr_scheduler: its scheduler, stepped once per TEA step.
        validation_loader: an iterable of held-out validation batches (dicts with ``image`` ``(B, C_in, *sp)`` and
            ``label`` ``(B, 1, *sp)``); cycled. Required by either step.
        loss_function: the TRA training loss per patch, ``loss(pred, label)`` returning ``(B,)`` or ``(B, ...)``
            (averaged over the non-batch dimensions); default :func:`per_sample_ce_dice`.
        validation_loss: the meta-validation loss, ``"ce"``, ``"dice"`` (batch Dice) or ``"ce_dice"`` (default,
            the U-Net setting), or the authors' ``softdsc`` number 0 / 1 / 2.
        meta_interval: iterations between TRA steps (the authors' ``augupdate``, 1); runs when
            ``iteration % meta_interval == 0``.
        test_time_interval: iterations between TEA steps (1).
        warmup_epochs: epochs of plain training before the first TRA step (0).
        test_time_warmup_epochs: epochs before the first TEA step (0).
        num_test_time_samples: ``Z``, transforms drawn per TEA step (10).
        test_time_patches: validation patches the TEA step uses, those with foreground first (the authors: 1, an
            FG-centred patch); ``None``: the whole validation batch.
        augment_validation: transform the TRA validation batch by the current TEA policy when there is one (True).
        method: hypergradient method (:func:`~monai_imbalance.engines.lookahead_hypergradient`):
            ``"forward_difference"`` (default: one training-batch forward pass less than the authors' central
            ``"finite_difference"``, error first order in ``r``) or ``"exact"``.
        r: finite-difference radius, ``R = r / ||v||``; ``None``: the method's default (1e-3 one-sided, 0.01
            central, the authors').
        meta_lr: the virtual step's learning rate; ``None``: the segmenter optimizer's current learning rate.
        baseline: subtract the per-group mean of the weight gradients (the authors' rule; True).
        normalize: divide by the per-group, per-op bin counts (True).
        bins_key: batch key of the sampled bins ``(B, O)``.
        group_key: batch key of the class-group indices ``(B,)``.
        reuse_lookahead_gradient: on TRA iterations, let the trainer's normal step reuse the look-ahead's gradient
            and prediction at ``theta`` instead of another forward/backward pass. Exact: ``L_tr(theta, w)`` is
            evaluated with weights of value 1 on the batch and at the parameters the normal step starts from.
            ``None`` (default): whenever that is exact, i.e. the trainer has a ``SimpleInferer``,
            ``accumulation_steps=1``, no adversarial / mixup step, no AMP and no ``compile``, and its loss has the
            gradient of ``L_tr(theta, w)`` with respect to the prediction (checked at every reuse,
            :meth:`reused_step_loss`; a mismatch switches reuse off with a warning). ``True``: require it (the
            settings above raise, a loss mismatch raises; AMP and ``compile`` allowed: the reused step is then the
            float32 gradient). ``False``: never.
        test_time_batch_size: patches per forward pass of the TEA step and of the TEA-transformed TRA validation
            batch (``None``: all patches of one shape at once); the batching applies when the network does not
            mix the samples of a batch (no BatchNorm using batch statistics), else one patch per pass.
        steps, skipped: TRA steps taken / skipped; test_time_steps, test_time_skipped: the same for TEA.
    """

    num_classes: int
    policy: AugmentationPolicy | None = None
    optimizer: torch.optim.Optimizer | None = None
    lr_scheduler: Any | None = None
    shared: SharedPolicyProbabilities | None = None
    test_time_policy: TestTimePolicy | None = None
    test_time_optimizer: torch.optim.Optimizer | None = None
    test_time_lr_scheduler: Any | None = None
    validation_loader: Iterable | None = None
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    validation_loss: str | int = "ce_dice"
    meta_interval: int = 1
    test_time_interval: int = 1
    warmup_epochs: int = 0
    test_time_warmup_epochs: int = 0
    num_test_time_samples: int = 10
    test_time_patches: int | None = 1
    augment_validation: bool = True
    method: str = "forward_difference"
    r: float | None = None
    meta_lr: float | None = None
    baseline: bool = True
    normalize: bool = True
    bins_key: str = "policy_bins"
    group_key: str = "policy_group"
    reuse_lookahead_gradient: bool | None = None
    test_time_batch_size: int | None = None
    steps: int = 0
    skipped: int = 0
    test_time_steps: int = 0
    test_time_skipped: int = 0
    _val_iter: Iterator | None = field(default=None, init=False, repr=False)
    _reuse: bool = field(default=False, init=False, repr=False)
    _train_step: LookaheadTrainStep | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.num_classes = _int_setting("num_classes", self.num_classes, 2)
        self.meta_interval = _int_setting("meta_interval", self.meta_interval, 1)
        self.test_time_interval = _int_setting("test_time_interval", self.test_time_interval, 1)
        self.warmup_epochs = _int_setting("warmup_epochs", self.warmup_epochs, 0)
        self.test_time_warmup_epochs = _int_setting("test_time_warmup_epochs", self.test_time_warmup_epochs, 0)
        self.num_test_time_samples = _int_setting("num_test_time_samples", self.num_test_time_samples, 1)
        if self.test_time_patches is not None:
            self.test_time_patches = _int_setting("test_time_patches", self.test_time_patches, 1)
        if self.test_time_batch_size is not None:
            self.test_time_batch_size = _int_setting("test_time_batch_size", self.test_time_batch_size, 1)
        if self.reuse_lookahead_gradient is not None and not isinstance(self.reuse_lookahead_gradient, bool):
            raise ValueError(
                "augmentation_policy reuse_lookahead_gradient must be true, false or null (automatic), got "
                f"reuse_lookahead_gradient={self.reuse_lookahead_gradient!r}."
            )
        self._reuse = self.reuse_lookahead_gradient is True  # the trainer resolves null (resolve_reuse)
        if self.policy is None and self.test_time_policy is None:
            raise ValueError("augmentation_policy needs a policy (TRA), a test_time_policy (TEA), or both.")
        if self.policy is not None and not isinstance(self.policy, AugmentationPolicy):
            raise ValueError(f"augmentation_policy policy must be an AugmentationPolicy, got {type(self.policy)}.")
        if self.test_time_policy is not None and not isinstance(self.test_time_policy, TestTimePolicy):
            raise ValueError(
                f"augmentation_policy test_time_policy must be a TestTimePolicy, got {type(self.test_time_policy)}."
            )
        if self.shared is not None and self.policy is None:
            raise ValueError("augmentation_policy shared is set but there is no policy to share.")
        if self.shared is not None and not isinstance(self.shared, SharedPolicyProbabilities):
            raise ValueError(f"augmentation_policy shared must be a SharedPolicyProbabilities, got {self.shared!r}.")
        if self.validation_loader is None:
            raise ValueError(
                "augmentation_policy validation_loader is required: a loader of patches from training cases held out "
                "of the training loader (monai_imbalance.data.holdout_split)."
            )
        key = self.validation_loss
        if isinstance(key, numbers.Integral) and not isinstance(key, bool):
            names = {v: k for k, v in VALIDATION_LOSSES.items()}
            if int(key) not in names:
                raise ValueError(f"augmentation_policy validation_loss must be 0, 1 or 2 (softdsc), got {key!r}.")
            key = names[int(key)]
        if key not in VALIDATION_LOSSES:
            raise ValueError(
                f"augmentation_policy validation_loss must be one of {list(VALIDATION_LOSSES)}, got "
                f"validation_loss={self.validation_loss!r}."
            )
        self.validation_loss = key
        check_lookahead_settings("augmentation_policy", self.method, self.r, self.meta_lr)
        for name in ("augment_validation", "baseline", "normalize"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"augmentation_policy {name} must be true or false, got {getattr(self, name)!r}.")
        for name in ("bins_key", "group_key"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"augmentation_policy {name} must be a batch key (str), got {getattr(self, name)!r}.")
        if self.loss_function is not None and not callable(self.loss_function):
            raise ValueError(f"augmentation_policy loss_function must be callable, got {self.loss_function!r}.")
        if self.policy is not None and self.optimizer is None:
            self.optimizer = torch.optim.Adam(
                self.policy.parameters(), lr=DEFAULT_TRAINING_POLICY_LR, betas=(0.9, 0.999), weight_decay=0.0
            )
        if self.test_time_policy is not None and self.test_time_optimizer is None:
            self.test_time_optimizer = torch.optim.Adam(
                self.test_time_policy.parameters(), lr=DEFAULT_TEST_TIME_LR, betas=(0.9, 0.999), weight_decay=0.0
            )

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> AugmentationPolicyLearner:
        """Build from a JSON-style dict; raises ``ValueError`` naming an unknown or bad setting."""
        check_settings("augmentation_policy", config, _ALLOWED, required=("num_classes",))
        return cls(**dict(config))

    # -- the schedule ---------------------------------------------------------------------------------------------
    def is_meta_iteration(self, iteration: int, epoch: int) -> bool:
        """Whether the TRA step runs at this 1-based iteration of this 1-based epoch."""
        return self.policy is not None and epoch > self.warmup_epochs and iteration % self.meta_interval == 0

    def is_test_time_iteration(self, iteration: int, epoch: int) -> bool:
        """Whether the TEA step runs at this 1-based iteration of this 1-based epoch."""
        return (
            self.test_time_policy is not None
            and epoch > self.test_time_warmup_epochs
            and iteration % self.test_time_interval == 0
        )

    # -- reusing the look-ahead's pass at theta for the normal step ---------------------------------------------
    @property
    def reuses_lookahead_gradient(self) -> bool:
        """Whether TRA steps keep their pass at ``theta`` for the normal step (the setting, resolved)."""
        return self._reuse

    def resolve_reuse(self, blockers: Iterable[str] = (), inexact: Iterable[str] = ()) -> bool:
        """Decide whether the trainer's normal step reuses the look-ahead's pass (``reuse_lookahead_gradient``).

        Args:
            blockers: trainer settings under which the reused step cannot replace the normal step (e.g. another
                inferer); named in the error.
            inexact: trainer settings under which it replaces it only up to precision (AMP, ``compile``): allowed
                with ``reuse_lookahead_gradient=True``, not automatically.

        Returns:
            the decision (also :attr:`reuses_lookahead_gradient`).

        Raises:
            ValueError: ``reuse_lookahead_gradient=True`` with a blocker.
        """
        blockers, inexact = list(blockers), list(inexact)
        if self.reuse_lookahead_gradient is True and blockers:
            raise ValueError(
                f"augmentation_policy reuse_lookahead_gradient=true cannot be used with {'; '.join(blockers)}; set it "
                "to null (reuse only where exact) or false."
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
        exactly when the two losses have the same gradient with respect to the prediction, which is checked here on
        the kept prediction at the price of two loss evaluations and their backward passes to the prediction (no
        network pass): ``||g_trainer - g_tra|| <= 1e-4 ||g_trainer||`` (float rounding gives about ``1e-7``). It holds
        when the trainer's loss is the batch mean of this learner's per-sample loss, e.g. the bundle's
        ``DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)`` and :func:`per_sample_ce_dice` on
        equal-sized patches; a batch Dice, class weights or deep-supervision heads in the trainer's loss do not.

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
            raise ValueError(f"augmentation_policy reuse_lookahead_gradient=true: {msg}.")
        logger.warning("%s; the normal step now runs its own forward/backward pass.", msg)
        self._reuse = False
        return None

    # -- data ----------------------------------------------------------------------------------------------------
    def validation_batch(self) -> Any:
        """The next held-out validation batch (the loader is restarted when exhausted)."""
        assert self.validation_loader is not None
        for _ in range(2):
            if self._val_iter is None:
                self._val_iter = iter(self.validation_loader)
            try:
                return next(self._val_iter)
            except StopIteration:
                self._val_iter = None
        raise ValueError("augmentation_policy validation_loader yielded no batch.")

    def _policy_batch(self, batchdata: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        for key in (self.bins_key, self.group_key):
            if not isinstance(batchdata, Mapping) or key not in batchdata:
                raise ValueError(
                    f"augmentation_policy expects '{key}' in the training batch: augment the patches with "
                    "monai_imbalance.transforms.PolicyAugmentd (it records the sampled bins and the class group)."
                )
            out.append(plain_tensor(batchdata[key]).to(device).long())
        return out[0], out[1].reshape(-1)

    def _per_sample_loss(self, pred: Any, label: torch.Tensor) -> torch.Tensor:
        logits = highest_resolution(pred, label.ndim)
        loss = per_sample_ce_dice(logits, label) if self.loss_function is None else self.loss_function(logits, label)
        if loss.ndim == 0 or loss.shape[0] != label.shape[0]:
            raise ValueError(
                f"augmentation_policy loss_function must return per-sample losses (B,) or (B, ...) with B = "
                f"{label.shape[0]}, got shape {tuple(loss.shape)}; use reduction='none'."
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

    # -- TRA ------------------------------------------------------------------------------------------------------
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
    ) -> dict[str, float]:
        """One TRA policy update by the one-step look-ahead hypergradient (JCSAugment, TRA meta-gradient).

        Args:
            network: the segmenter (a DDP wrapper is unwrapped).
            segmenter_optimizer: gives the virtual step's learning rate unless ``meta_lr``.
            image: the augmented training batch ``(B, C_in, *spatial)``.
            label: ``(B, 1, *spatial)`` class indices.
            bins: ``(B, O)`` the bins the loader drew.
            groups: ``(B,)`` the class-group indices.
            validation: ``(image, label)`` of a held-out validation batch, on the device.
            generator: optional ``torch.Generator`` for the re-drawn Gumbel noise of the weights.

        Returns:
            ``{"policy_meta_loss": L_val(theta'), "policy_meta_skipped": 0.0 or 1.0}``. When
            :attr:`reuses_lookahead_gradient`, the pass at ``theta`` is kept for :meth:`pop_train_step`.
        """
        assert self.policy is not None and self.optimizer is not None
        self._train_step = None
        segmenter = unwrap_module(network)
        lr = float(self.meta_lr if self.meta_lr is not None else segmenter_optimizer.param_groups[0]["lr"])
        val_image, val_label = validation
        transforms = self._validation_transforms(val_image.shape[0])
        mask = None if transforms is None else self._field_of_view(val_image, transforms)
        batched = not _uses_batch_statistics(segmenter)
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
            if transforms is None:
                pred = highest_resolution(functional_forward(segmenter, params, val_image), val_image.ndim)
            else:
                pred = self._transformed_prediction(
                    lambda x: highest_resolution(functional_forward(segmenter, params, x), x.ndim),
                    val_image,
                    transforms,
                    batched,
                )
            return self._validation_loss(pred, val_label, mask)

        result = lookahead_hypergradient(segmenter, train_loss, val_loss, [w], lr, method=self.method, r=self.r)
        self.steps += 1
        self._train_step = first.step(result)
        self.optimizer.zero_grad(set_to_none=True)
        skipped, reason = result.skipped, result.reason
        if not skipped:
            self.policy.accumulate_hypergradient(weights, result.grads[0], self.baseline, self.normalize)
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

    # -- TEA ------------------------------------------------------------------------------------------------------
    def _validation_transforms(self, batch_size: int) -> list[int] | None:
        """One test-time transform per validation patch, drawn from the current TEA probabilities (or ``None``)."""
        if self.test_time_policy is None or not self.augment_validation:
            return None
        probs = self.test_time_policy.probabilities()
        return torch.multinomial(probs, batch_size, replacement=True).tolist()

    def _field_of_view(self, image: torch.Tensor, transforms: list[int]) -> torch.Tensor | None:
        """``(B, 1, *sp)`` float: 1 where ``T_b^{-1}(T_b(.))`` keeps content in the field of view (``None``: all)."""
        assert self.test_time_policy is not None
        pool = self.test_time_policy.pool
        covers = [pool.coverage(image.shape[2:], t, device=image.device) for t in transforms]
        if all(c is None for c in covers):
            return None
        ones = image.new_ones((1, *image.shape[2:]))
        return torch.stack([ones if c is None else (c > 0).to(image.dtype) for c in covers])

    def _predict_pairs(
        self,
        predict: Callable[[torch.Tensor], torch.Tensor],
        image: torch.Tensor,
        pairs: list[tuple[int, int]],
        batched: bool,
    ) -> list[torch.Tensor]:
        """``T_t^{-1}(predict(T_t(x_b)))`` ``(K, *spatial)`` for each ``(b, t)`` of ``pairs``, in order.

        ``batched``: the transformed patches of one shape go through ``predict`` together, ``test_time_batch_size``
        at a time (exact when the network does not mix samples, :func:`_uses_batch_statistics`); else one per call.
        """
        assert self.test_time_policy is not None
        pool = self.test_time_policy.pool
        inputs = [pool.forward(image[b], t) for b, t in pairs]
        size = (self.test_time_batch_size or len(pairs)) if batched else 1
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(inputs):
            by_shape.setdefault(tuple(x.shape), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(pairs)
        for members in by_shape.values():
            for start in range(0, len(members), size):
                chunk = members[start : start + size]
                pred = predict(torch.stack([inputs[i] for i in chunk]))
                for j, i in enumerate(chunk):
                    out[i] = pool.inverse(pred[j], pairs[i][1])
        return out  # type: ignore[return-value]

    def _transformed_prediction(
        self,
        predict: Callable[[torch.Tensor], torch.Tensor],
        image: torch.Tensor,
        transforms: list[int],
        batched: bool = False,
    ) -> torch.Tensor:
        """``stack_b T_b^{-1}(predict(T_b(x_b)))``, ``(B, K, *spatial)`` (one transform per patch)."""
        return torch.stack(self._predict_pairs(predict, image, list(enumerate(transforms)), batched))

    def _test_time_patches(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``test_time_patches`` patches of the batch, those holding foreground first."""
        if self.test_time_patches is None or self.test_time_patches >= image.shape[0]:
            return image, label
        has_fg = (label.flatten(1) > 0).any(1)
        order = torch.cat([torch.nonzero(has_fg)[:, 0], torch.nonzero(~has_fg)[:, 0]])[: self.test_time_patches]
        return image[order], label[order]

    def test_time_step(
        self,
        network: torch.nn.Module,
        validation: tuple[torch.Tensor, torch.Tensor],
        indices: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, float]:
        """One TEA policy update (JCSAugment, TEA); the segmenter is not updated (no gradient, eval mode).

        Each distinct transform among the ``Z`` draws is evaluated once, the transformed patches batched when the
        network does not mix the samples of a batch; the loss of a draw is that of its transform.

        Args:
            network: the segmenter.
            validation: ``(image, label)`` of a held-out validation batch ``(B, C_in, *sp)``, ``(B, 1, *sp)``; the
                step uses ``test_time_patches`` of them.
            indices: ``(Z,)`` transform indices to use instead of fresh draws (their weights are then recomputed
                with re-drawn Gumbel noise, :meth:`~monai_imbalance.augment.TestTimePolicy.weights`).
            generator: optional ``torch.Generator`` for that re-drawn noise.

        Returns:
            ``{"test_time_loss": L_TEA, "test_time_skipped": 0.0 or 1.0}``.
        """
        assert self.test_time_policy is not None and self.test_time_optimizer is not None
        policy = self.test_time_policy
        segmenter = unwrap_module(network)
        image, label = self._test_time_patches(*validation)
        if indices is None:
            weights = policy.sample(self.num_test_time_samples)
        else:
            weights = policy.weights(indices, generator=generator)
        chosen = weights.bins[:, 0].tolist()

        def _predict(x: torch.Tensor) -> torch.Tensor:
            return highest_resolution(segmenter(x), x.ndim)

        was_training = segmenter.training
        segmenter.eval()
        distinct = list(dict.fromkeys(chosen))  # a transform drawn twice has one (deterministic) loss
        n = len(image)
        try:
            with torch.no_grad():
                batched = not _uses_batch_statistics(segmenter)
                pairs = [(b, t) for t in distinct for b in range(n)]
                preds = self._predict_pairs(_predict, image, pairs, batched)
                loss_of = {}
                for j, t in enumerate(distinct):
                    pred = torch.stack(preds[j * n : (j + 1) * n])
                    mask = self._field_of_view(image, [t] * n)
                    loss_of[t] = foreground_dice_loss(pred.float(), label, mask)
        finally:
            segmenter.train(was_training)
        per_z = torch.stack([loss_of[t] for t in chosen]).to(weights.per_op.dtype)  # (Z,)
        w = weights.weight.detach().requires_grad_(True)
        loss = (w * per_z).sum() / w.sum()
        (grad_w,) = torch.autograd.grad(loss, w)
        self.test_time_steps += 1
        self.test_time_optimizer.zero_grad(set_to_none=True)
        skipped, reason = not bool(torch.isfinite(grad_w).all()), "nonfinite_test_time_loss"
        if not skipped:
            policy.accumulate_hypergradient(weights, grad_w, self.baseline, self.normalize)
            reason = None
        skipped, reason = finish_auxiliary_step(
            policy, self.test_time_optimizer, skipped, reason, "nonfinite_policy_grad"
        )
        if skipped:
            self.test_time_skipped += 1
            logger.warning(
                "TEA policy step %d skipped (%s); %d of %d TEA steps skipped so far.",
                self.test_time_steps,
                reason,
                self.test_time_skipped,
                self.test_time_steps,
            )
        if self.test_time_lr_scheduler is not None:
            self.test_time_lr_scheduler.step()
        return {"test_time_loss": float(loss.detach()), "test_time_skipped": float(skipped)}

    # -- the trainer's hook --------------------------------------------------------------------------------------
    def iteration(self, engine: Any, batchdata: Any) -> dict[str, float]:
        """The steps due at this iteration, before the segmenter step: TRA meta step, then TEA (joint schedule).

        Args:
            engine: the trainer (``state.iteration``, ``state.epoch``, ``network``, ``optimizer``,
                ``prepare_batch``, ``state.device``).
            batchdata: the collated training batch.

        Returns:
            the values of the steps that ran (empty when none did).
        """
        self._train_step = None
        it, epoch = engine.state.iteration, engine.state.epoch
        run_tra, run_tea = self.is_meta_iteration(it, epoch), self.is_test_time_iteration(it, epoch)
        if not (run_tra or run_tea):
            return {}
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device = engine.state.device
        val = self.validation_batch()
        val_image, val_label = engine.prepare_batch(val, device, engine.non_blocking, **engine.to_kwargs)[:2]
        validation = (plain_tensor(val_image).float(), plain_tensor(val_label))
        out: dict[str, float] = {}
        if run_tra:
            batch = engine.prepare_batch(batchdata, device, engine.non_blocking, **engine.to_kwargs)
            bins, groups = self._policy_batch(batchdata, plain_tensor(batch[0]).device)
            engine.network.train()
            out.update(
                self.meta_step(
                    engine.network,
                    engine.optimizer,
                    plain_tensor(batch[0]),
                    plain_tensor(batch[1]),
                    bins,
                    groups,
                    validation,
                )
            )
        if run_tea:
            out.update(self.test_time_step(engine.network, validation))
        return out

    def broadcast(self) -> None:
        """Copy rank 0's policies to every rank and refresh the shared table (no-op without a process group)."""
        if dist.is_available() and dist.is_initialized():
            with torch.no_grad():
                for module in (self.policy, self.test_time_policy):
                    if module is not None:
                        for tensor in module.parameters():
                            dist.broadcast(tensor, src=0)
        if self.shared is not None and self.policy is not None:
            self.shared.update(self.policy)

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Both policies, both optimizers and the counters (tensors, containers, primitives)."""
        state: dict[str, Any] = {
            "steps": self.steps,
            "skipped": self.skipped,
            "test_time_steps": self.test_time_steps,
            "test_time_skipped": self.test_time_skipped,
        }
        for name in ("policy", "optimizer", "test_time_policy", "test_time_optimizer"):
            obj = getattr(self, name)
            if obj is not None:
                state[name] = obj.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (a policy for another pool or grouping raises ``ValueError``).

        Raises:
            ValueError: a policy in the state that this learner does not have, or the reverse.
        """
        for name in ("policy", "optimizer", "test_time_policy", "test_time_optimizer"):
            obj = getattr(self, name)
            if (obj is None) != (name not in state):
                raise ValueError(
                    f"augmentation_policy state {'has' if obj is None else 'lacks'} '{name}', which this learner "
                    f"{'does not have' if obj is None else 'has'}."
                )
            if obj is not None:
                obj.load_state_dict(state[name])
        for name in ("steps", "skipped", "test_time_steps", "test_time_skipped"):
            setattr(self, name, int(state.get(name, 0)))
        if self.shared is not None and self.policy is not None:
            self.shared.update(self.policy)


class AugmentationPolicyIteration:
    """The ``iteration_update`` of a trainer with learned augmentation (JCSAugment, Li et al., IEEE TMI 2023).

    Each iteration: the steps of :meth:`AugmentationPolicyLearner.iteration` that are due (TRA meta step, then TEA
    step), then the trainer's own iteration (``engine._iteration``: ``SupervisedTrainer``'s step, or a
    ``RegularisedSupervisedTrainer``'s step and its extra steps), unchanged: the unweighted loss on the
    policy-augmented batch. On TRA iterations the normal step takes the look-ahead's pass at ``theta`` instead of its
    own forward/backward pass where that is the same gradient (the learner's ``reuse_lookahead_gradient``, resolved on
    the first call from the trainer: :func:`~monai_imbalance.engines.lookahead_step_blockers`, AMP, ``compile``). The
    first call also copies rank 0's policies to every rank (DDP). The output gains ``policy_meta_loss`` /
    ``policy_meta_skipped`` / ``test_time_loss`` / ``test_time_skipped`` when those steps ran.

    Args:
        learner: the :class:`AugmentationPolicyLearner`, or its JSON settings.

    Raises:
        ValueError: (first call) ``reuse_lookahead_gradient=True`` with trainer settings that block it.
    """

    def __init__(self, learner: AugmentationPolicyLearner | Mapping[str, Any]) -> None:
        if not isinstance(learner, AugmentationPolicyLearner):
            learner = AugmentationPolicyLearner.from_mapping(learner)
        self.learner = learner
        self._checked = False

    def _check(self, engine: Any) -> None:
        inexact = ["amp (the reused gradient is float32, the normal step's autocast)"] if engine.amp else []
        self.learner.resolve_reuse(lookahead_step_blockers(engine), inexact + (["compile"] if engine.compile else []))
        self.learner.broadcast()
        self._checked = True

    def _reused_step(self, engine: Any, batchdata: Any) -> Any | None:
        """The normal step of a TRA iteration from the look-ahead's pass at ``theta``, when the learner kept one.

        The look-ahead's training loss ``L_tr(theta, w)`` is the per-sample loss weighted by ``w`` of value 1 on this
        batch at these parameters (the TEA step in between does not change them), so its gradient is the normal
        step's when the trainer's loss has the same gradient with respect to the prediction, which the learner checks
        (:meth:`AugmentationPolicyLearner.reused_step_loss`). The output's ``loss`` is the trainer's loss on the kept
        prediction, as the normal step would report it.

        Returns:
            ``engine.state.output``, or ``None``: nothing kept or the losses differ (run the normal step as usual).
        """
        step = self.learner.pop_train_step()
        if step is None:
            return None
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        loss = self.learner.reused_step_loss(engine.loss_function, step, batch[1])
        if loss is None:
            return None
        step.loss = loss
        return step_from_lookahead(engine, batch[0], batch[1], step)

    def __call__(self, engine: Any, batchdata: Any) -> Any:
        """The policy steps that are due, then the trainer's iteration; returns its output.

        Args:
            engine: the trainer (a ``SupervisedTrainer``).
            batchdata: the collated training batch, with the learner's ``bins_key`` ``(B, O)`` and ``group_key``
                ``(B,)`` (written by :class:`~monai_imbalance.transforms.PolicyAugmentd`).
        """
        if not self._checked:
            self._check(engine)
        extra = self.learner.iteration(engine, batchdata)
        output = self._reused_step(engine, batchdata)
        if output is None:
            output = engine._iteration(engine, batchdata)
        return add_to_output(output, extra) if extra else output
