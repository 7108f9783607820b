# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Learned augmentation in the trainer: the joint schedule of the TRA meta step, the TEA step and the segmenter step.

JCSAugment: Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data
augmentation in segmentation", IEEE TMI 2023, method section (their joint optimisation).
:class:`AugmentationPolicyIteration` is the trainer's ``iteration_update``: each iteration it runs the steps that are
due of a :class:`~monai_imbalance.engines.TrainingPolicyLearner` (TRA) and a
:class:`~monai_imbalance.engines.TestTimePolicyLearner` (TEA), either of which may be absent, on one held-out
validation batch, then the trainer's own step.

Example (JSON; the held-out validation loader holds patches of training cases left out of the training loader, e.g.
by :func:`monai_imbalance.data.holdout_split`)::

    "trainer": {
        "_target_": "monai.engines.SupervisedTrainer",
        ...,
        "iteration_update": {
            "_target_": "monai_imbalance.engines.AugmentationPolicyIteration",
            "training": "@policy_learner",
            "test_time": "@test_time_learner",
            "validation_loader": "@meta_validation#dataloader",
            "augment_validation": true
        }
    }
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from monai_imbalance.utils import add_to_output, plain_tensor

from .lookahead import lookahead_step_blockers, step_from_lookahead
from .test_time_policy import TestTimePolicyLearner
from .training_policy import TrainingPolicyLearner

__all__ = ["AugmentationPolicyIteration"]

_OWNER = "AugmentationPolicyIteration"


def _learner(name: str, value: Any, cls: type) -> Any:
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls.from_mapping(value)
    raise ValueError(f"{_OWNER} {name} must be a {cls.__name__}, its JSON settings or None, got {type(value)}.")


