# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Post-hoc learned test-time augmentation: the test-time policy learned on a frozen, trained segmenter.

JCSAugment: Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data
augmentation in segmentation", IEEE TMI 2023, method section (test-time augmentation and its optimisation) and the
authors' TEA-only set-up: the segmenter is trained first, then the test-time policy is optimised against the final
model, which no longer changes. :class:`TestTimePolicyTrainer` is a MONAI :class:`~monai.engines.Trainer` whose
iteration is one :meth:`TestTimePolicyLearner.step <monai_imbalance.engines.TestTimePolicyLearner.step>` on a batch
of held-out validation patches; the segmenter is loaded by MONAI's :class:`~monai.handlers.CheckpointLoader` and
frozen.

Example (JSON, stacked after a bundle's ``train.json``)::

    "learn_tta#trainer": {
        "_target_": "monai_imbalance.engines.TestTimePolicyTrainer",
        "device": "@device", "max_epochs": 10, "epoch_length": 100,
        "data_loader": "@meta_validation#dataloader", "network": "@network",
        "learner": "@learn_tta#learner",
        "checkpoint": "$@ckpt_dir + '/model.pt'", "policy_file": "@test_time_policy_file"
    }
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines import Trainer
from monai.engines.utils import default_prepare_batch
from monai.handlers import CheckpointLoader
from monai.utils import IgniteInfo, min_version, optional_import

from monai_imbalance.augment import save_policy
from monai_imbalance.utils import check_int_setting, plain_tensor, unwrap_module

from .test_time_policy import TestTimePolicyLearner

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["TestTimePolicyTrainer"]

logger = logging.getLogger(__name__)

_OWNER = "TestTimePolicyTrainer"


class TestTimePolicyTrainer(Trainer):
    """Learn the test-time policy on a frozen segmenter (post-hoc TEA; JCSAugment, Li et al., IEEE TMI 2023).

    At the start of :meth:`run`: the segmenter is loaded from ``checkpoint`` (when given; the file is looked for then,
    not when the trainer is built, so a config checker can build it before training has written the file), put in
    eval mode and its parameters set to ``requires_grad=False``; its weights are not changed by the run. Each
    iteration: one TEA step of ``learner`` (:meth:`TestTimePolicyLearner.step
    <monai_imbalance.engines.TestTimePolicyLearner.step>`) on the iteration's batch of held-out validation patches.
    Every ``log_interval`` iterations the mean TEA loss since the last log is logged; at the end of each epoch its mean
    over the epoch goes to ``state.metrics["test_time_loss"]``.
    At the end of the run: the largest change of a transform probability from its value at the start is logged and
    kept in ``state.metrics["test_time_policy_max_change"]`` (0 when the policy did not move), and the policy is
    written to ``policy_file`` (``<name>.pt``, its state dict, and ``<name>.json``, its description;
    :func:`~monai_imbalance.augment.save_policy`), which :class:`~monai_imbalance.augment.LearnedTTAInferer` reads.

    Args:
        device: the device of the segmenter and of the batches.
        max_epochs: epochs of TEA steps.
        data_loader: held-out validation batches (dicts with ``image`` ``(B, C_in, *sp)`` and ``label``
            ``(B, 1, *sp)``; re-iterated when shorter than ``epoch_length``).
        network: the trained segmenter (a DDP wrapper is unwrapped).
        learner: the :class:`~monai_imbalance.engines.TestTimePolicyLearner` (its policy, optimizer, scheduler, ``Z``).
        checkpoint: file of the trained segmenter, loaded at the start: its bare ``state_dict`` (``model.pt``) or a
            checkpoint with a ``"model"`` entry (``latest.pt``); ``None``: use ``network`` as it is.
        policy_file: where the learned policy is written at the end (``x``, ``x.pt`` or ``x.json``); ``None``: not
            written.
        epoch_length: TEA steps per epoch (default: the length of ``data_loader``).
        log_interval: iterations between progress logs.
        non_blocking: non-blocking transfers of the batches to ``device``.
        prepare_batch: ``(batch, device, non_blocking, **kwargs) -> (image, label, ...)``.
        handlers: more ignite handlers (e.g. ``monai.handlers.StatsHandler``), attached after this trainer's own.
        to_kwargs: extra arguments of ``torch.Tensor.to`` for ``prepare_batch``.

    Raises:
        FileNotFoundError: (:meth:`run`) no file at ``checkpoint``; the message names the path.
        ValueError: ``learner`` is not a :class:`~monai_imbalance.engines.TestTimePolicyLearner`, or a bad
            ``log_interval``.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        data_loader: Any,
        network: torch.nn.Module,
        learner: TestTimePolicyLearner,
        checkpoint: str | os.PathLike | None = None,
        policy_file: str | os.PathLike | None = None,
        epoch_length: int | None = None,
        log_interval: int = 10,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        handlers: Sequence | None = None,
        to_kwargs: dict | None = None,
    ) -> None:
        if not isinstance(learner, TestTimePolicyLearner):
            raise ValueError(f"{_OWNER} learner must be a TestTimePolicyLearner, got {type(learner).__name__}.")
        self.log_interval = check_int_setting(_OWNER, "log_interval", log_interval, 1)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            amp=False,
            decollate=False,
            to_kwargs=to_kwargs,
        )
        self.network = network
        self.learner = learner
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.policy_file = None if policy_file is None else Path(policy_file)
        self.start_probabilities: torch.Tensor | None = None
        self._window: list[float] = []
        self._epoch_losses: list[float] = []
        if self.checkpoint is not None:
            self.add_event_handler(Events.STARTED, self._check_checkpoint)
            CheckpointLoader(str(self.checkpoint), {"model": unwrap_module(network)}, map_location=device).attach(self)
        self.add_event_handler(Events.STARTED, self._start)
        self.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        self.add_event_handler(Events.COMPLETED, self._completed)
        if handlers is not None:
            self._register_handlers(handlers)

    def _check_checkpoint(self, engine: TestTimePolicyTrainer) -> None:
        if not self.checkpoint.is_file():  # type: ignore[union-attr]  # attached only with a checkpoint
            raise FileNotFoundError(
                f"{_OWNER}: no trained segmenter at '{self.checkpoint}' (train the bundle first: run training)."
            )

    def _start(self, engine: TestTimePolicyTrainer) -> None:
        """Freeze the (loaded) segmenter and remember the policy's starting probabilities."""
        self.network.eval()
        self.network.requires_grad_(False)
        self.learner.broadcast()
        self.start_probabilities = self.learner.policy.probabilities().cpu()
        self._window, self._epoch_losses = [], []

    def _iteration(self, engine: TestTimePolicyTrainer, batchdata: Any) -> dict[str, float]:
        """One TEA step on the batch; returns ``{"test_time_loss", "test_time_skipped"}`` (empty when not due)."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if not self.learner.is_due(engine.state.iteration, engine.state.epoch):
            return {}
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        validation = (plain_tensor(batch[0]).float(), plain_tensor(batch[1]))
        return self.learner.step(self.network, validation)

    def _record(self, engine: TestTimePolicyTrainer) -> None:
        loss = (engine.state.output or {}).get("test_time_loss")
        if loss is not None and not engine.state.output.get("test_time_skipped"):
            self._window.append(loss)
            self._epoch_losses.append(loss)
        if engine.state.iteration % self.log_interval == 0 and self._window:
            logger.info(
                "post-hoc TEA epoch %d/%d iteration %d/%d: loss %.4f (mean of %d steps), lr %.3g, %d step(s) skipped",
                engine.state.epoch,
                engine.state.max_epochs,
                engine.state.iteration,
                engine.state.max_epochs * engine.state.epoch_length,
                sum(self._window) / len(self._window),
                len(self._window),
                self.learner.optimizer.param_groups[0]["lr"],
                self.learner.skipped,
            )
            self._window = []

    def _epoch_completed(self, engine: TestTimePolicyTrainer) -> None:
        if self._epoch_losses:
            engine.state.metrics["test_time_loss"] = sum(self._epoch_losses) / len(self._epoch_losses)
        self._epoch_losses = []

    def _completed(self, engine: TestTimePolicyTrainer) -> None:
        """Log how far the policy moved from its start and write the policy file."""
        policy = self.learner.policy
        probs = policy.probabilities().cpu()
        start = self.start_probabilities if self.start_probabilities is not None else probs
        change = (probs - start).abs()
        i = int(torch.argmax(change))
        engine.state.metrics["test_time_policy_max_change"] = float(change[i])
        top, _ = policy.top_k(min(8, len(policy.pool)))
        logger.info(
            "post-hoc TEA done: %d step(s), %d skipped; largest change of a transform probability %.4g (%s: %.4f -> "
            "%.4f); most probable now: %s",
            self.learner.steps,
            self.learner.skipped,
            float(change[i]),
            policy.pool.names[i],
            float(start[i]),
            float(probs[i]),
            ", ".join(f"{policy.pool.names[t]} {float(probs[t]):.3f}" for t in top),
        )
        if self.policy_file is not None:
            pt, js = save_policy(policy, self.policy_file)
            logger.info("test-time policy written to %s and %s", pt, js)
