# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""A ``SupervisedTrainer`` that runs extra regularisation steps (adversarial, mixup) or CoLab's context labels.

The training loop of Li, Kamnitsas, Glocker, "Analyzing overfitting under class imbalance in neural networks for
image segmentation", IEEE TMI 2021 (method section: asymmetric adversarial training and asymmetric mixup; the
authors' nnU-Net ``network_trainer.py::run_iterationRAW`` and DeepMedic ``training.py``) takes up to three optimizer
steps per iteration:

1. the normal step on the (augmented) batch with the training loss: exactly :class:`monai.engines.SupervisedTrainer`'s
   step, with its ``IterationEvents``, AMP, ``optim_set_to_none``, metrics, postprocessing and ``loss`` output;
2. if ``adversarial`` is set: ``r_adv`` of L2 norm ``eps`` per sample in the direction of the input gradient of the
   loss on rare-class voxels, then a step on ``x + r_adv`` with the full loss;
3. if ``mixup`` is set: a step on ``lam * x + (1 - lam) * x.flip(0)`` with the mixed target and loss mask of
   :func:`~monai_imbalance.engines.mixup_labels`.

Each extra step runs on step 1's augmented batch, or on the raw (un-augmented) patch when its config says
``"raw": true``; the data pipeline then copies the patch after the crop and before the random augmentations with
``CopyItemsd(keys=["image", "label"], times=1, names=["image_raw", "label_raw"])``. Only step 1's loss is
``engine.state.output["loss"]``; the extra losses are ``"loss_adversarial"`` and ``"loss_mixup"`` (and the mixing
weight ``"mixup_lambda"``). The extra steps run after step 1's ``MODEL_COMPLETED`` and before
``ITERATION_COMPLETED``.

Example (JSON)::

    "trainer": {
        "_target_": "monai_imbalance.engines.RegularisedSupervisedTrainer",
        ...,  # every SupervisedTrainer argument
        "adversarial": {"eps": 10.0, "xi": 1e-05, "rare_classes": [1], "raw": true},
        "mixup": {"alpha": 0.2, "margin": 0.2, "rare_classes": [1], "raw": true, "loss_function": "@mixup_loss"}
    }
