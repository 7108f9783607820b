# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""A ``SupervisedTrainer`` that runs extra regularisation steps: adversarial training and mixup.

The training loop of Li, Kamnitsas, Glocker, "Analyzing overfitting under class imbalance in neural networks for
image segmentation", IEEE TMI 2021 (method section: asymmetric adversarial training and asymmetric mixup) takes up to
three optimizer steps per iteration:

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
``ITERATION_COMPLETED``. A method that runs before the normal step (CoLab's or learned augmentation's meta step) is
the trainer's ``iteration_update``, which calls ``engine._iteration`` and so runs the extra steps too.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from monai_imbalance.utils import add_to_output, check_rare_classes, check_settings, highest_resolution, plain_tensor

from .adversarial import DEFAULT_EPS, DEFAULT_XI, adversarial_perturbation
from .mixup import mixup_images, mixup_labels, sample_mixup_lambda

if TYPE_CHECKING:
    from torch.optim import Optimizer
    from torch.utils.data import DataLoader

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
    """

    eps: float = DEFAULT_EPS
    xi: float = DEFAULT_XI
    rare_classes: tuple[int, ...] | None = None
    raw: bool = False
    dice: bool = False
    distribution: str = "normal"
    loss_function: Callable | None = None

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
            symmetric mixup as ``loss(pred, target)`` with a soft target. A loss that composes its own target from
            the label (it has a ``mixup_loss`` method, e.g. CoLab's ``ContextTargetLoss``) is called as
            ``loss.mixup_loss(pred, y, lam, rare_classes, margin, mixup_labels)`` instead.
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
            ``rare_classes``, ``raw``, ``dice``, ``distribution``, ``loss_function``); ``None`` disables it.
        mixup: settings of the mixup step (keys of :class:`MixupConfig`: ``alpha``, ``margin``, ``rare_classes``,
            ``raw``, ``loss_function``); ``None`` disables it.
        extra_loss_function: the loss of the extra steps when their config names none; default ``loss_function``.
            Asymmetric mixup needs a loss that accepts ``mask=`` and one-hot targets (e.g. ``MarginFocalLoss``).
        raw_image_key: the batch key of the raw image patch ``(B, C_in, *spatial)``.
        raw_label_key: the batch key of the raw label patch ``(B, 1, *spatial)``.
        kwargs: every other :class:`monai.engines.SupervisedTrainer` argument (``amp``, ``optim_set_to_none``,
            ``inferer``, ``postprocessing``, ``key_train_metric``, ``train_handlers``, ``iteration_update``, ...).
            The extra steps call ``inferer(x, network)`` without the extra ``args``/``kwargs`` a custom
            ``prepare_batch`` may return; an ``iteration_update`` runs them when it calls ``engine._iteration``.

    Raises:
        ValueError: a bad setting (named), or ``accumulation_steps > 1`` together with an extra step.
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
        **kwargs: Any,
    ) -> None:
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
        self._step_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        if extras:
            self.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._keep_step_batch)

    @property
    def extra_steps(self) -> tuple[str, ...]:
        """The enabled extra steps, in the order they run (``"adversarial"``, ``"mixup"``)."""
        return tuple(name for name in ("adversarial", "mixup") if getattr(self, name) is not None)

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
        with self._amp_context(engine):
            r_adv = adversarial_perturbation(
                engine.network, x, y, cfg.eps, cfg.xi, cfg.rare_classes, dice=cfg.dice, distribution=cfg.distribution
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
            composed = getattr(loss_fn, "mixup_loss", None)
            if composed is not None:  # a loss that builds its own target from the label (CoLab's ContextTargetLoss)
                return composed(pred, y, lam, cfg.rare_classes, cfg.margin, mixup_labels).mean()
            num_classes = int(highest_resolution(pred, x_mix.ndim).shape[1])
            target, mask = mixup_labels(y, y.flip(0), lam, num_classes, cfg.rare_classes, margin=cfg.margin)
            if cfg.rare_classes is None:
                return loss_fn(pred, target).mean()
            return loss_fn(pred, target, mask=mask).mean()

        return {self.MIXUP_LOSS_KEY: self._optimizer_step(engine, compute_loss), self.MIXUP_LAMBDA_KEY: lam}

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
        if not self.extra_steps:
            return super()._iteration(engine, batchdata)
        self._step_batch = None
        extra: dict[str, Any] = {}
        try:
            super()._iteration(engine, batchdata)
            if self.adversarial is not None:
                extra.update(self._adversarial_step(self, batchdata))
            if self.mixup is not None:
                extra.update(self._mixup_step(self, batchdata))
        finally:
            self._step_batch = None
        return add_to_output(engine.state.output, extra)