class AugmentationPolicyIteration:
    """The ``iteration_update`` of a trainer with learned augmentation (JCSAugment, Li et al., IEEE TMI 2023).

    Each iteration: when any policy step is due, the next batch of ``validation_loader`` (cycled); then the TRA meta
    step (:meth:`TrainingPolicyLearner.meta_step`, on the next batch of ``training_loader`` when given, else on the
    trainer's batch; with ``augment_validation`` and a test-time learner, on the
    validation batch seen through one transform per patch drawn from the current test-time policy,
    :meth:`TestTimePolicyLearner.transformed_validation`); then the TEA step (:meth:`TestTimePolicyLearner.step`) on
    the same validation batch; then the trainer's own iteration (``engine._iteration``: ``SupervisedTrainer``'s step,
    or a ``RegularisedSupervisedTrainer``'s step and its extra steps), unchanged: the unweighted loss on the
    policy-augmented batch. On TRA iterations the normal step takes the look-ahead's pass at ``theta`` instead of its
    own forward/backward pass where that is the same gradient (the training learner's ``reuse_lookahead_gradient``,
    resolved on the first call from the trainer: :func:`~monai_imbalance.engines.lookahead_step_blockers`, AMP,
    ``compile``). The first call also copies rank 0's policies to every rank (DDP). The output gains
    ``policy_meta_loss`` / ``policy_meta_skipped`` / ``test_time_loss`` / ``test_time_skipped`` when those steps ran.

    For checkpoints, list the policies and their optimizers in the ``save_dict``, or this object as one entry
    (:meth:`state_dict`).

    Args:
        training: the :class:`~monai_imbalance.engines.TrainingPolicyLearner`, or its JSON settings; ``None``: no TRA.
        test_time: the :class:`~monai_imbalance.engines.TestTimePolicyLearner`, or its JSON settings; ``None``: no TEA.
        validation_loader: an iterable of held-out validation batches (dicts with ``image`` ``(B, C_in, *sp)`` and
            ``label`` ``(B, 1, *sp)``, prepared by the trainer's ``prepare_batch``); cycled.
        augment_validation: transform the TRA validation batch by the current test-time policy when there is one
            (the joint method; True).
        training_loader: an iterable of policy-augmented training batches for the TRA look-ahead (the authors draw
            10 patches per policy step, whatever the segmenter's batch size), with the training learner's bins and
            groups; cycled. ``None``: the TRA step uses the trainer's own batch (the normal step may then reuse the
            look-ahead's pass; with a separate batch it cannot).

    Raises:
        ValueError: neither learner, no ``validation_loader``, or a bad setting; (first call)
            ``reuse_lookahead_gradient=True`` with trainer settings that block it.
    """

    def __init__(
        self,
        training: TrainingPolicyLearner | Mapping[str, Any] | None = None,
        test_time: TestTimePolicyLearner | Mapping[str, Any] | None = None,
        validation_loader: Iterable | None = None,
        augment_validation: bool = True,
        training_loader: Iterable | None = None,
    ) -> None:
        self.training: TrainingPolicyLearner | None = _learner("training", training, TrainingPolicyLearner)
        self.test_time: TestTimePolicyLearner | None = _learner("test_time", test_time, TestTimePolicyLearner)
        if self.training is None and self.test_time is None:
            raise ValueError(f"{_OWNER} needs a training learner (TRA), a test_time learner (TEA), or both.")
        if validation_loader is None:
            raise ValueError(
                f"{_OWNER} validation_loader is required: a loader of patches from training cases held out of the "
                "training loader (monai_imbalance.data.holdout_split)."
            )
        if not isinstance(augment_validation, bool):
            raise ValueError(f"{_OWNER} augment_validation must be true or false, got {augment_validation!r}.")
        self.validation_loader = validation_loader
        self.augment_validation = augment_validation
        self.training_loader = training_loader
        self._iters: dict[str, Iterator | None] = {"validation_loader": None, "training_loader": None}
        self._checked = False

    def _next(self, name: str) -> Any:
        """The next batch of the loader ``name`` (restarted when exhausted)."""
        for _ in range(2):
            if self._iters[name] is None:
                self._iters[name] = iter(getattr(self, name))
            try:
                return next(self._iters[name])  # type: ignore[arg-type]
            except StopIteration:
                self._iters[name] = None
        raise ValueError(f"{_OWNER} {name} yielded no batch.")

    def validation_batch(self) -> Any:
        """The next held-out validation batch (the loader is restarted when exhausted)."""
        return self._next("validation_loader")

    def policy_steps(self, engine: Any, batchdata: Any) -> dict[str, float]:
        """The steps due at this iteration, before the segmenter step: TRA meta step, then TEA (joint schedule).

        Args:
            engine: the trainer (``state.iteration``, ``state.epoch``, ``network``, ``optimizer``,
                ``prepare_batch``, ``state.device``).
            batchdata: the collated training batch.

        Returns:
            the values of the steps that ran (empty when none did).
        """
        it, epoch = engine.state.iteration, engine.state.epoch
        run_tra = self.training is not None and self.training.is_due(it, epoch)
        run_tea = self.test_time is not None and self.test_time.is_due(it, epoch)
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
            assert self.training is not None
            meta = batchdata if self.training_loader is None else self._next("training_loader")
            batch = engine.prepare_batch(meta, device, engine.non_blocking, **engine.to_kwargs)
            image, label = plain_tensor(batch[0]), plain_tensor(batch[1])
            bins, groups = self.training.policy_batch(meta, image.device)
            engine.network.train()
            transformed = None
            if self.test_time is not None and self.augment_validation:
                transformed = self.test_time.transformed_validation(engine.network, validation[0])
            out.update(
                self.training.meta_step(
                    engine.network, engine.optimizer, image, label, bins, groups, validation, transformed=transformed
                )
            )
        if run_tea:
            assert self.test_time is not None
            out.update(self.test_time.step(engine.network, validation))
        return out

    def broadcast(self) -> None:
        """Copy rank 0's policies to every rank and refresh the shared table (no-op without a process group)."""
        for learner in (self.training, self.test_time):
            if learner is not None:
                learner.broadcast()

    def _check(self, engine: Any) -> None:
        if self.training is not None:
            inexact = ["amp (the reused gradient is float32, the normal step's autocast)"] if engine.amp else []
            blockers = lookahead_step_blockers(engine)
            if self.training_loader is not None:
                blockers.append("a separate meta-training batch (training_loader): the look-ahead's is not the step's")
            self.training.resolve_reuse(blockers, inexact + (["compile"] if engine.compile else []))
        self.broadcast()
        self._checked = True

    def _reused_step(self, engine: Any, batchdata: Any) -> Any | None:
        """The normal step of a TRA iteration from the look-ahead's pass at ``theta``, when the learner kept one.

        The look-ahead's training loss ``L_tr(theta, w)`` is the per-sample loss weighted by ``w`` of value 1 on this
        batch at these parameters (the TEA step in between does not change them), so its gradient is the normal
        step's when the trainer's loss has the same gradient with respect to the prediction, which the learner checks
        (:meth:`TrainingPolicyLearner.reused_step_loss`). The output's ``loss`` is the trainer's loss on the kept
        prediction, as the normal step would report it.

        Returns:
            ``engine.state.output``, or ``None``: nothing kept or the losses differ (run the normal step as usual).
        """
        step = None if self.training is None else self.training.pop_train_step()
        if step is None:
            return None
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        loss = self.training.reused_step_loss(engine.loss_function, step, batch[1])
        if loss is None:
            return None
        step.loss = loss
        return step_from_lookahead(engine, batch[0], batch[1], step)

    def __call__(self, engine: Any, batchdata: Any) -> Any:
        """The policy steps that are due, then the trainer's iteration; returns its output.

        Args:
            engine: the trainer (a ``SupervisedTrainer``).
            batchdata: the collated training batch, with the training learner's ``bins_key`` ``(B, O)`` and
                ``group_key`` ``(B,)`` (written by :class:`~monai_imbalance.transforms.PolicyAugmentd`).
        """
        if not self._checked:
            self._check(engine)
        extra = self.policy_steps(engine, batchdata)
        output = self._reused_step(engine, batchdata)
        if output is None:
            output = engine._iteration(engine, batchdata)
        return add_to_output(output, extra) if extra else output

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Both learners' states in one dict: ``policy``, ``optimizer``, ``steps``, ``skipped`` of the training
        learner and the same keys prefixed ``test_time_`` of the test-time learner (tensors, containers, primitives).
        """
        state: dict[str, Any] = {}
        for prefix, learner in (("", self.training), ("test_time_", self.test_time)):
            if learner is not None:
                state.update({prefix + k: v for k, v in learner.state_dict().items()})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; a learner's counters default to 0 when the state has none.

        Raises:
            ValueError: a policy in the state that this hook has no learner for, or the reverse; a policy for
                another pool or grouping.
        """
        for prefix, learner in (("", self.training), ("test_time_", self.test_time)):
            name = prefix + "policy"
            if (learner is None) != (name not in state):
                raise ValueError(
                    f"{_OWNER} state {'has' if learner is None else 'lacks'} '{name}', which this hook "
                    f"{'has no learner for' if learner is None else 'learns'}."
                )
            if learner is not None:
                keys = ("policy", "optimizer", "steps", "skipped", "singletons")
                learner.load_state_dict({k: state[prefix + k] for k in keys if prefix + k in state})