"""

from __future__ import annotations

import contextlib
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import SimpleInferer
from monai.utils import CommonKeys as Keys
from monai.utils import IgniteInfo, min_version, optional_import

from monai_imbalance.utils import check_rare_classes, check_settings, highest_resolution, plain_tensor, unwrap_module

from .adversarial import (
    DEFAULT_EPS,
    DEFAULT_XI,
    adversarial_perturbation,
    perturbation_from_gradient,
    rare_direction_loss,
)
from .augmentation_policy import AugmentationPolicyLearner
from .auxiliary_step import average_over_ranks
from .context_labels import ContextLabelLearner, ContextTargetLoss, LookaheadTrainStep
from .mixup import mixup_images, mixup_labels, sample_mixup_lambda

if TYPE_CHECKING:
    from ignite.engine import Events
    from torch.optim import Optimizer
    from torch.utils.data import DataLoader

if not TYPE_CHECKING:
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["RegularisedSupervisedTrainer", "AdversarialConfig", "MixupConfig"]


def _non_negative(name: str, value: Any, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {name}={value!r}.")
    if not (value > 0.0 if strict else value >= 0.0):
        raise ValueError(f"{name} must be {'>' if strict else '>='} 0, got {name}={value!r}.")
    return float(value)


@dataclass(frozen=True)
class AdversarialConfig:
    """Settings of the adversarial step (Li, Kamnitsas, Glocker, IEEE TMI 2021: asymmetric adversarial training).

    Defaults are the authors' nnU-Net / DeepMedic settings.

    Attributes:
        eps: L2 norm of the perturbation per sample (``>= 0``).
        xi: size of the random start (``>= 0``).
        rare_classes: classes whose voxels drive the direction; ``None``: all (symmetric adversarial training).
        raw: compute the perturbation and take the step on the raw (un-augmented) batch.
        dice: add nnU-Net's soft Dice on rare voxels to the direction loss (default CE only, as DeepMedic).
        distribution: random start, ``"normal"`` (nnU-Net) or ``"uniform"`` (DeepMedic).
        loss_function: loss of the step on ``x + r_adv``; ``None``: the trainer's ``extra_loss_function``.
        reuse_forward: take the direction from step 1's forward pass instead of a probe forward pass at
            ``x + xi * d``: ``torch.autograd.grad`` of the rare-voxel loss of step 1's prediction with respect to its
            input, before step 1's backward pass (which is unchanged). The probe's offset (``xi = 1e-5`` over a unit
            L2 norm) is below the float32 spacing of most voxels, so its gradient is the gradient at ``x`` up to
            rounding; the difference from the authors' loop is that the direction uses the weights before step 1's
            update, not after. ``xi`` and ``distribution`` are unused on this path. Only with ``raw=False``.
            Default ``False``: the authors' probe.
    """

    eps: float = DEFAULT_EPS
    xi: float = DEFAULT_XI
    rare_classes: tuple[int, ...] | None = None
    raw: bool = False
    dice: bool = False
    distribution: str = "normal"
    loss_function: Callable | None = None
    reuse_forward: bool = False

    def __post_init__(self) -> None:
        if self.reuse_forward and self.raw:
            raise ValueError(
                "adversarial reuse_forward=True needs raw=False: with raw=True the direction is taken at the raw "
                "batch, which step 1's forward pass does not see."
            )

    @property
    def reuses_forward(self) -> bool:
        """Whether the direction comes from step 1's forward pass (``reuse_forward`` resolved)."""
        return bool(self.reuse_forward)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> AdversarialConfig:
        """Validate a JSON-style dict; raises ``ValueError`` naming a bad or unknown setting."""
        check_settings("adversarial", config, cls.__dataclass_fields__)
        distribution = config.get("distribution", "normal")
        if distribution not in ("normal", "uniform"):
            raise ValueError(f"adversarial distribution must be 'normal' or 'uniform', got {distribution!r}.")
        return cls(
            eps=_non_negative("eps", config.get("eps", DEFAULT_EPS)),
            xi=_non_negative("xi", config.get("xi", DEFAULT_XI)),
            rare_classes=check_rare_classes(config.get("rare_classes")),
            raw=bool(config.get("raw", False)),
            dice=bool(config.get("dice", False)),
            distribution=distribution,
            loss_function=config.get("loss_function"),
            reuse_forward=bool(config.get("reuse_forward", False)),
        )


@dataclass(frozen=True)
class MixupConfig:
    """Settings of the mixup step (Li, Kamnitsas, Glocker, IEEE TMI 2021: asymmetric mixup).

    Defaults are the authors' nnU-Net settings.

    Attributes:
        alpha: Beta concentration (``> 0``; nnU-Net 0.2, DeepMedic 1.0).
        margin: ``m_mix`` in ``[0, 1)``: ``lam = Beta(alpha, alpha) * (1 - margin)``.
        rare_classes: rare classes of the label rule; ``None``: symmetric mixup with soft labels.
        raw: mix the raw (un-augmented) batch, as the reference code does.
        loss_function: loss of the mixup step; ``None``: the trainer's ``extra_loss_function``. Asymmetric mixup
            calls it as ``loss(pred, target, mask=mask)`` (target one-hot ``(B, C, *sp)``, mask ``(B, 1, *sp)``),
            symmetric mixup as ``loss(pred, target)`` with a soft target.
    """

    alpha: float = 0.2
    margin: float = 0.2
    rare_classes: tuple[int, ...] | None = None
    raw: bool = False
    loss_function: Callable | None = None

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> MixupConfig:
        """Validate a JSON-style dict; raises ``ValueError`` naming a bad or unknown setting."""
        check_settings("mixup", config, cls.__dataclass_fields__)
        margin = _non_negative("margin", config.get("margin", 0.2))
        if margin >= 1.0:
            raise ValueError(f"margin must be in [0, 1), got margin={margin!r}.")
        return cls(
            alpha=_non_negative("alpha", config.get("alpha", 0.2), strict=True),
            margin=margin,
            rare_classes=check_rare_classes(config.get("rare_classes")),
            raw=bool(config.get("raw", False)),
            loss_function=config.get("loss_function"),
        )


class RegularisedSupervisedTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` with optional adversarial and mixup steps after the normal step (Li et al., TMI 2021).

    With ``adversarial=None`` and ``mixup=None`` it is exactly :class:`monai.engines.SupervisedTrainer`. See the module
    docstring for the steps, the outputs and how the raw batch is wired. The trainer moves the raw keys to the device
    itself when a step asks for them (the default ``prepare_batch`` ignores them).

    Args:
        device: the device to run on.
        max_epochs: the number of epochs.
        train_data_loader: the training data (batches are dicts with ``image``, ``label`` and, for ``raw`` steps,
            ``raw_image_key`` / ``raw_label_key``).
        network: the segmenter, returning logits ``(B, C, *spatial)``.
        optimizer: the optimizer; it steps once per enabled step (1 to 3 times per iteration).
        loss_function: the loss of the normal step, ``loss(pred, label)``.
        adversarial: settings of the adversarial step (keys of :class:`AdversarialConfig`: ``eps``, ``xi``,
            ``rare_classes``, ``raw``, ``dice``, ``distribution``, ``loss_function``, ``reuse_forward``); ``None``
            disables it.
        mixup: settings of the mixup step (keys of :class:`MixupConfig`: ``alpha``, ``margin``, ``rare_classes``,
            ``raw``, ``loss_function``); ``None`` disables it.
        extra_loss_function: the loss of the extra steps when their config names none; default ``loss_function``.
            Asymmetric mixup needs a loss that accepts ``mask=`` and one-hot targets (e.g. ``MarginFocalLoss``).
        raw_image_key: the batch key of the raw image patch ``(B, C_in, *spatial)``.
        raw_label_key: the batch key of the raw label patch ``(B, 1, *spatial)``.
        context_labels: context-label training (CoLab, Li et al., IEEE TMI 2023): a
            :class:`~monai_imbalance.engines.ContextLabelLearner` or its JSON settings (``num_classes``,
            ``num_context``, ``generator``, ``optimizer``, ``lr_scheduler``, ``meta_interval``, ``mask_key``,
            ``context_key``, ``method``, ``r``, ``meta_lr``, ``reuse_lookahead_gradient``). The loss is then called
            with the ``K``-channel soft target (``network`` must have ``C + t - 1`` outputs) and the generator's meta
            step runs before step 1 every ``meta_interval`` iterations; see
            :mod:`monai_imbalance.engines.context_labels`. Not combined with ``adversarial`` / ``mixup``;
            ``reuse_lookahead_gradient`` needs a ``SimpleInferer`` and ``accumulation_steps=1``.
        augmentation_policy: learned augmentation (JCSAugment, Li et al., IEEE TMI 2023): an
            :class:`~monai_imbalance.engines.AugmentationPolicyLearner` or its JSON settings (``num_classes``,
            ``policy``, ``optimizer``, ``shared``, ``test_time_policy``, ``test_time_optimizer``,
            ``validation_loader``, ``meta_interval``, ``test_time_interval``, ``warmup_epochs``, ...). Its TRA meta
            step and TEA step run before step 1 when due and add ``policy_meta_loss`` / ``policy_meta_skipped`` /
            ``test_time_loss`` / ``test_time_skipped`` to the output; step 1 is unchanged (the unweighted loss on
            the policy-augmented batch); on TRA iterations it takes the look-ahead's gradient at ``theta`` instead of
            its own forward/backward pass where that is the same gradient (``reuse_lookahead_gradient``, default
            automatic). See :mod:`monai_imbalance.engines.augmentation_policy`.
        kwargs: every other :class:`monai.engines.SupervisedTrainer` argument (``amp``, ``optim_set_to_none``,
            ``inferer``, ``postprocessing``, ``key_train_metric``, ``train_handlers``, ...). The extra steps call
            ``inferer(x, network)`` without the extra ``args``/``kwargs`` a custom ``prepare_batch`` may return.

    Raises:
        ValueError: a bad setting (named), ``accumulation_steps > 1`` or a custom ``iteration_update`` together with
            an extra step.
    """

    ADVERSARIAL_LOSS_KEY = "loss_adversarial"
    MIXUP_LOSS_KEY = "loss_mixup"
    MIXUP_LAMBDA_KEY = "mixup_lambda"

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        optimizer: Optimizer,
        loss_function: Callable,
        adversarial: Mapping[str, Any] | AdversarialConfig | None = None,
        mixup: Mapping[str, Any] | MixupConfig | None = None,
        extra_loss_function: Callable | None = None,
        raw_image_key: str = "image_raw",
        raw_label_key: str = "label_raw",
        context_labels: Mapping[str, Any] | ContextLabelLearner | None = None,
        augmentation_policy: Mapping[str, Any] | AugmentationPolicyLearner | None = None,
        **kwargs: Any,
    ) -> None:
        if augmentation_policy is not None and not isinstance(augmentation_policy, AugmentationPolicyLearner):
            augmentation_policy = AugmentationPolicyLearner.from_mapping(augmentation_policy)
        if augmentation_policy is not None and kwargs.get("iteration_update") is not None:
            raise ValueError("a custom iteration_update replaces this trainer's iteration: no policy step would run.")
        if augmentation_policy is not None and context_labels is not None:
            raise ValueError("augmentation_policy cannot be combined with context_labels yet (K-channel targets).")
        if context_labels is not None and not isinstance(context_labels, ContextLabelLearner):
            context_labels = ContextLabelLearner.from_mapping(context_labels)
        if context_labels is not None and (adversarial is not None or mixup is not None):
            raise ValueError(
                "context_labels cannot be combined with adversarial/mixup steps yet (their targets are hard labels)."
            )
        if context_labels is not None and kwargs.get("iteration_update") is not None:
            raise ValueError("a custom iteration_update replaces this trainer's iteration: no context step would run.")
        if context_labels is not None:
            context_labels.check_segmenter(network)
            loss_function = ContextTargetLoss(loss_function, context_labels)
        if adversarial is not None and not isinstance(adversarial, AdversarialConfig):
            adversarial = AdversarialConfig.from_mapping(adversarial)
        if mixup is not None and not isinstance(mixup, MixupConfig):
            mixup = MixupConfig.from_mapping(mixup)
        extras = adversarial is not None or mixup is not None
        if extras and kwargs.get("accumulation_steps", 1) != 1:
            raise ValueError(
                f"accumulation_steps={kwargs['accumulation_steps']!r} cannot be combined with adversarial/mixup steps "
                "(each extra step zeroes the gradients); use accumulation_steps=1."
            )
        if extras and kwargs.get("iteration_update") is not None:
            raise ValueError("a custom iteration_update replaces this trainer's iteration: no extra step would run.")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            **kwargs,
        )
        self.adversarial: AdversarialConfig | None = adversarial
        self.mixup: MixupConfig | None = mixup
        self.extra_loss_function = loss_function if extra_loss_function is None else extra_loss_function
        self.raw_image_key = raw_image_key
        self.raw_label_key = raw_label_key
        self.context_labels: ContextLabelLearner | None = context_labels
        self.augmentation_policy: AugmentationPolicyLearner | None = augmentation_policy
        self._step_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._reused_r_adv: torch.Tensor | None = None
        blockers = self._reuse_blockers(extras, kwargs.get("accumulation_steps", 1))
        if context_labels is not None and context_labels.reuse_lookahead_gradient and blockers:
            raise ValueError(
                f"context_labels reuse_lookahead_gradient=true cannot be used with {'; '.join(blockers)} (the reused "
                "step replaces the normal step's forward/backward pass); set it to false."
            )
        if context_labels is not None:
            self.add_event_handler(Events.STARTED, lambda _: context_labels.broadcast_generator())
        if augmentation_policy is not None:
            inexact = ["amp (the reused gradient is float32, the normal step's autocast)"] if self.amp else []
            augmentation_policy.resolve_reuse(blockers, inexact + (["compile"] if self.compile else []))
            self.add_event_handler(Events.STARTED, lambda _: augmentation_policy.broadcast())
        if extras:
            self.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._keep_step_batch)

    def _reuse_blockers(self, extras: bool, accumulation_steps: Any) -> list[str]:
        """The trainer settings under which step 1 cannot reuse a look-ahead's pass at ``theta`` (both learners)."""
        blockers = []
        if type(self.inferer) is not SimpleInferer:
            blockers.append(
                f"inferer {type(self.inferer).__name__} (the look-ahead calls the segmenter directly: a "
                "monai.inferers.SimpleInferer is needed)"
            )
        if accumulation_steps != 1:
            blockers.append(f"accumulation_steps={accumulation_steps!r}")
        if extras:
            blockers.append("adversarial / mixup steps")
        return blockers

    def _policy_step(self, engine: SupervisedTrainer, batchdata: Any) -> bool:
        """Step 1 of a TRA iteration from the look-ahead's pass at ``theta``, when the learner kept one.

        The TRA look-ahead's training loss ``L_tr(theta, w)`` is the per-sample loss weighted by ``w`` of value 1 on
        this batch at these parameters (the TEA step in between does not change them), so its gradient is step 1's
        when the trainer's loss has the same gradient with respect to the prediction, which the learner checks
        (:meth:`~monai_imbalance.engines.AugmentationPolicyLearner.reused_step_loss`). The output's ``loss`` is the
        trainer's loss on the kept prediction, as step 1 would report it.

        Returns:
            ``True`` when step 1 ran this way; ``False``: nothing kept or the losses differ, run step 1 as usual.
        """
        learner = self.augmentation_policy
        step = None if learner is None else learner.pop_train_step()
        if step is None:
            return False
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        loss = learner.reused_step_loss(engine.loss_function, step, batch[1])
        if loss is None:
            return False
        step.loss = loss
        self._step_from_lookahead(engine, batch[0], batch[1], step)
        return True

    def _keep_step_batch(self, engine: SupervisedTrainer) -> None:
        """Keep the device batch of step 1 (the output is decollated at ``MODEL_COMPLETED``)."""
        self._step_batch = (engine.state.output[Keys.IMAGE], engine.state.output[Keys.LABEL])

    def _extra_batch(
        self, engine: RegularisedSupervisedTrainer, batchdata: Any, raw: bool, step: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(image, label)`` of an extra step: step 1's device batch, or the raw patch moved to the device."""
        if not raw:
            if self._step_batch is None:
                raise RuntimeError("step 1 did not fire FORWARD_COMPLETED; the extra steps have no batch.")
            image, label = self._step_batch
            return plain_tensor(image, detach=True), plain_tensor(label)
        out = []
        for key in (self.raw_image_key, self.raw_label_key):
            if not isinstance(batchdata, Mapping) or key not in batchdata:
                raise ValueError(
                    f"the {step} step is configured with raw=true but the batch has no '{key}'. Copy the patch "
                    f"before the random augmentations: CopyItemsd(keys=['image', 'label'], times=1, "
                    f"names=['{self.raw_image_key}', '{self.raw_label_key}']), or set raw=false."
                )
            value = torch.as_tensor(batchdata[key])
            value = value.to(device=engine.state.device, non_blocking=engine.non_blocking, **engine.to_kwargs)
            out.append(plain_tensor(value))
        return out[0], out[1]

    def _amp_context(self, engine: RegularisedSupervisedTrainer) -> contextlib.AbstractContextManager:
        """``SupervisedTrainer``'s autocast context when AMP is on, else a no-op."""
        if engine.amp and engine.scaler is not None:
            return torch.autocast("cuda", **engine.amp_kwargs)
        return contextlib.nullcontext()

    def _optimizer_step(self, engine: RegularisedSupervisedTrainer, compute_loss: Callable[[], torch.Tensor]) -> Any:
        """One extra optimizer step, with AMP and ``optim_set_to_none`` as in ``SupervisedTrainer``."""
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with self._amp_context(engine):
                loss = compute_loss()
            engine.scaler.scale(loss).backward()
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss = compute_loss()
            loss.backward()
            engine.optimizer.step()
        return loss.detach()

    def _adversarial_step(self, engine: RegularisedSupervisedTrainer, batchdata: Any) -> dict[str, Any]:
        cfg = self.adversarial
        assert cfg is not None
        x, y = self._extra_batch(engine, batchdata, cfg.raw, "adversarial")
        loss_fn = self.extra_loss_function if cfg.loss_function is None else cfg.loss_function
        r_adv, self._reused_r_adv = self._reused_r_adv, None
        if r_adv is None:  # the probe: raw batch, reuse_forward=False, or the reused gradient was unusable
            with self._amp_context(engine):
                r_adv = adversarial_perturbation(
                    engine.network,
                    x,
                    y,
                    cfg.eps,
                    cfg.xi,
                    cfg.rare_classes,
                    dice=cfg.dice,
                    distribution=cfg.distribution,
                )
        x_adv = x + r_adv

        def compute_loss() -> torch.Tensor:
            return loss_fn(engine.inferer(x_adv, engine.network), y).mean()

        return {self.ADVERSARIAL_LOSS_KEY: self._optimizer_step(engine, compute_loss)}

    def _mixup_step(self, engine: RegularisedSupervisedTrainer, batchdata: Any) -> dict[str, Any]:
        cfg = self.mixup
        assert cfg is not None
        x, y = self._extra_batch(engine, batchdata, cfg.raw, "mixup")
        loss_fn = self.extra_loss_function if cfg.loss_function is None else cfg.loss_function
        lam = sample_mixup_lambda(cfg.alpha, cfg.margin)
        x_mix = mixup_images(x, lam)

        def compute_loss() -> torch.Tensor:
            pred = engine.inferer(x_mix, engine.network)
            num_classes = int(highest_resolution(pred, x_mix.ndim).shape[1])
            target, mask = mixup_labels(y, y.flip(0), lam, num_classes, cfg.rare_classes, margin=cfg.margin)
            if cfg.rare_classes is None:
                return loss_fn(pred, target).mean()
            return loss_fn(pred, target, mask=mask).mean()

        return {self.MIXUP_LOSS_KEY: self._optimizer_step(engine, compute_loss), self.MIXUP_LAMBDA_KEY: lam}

    def _direction_from_step(
        self, engine: SupervisedTrainer, pred: Any, x: torch.Tensor, y: Any
    ) -> torch.Tensor | None:
        """``r_adv`` from step 1's prediction: ``eps * normalize(grad_x rare_direction_loss(pred))``, or ``None``.

        ``None`` (the adversarial step then runs the probe) when ``x`` is not a float leaf requiring grad, or under
        AMP when the gradient is not finite (as the probe, which then recomputes it without autocast).
        """
        cfg = self.adversarial
        assert cfg is not None
        if not x.requires_grad:
            return None
        value = rare_direction_loss(pred, x, plain_tensor(y), cfg.rare_classes, dice=cfg.dice)
        (grad,) = torch.autograd.grad(value, x, retain_graph=True)
        if engine.amp and not bool(torch.isfinite(grad).all()):
            return None
        return perturbation_from_gradient(grad, cfg.eps, x.dtype)

    def _step_with_direction(self, engine: SupervisedTrainer, batchdata: Any) -> dict:
        """``SupervisedTrainer._iteration`` (MONAI 1.6, ``accumulation_steps=1``) that also keeps ``r_adv``.

        The same ``prepare_batch``, ``compile`` MetaTensor workaround, events, ``optim_set_to_none``, AMP/GradScaler
        calls and output keys; the network's input is ``inputs.detach().requires_grad_(True)`` (same values; the
        output keeps ``inputs``), and ``r_adv`` is taken from the prediction between ``LOSS_COMPLETED`` and the
        backward pass (:meth:`_direction_from_step`), into ``self._reused_r_adv``.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) == 2:
            inputs, targets = batch
            args: tuple = ()
            kwargs: dict = {}
        else:
            inputs, targets, args, kwargs = batch
        # as SupervisedTrainer: workaround for https://github.com/pytorch/pytorch/issues/117026
        inputs_meta, targets_meta, inputs_applied_operations, targets_applied_operations = None, None, None, None
        if engine.compile:
            if isinstance(inputs, MetaTensor):
                warnings.warn(
                    "Will convert to PyTorch Tensor if using compile, and casting back to MetaTensor after the "
                    "forward pass.",
                    stacklevel=2,
                )
                inputs, inputs_meta, inputs_applied_operations = (
                    inputs.as_tensor(),
                    inputs.meta,
                    inputs.applied_operations,
                )
            if isinstance(targets, MetaTensor):
                targets, targets_meta, targets_applied_operations = (
                    targets.as_tensor(),
                    targets.meta,
                    targets.applied_operations,
                )

        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        net_input = inputs
        if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
            net_input = inputs.detach().requires_grad_(True)

        def _compute_pred_loss() -> Any:
            pred = engine.inferer(net_input, engine.network, *args, **kwargs)
            engine.state.output[Keys.PRED] = pred
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            engine.state.output[Keys.LOSS] = engine.loss_function(engine.state.output[Keys.PRED], targets).mean()
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            return pred

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                pred = _compute_pred_loss()
            self._reused_r_adv = self._direction_from_step(engine, pred, net_input, targets)
            engine.scaler.scale(engine.state.output[Keys.LOSS]).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            pred = _compute_pred_loss()
            self._reused_r_adv = self._direction_from_step(engine, pred, net_input, targets)
            engine.state.output[Keys.LOSS].backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        if inputs_meta is not None:
            engine.state.output[Keys.IMAGE] = MetaTensor(
                inputs, meta=inputs_meta, applied_operations=inputs_applied_operations
            )
            engine.state.output[Keys.PRED] = MetaTensor(
                engine.state.output[Keys.PRED], meta=inputs_meta, applied_operations=inputs_applied_operations
            )
        if targets_meta is not None:
            engine.state.output[Keys.LABEL] = MetaTensor(
                targets, meta=targets_meta, applied_operations=targets_applied_operations
            )
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _iteration(self, engine: SupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> Any:
        """Step 1 (``SupervisedTrainer._iteration``), then the enabled extra steps; returns ``engine.state.output``.

        Args:
            engine: this trainer.
            batchdata: the collated batch, a dict with ``image`` ``(B, C_in, *sp)``, ``label`` ``(B, 1, *sp)`` and,
                for raw steps, the raw keys with the same shapes.

        Returns:
            ``engine.state.output`` of step 1 (decollated when ``decollate=True``), each item updated with the extra
            losses (and ``mixup_lambda``): detached 0-d tensors, or Python floats when decollated (as ``loss``).
        """
        # learned augmentation (JCSAugment's joint schedule): TRA meta step, then TEA step, before step 1 ({} when off)
        policy = {} if self.augmentation_policy is None else self.augmentation_policy.iteration(engine, batchdata)
        if self.context_labels is not None:
            return self._merge_extra(engine, {**policy, **self._context_iteration(engine, batchdata)})
        if self.adversarial is None and self.mixup is None:
            if self._policy_step(engine, batchdata):  # TRA iteration: step 1 from the look-ahead's pass at theta
                return self._merge_extra(engine, policy)
            output = super()._iteration(engine, batchdata)
            return self._merge_extra(engine, policy) if policy else output
        self._step_batch = None
        self._reused_r_adv = None
        extra: dict[str, Any] = dict(policy)
        try:
            if self.adversarial is not None and self.adversarial.reuses_forward:
                self._step_with_direction(engine, batchdata)
            else:
                super()._iteration(engine, batchdata)
            if self.adversarial is not None:
                extra.update(self._adversarial_step(self, batchdata))
            if self.mixup is not None:
                extra.update(self._mixup_step(self, batchdata))
        finally:
            self._step_batch = None
            self._reused_r_adv = None
        return self._merge_extra(engine, extra)

    def _context_iteration(self, engine: SupervisedTrainer, batchdata: Any) -> dict[str, Any]:
        """The CoLab meta step (every ``meta_interval`` iterations), then step 1 on the context target.

        Returns:
            the meta step's ``meta_loss`` and ``meta_skipped`` (empty when it did not run).
        """
        learner = self.context_labels
        assert learner is not None and isinstance(engine.loss_function, ContextTargetLoss)
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        image, label = plain_tensor(batch[0]), plain_tensor(batch[1])
        mask = learner.mask(batchdata, image.device)
        extra: dict[str, Any] = {}
        if learner.is_meta_iteration(engine.state.iteration):
            engine.network.train()  # as step 1: after a validation run the segmenter is in eval mode
            extra.update(
                learner.meta_step(
                    engine.network, engine.loss_function.loss_function, engine.optimizer, image, label, mask
                )
            )
            reused = learner.pop_train_step()  # None unless reuse_lookahead_gradient (and a finite gradient)
            if reused is not None:
                self._step_from_lookahead(engine, batch[0], batch[1], reused)
                return extra
        with torch.no_grad():
            engine.loss_function.probabilities = learner.probabilities(image, batchdata)
        engine.loss_function.mask = mask
        try:
            super()._iteration(engine, batchdata)
        finally:
            engine.loss_function.probabilities = None
            engine.loss_function.mask = None
        return extra

    def _step_from_lookahead(
        self, engine: SupervisedTrainer, inputs: Any, targets: Any, step: LookaheadTrainStep
    ) -> dict[str, Any]:
        """Step 1 of a meta iteration from the look-ahead's pass at ``theta`` (``reuse_lookahead_gradient``).

        ``SupervisedTrainer``'s events and output keys (``image``, ``label``, ``pred``, ``loss``), with the kept
        prediction and loss instead of a forward pass and the kept gradient (averaged over the ranks under DDP, as
        DDP's backward pass does) instead of a backward pass, and the kept buffers (BatchNorm running statistics after
        the pass at ``theta``); then the optimizer steps (float32, no ``GradScaler``).
        """
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets, Keys.PRED: step.pred}
        engine.network.train()
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output[Keys.LOSS] = step.loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        params = dict(unwrap_module(engine.network).named_parameters())
        names = list(step.grads)
        grads = [step.grads[k] for k in names]
        grads = average_over_ranks(grads)
        with torch.no_grad():
            if step.buffers:
                buffers = dict(unwrap_module(engine.network).named_buffers())
                for name, value in step.buffers.items():
                    buffers[name].copy_(value)
            for name, grad in zip(names, grads, strict=True):
                param = params[name]
                if param.grad is None:
                    param.grad = grad.to(param.dtype)
                else:  # keep the existing tensor (it may be a view into DDP's gradient bucket)
                    param.grad.copy_(grad)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _merge_extra(self, engine: SupervisedTrainer, extra: dict[str, Any]) -> Any:
        """Add the extra steps' values to every item of ``engine.state.output`` and return it."""
        output = engine.state.output
        if isinstance(output, list):  # decollated: scalars as Python numbers, as ``Decollated(detach=True)`` gives
            extra = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in extra.items()}
        for item in output if isinstance(output, list) else [output]:
            if isinstance(item, dict):
                item.update(extra)
        return output
