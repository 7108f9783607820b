# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Validation every N epochs and at the end of training, so a run always leaves a best model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from monai.handlers import ValidationHandler
from monai.utils import min_version, optional_import

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["FinalEpochValidationHandler"]


class FinalEpochValidationHandler(ValidationHandler):
    """MONAI's :class:`~monai.handlers.ValidationHandler` that also validates once training ends off the interval.

    With ``interval=5`` and 12 epochs, MONAI's handler validates after epochs 5 and 10; this one also after epoch
    12, the last. A run of fewer epochs than the interval (``--epochs 1`` with ``val_interval`` 5) therefore still
    validates, so the best-model saver of the validator writes ``model.pt`` and evaluation, inference and export
    find it. A last epoch that is a multiple of the interval validates once. Iteration-level validation
    (``epoch_level=False``) likewise validates after the last iteration when it is off the interval.

    Args:
        interval: validate every ``interval`` epochs (or iterations with ``epoch_level=False``), and at the end.
        validator: the evaluator to run (or :meth:`set_validator` before training).
        epoch_level: epochs (``True``) or iterations (``False``).
        exec_at_start: also validate before training starts.

    Example::

        FinalEpochValidationHandler(interval=5, validator=evaluator).attach(trainer)
    """

    def attach(self, engine: Engine) -> None:
        """Attach to ``engine`` (the trainer): MONAI's periodic validation, and the last epoch (or iteration) when
        it is off the interval, at the same event, so handlers attached after this one see its results too."""
        super().attach(engine)
        if self.epoch_level:
            engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._last_epoch_off_interval), self)
        else:
            engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self._last_iteration_off_interval), self)

    def _last_epoch_off_interval(self, engine: Engine, epoch: int) -> bool:
        return epoch == engine.state.max_epochs and epoch % self.interval != 0

    def _last_iteration_off_interval(self, engine: Engine, iteration: int) -> bool:
        last = engine.state.max_epochs * engine.state.epoch_length
        return iteration == last and iteration % self.interval != 0
