# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Atomic checkpoints and resume: the latest training state, the best model, and loading them back.

MONAI's ``CheckpointSaver`` writes in place (its disk saver sets ``atomic=False``), so a run killed while saving
can leave a truncated ``model.pt``. These handlers write every file atomically (a temporary file in the same
folder, flushed and ``fsync``-ed, then ``os.replace``), so a checkpoint on disk is always a complete one:

- :class:`LatestCheckpointSaver` (on the trainer) writes ``latest.pt`` every ``interval`` epochs (and, if asked,
  every ``iteration_interval`` iterations): the state dicts of the network, optimiser, scheduler, trainer, and of
  the :class:`BestModelSaver`, so a resumed run neither forgets nor overwrites the best score so far.
- :class:`BestModelSaver` (on the evaluator) writes ``model.pt``, the bare network ``state_dict`` that the Model
  Zoo, ``ckpt_export`` and MONAI Label expect, whenever the key metric improves.
- :class:`ResumeFromLatestCheckpoint` (first on the trainer) loads ``latest.pt`` when ``resume`` is true, with
  MONAI's ``CheckpointLoader`` (``weights_only=True``), and fails clearly when there is nothing to resume.

Resuming continues from the last saved epoch: the weights, optimiser, scheduler and epoch count are restored;
the data order of the resumed epochs differs from an uninterrupted run (the loaders' random streams are not saved).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.handlers import CheckpointLoader
from monai.utils import IgniteInfo, min_version, optional_import

from monai_imbalance.utils import atomic_open, unwrap_module

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["atomic_torch_save", "LatestCheckpointSaver", "BestModelSaver", "ResumeFromLatestCheckpoint"]

logger = logging.getLogger(__name__)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically: readers see the old file or the complete new one, never a part.

    Args:
        obj: what to save (tensors, containers and primitives, so it loads with ``weights_only=True``).
        path: the destination; its folder is created.

    Returns:
        the destination path.
    """
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def _state_dicts(objects: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, obj in objects.items():
        if obj is None:
            continue
        out[name] = unwrap_module(obj).state_dict()
    return out


class BestModelSaver:
    """Save the network's ``state_dict`` atomically as ``model.pt`` whenever the evaluator's key metric improves.

    Attach it to an evaluator (``validate#handlers``). Its own state (the best score and epoch) is a state dict, so
    :class:`LatestCheckpointSaver` stores it and a resumed run keeps comparing against the true best.

    Args:
        save_dir: the checkpoint folder.
        network: the model (a DDP wrapper is unwrapped, so the file loads into the bare network).
        filename: file name of the best model.
        metric_name: the metric in ``engine.state.metrics`` to maximise; default the evaluator's key metric.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        network: torch.nn.Module,
        filename: str = "model.pt",
        metric_name: str | None = None,
    ) -> None:
        self.path = Path(save_dir) / filename
        self.network = network
        self.metric_name = metric_name
        self.best_metric = -float("inf")
        self.best_epoch = -1

    def attach(self, engine: Engine) -> None:
        """Save after each evaluation run (``EPOCH_COMPLETED`` of the evaluator)."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None or name not in engine.state.metrics:
            metrics = list(engine.state.metrics)
            raise KeyError(f"BestModelSaver: metric {name!r} not in the evaluator's metrics {metrics}.")
        value = float(engine.state.metrics[name])
        if value != value or value <= self.best_metric:  # NaN never counts as an improvement
            return
        self.best_metric, self.best_epoch = value, int(engine.state.epoch)
        atomic_torch_save(_state_dicts({"model": self.network})["model"], self.path)
        engine.logger.info(f"BestModelSaver: {name}={value:.4f} at epoch {self.best_epoch}, saved '{self.path}'.")

    def state_dict(self) -> dict[str, Any]:
        """The best score and its epoch (primitives: safe for ``weights_only`` loading)."""
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the best score and epoch."""
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state["best_epoch"])


class LatestCheckpointSaver:
    """Write the whole training state atomically to ``latest.pt`` every ``interval`` epochs and at the end.

    Args:
        save_dir: the checkpoint folder.
        save_dict: objects with ``state_dict()``, e.g. ``{"model": net, "optimizer": opt, "lr_scheduler": sched,
            "best": best_model_saver}``; ``None`` values are skipped.
        filename: file name of the latest checkpoint.
        interval: save every this many epochs (0: only at the end of training).
        iteration_interval: also save every this many iterations (0: never), for long epochs.
        engine_key: the key under which the engine this handler is attached to (the trainer: its epoch and
            iteration) is saved; ``None`` to leave it out. Taking it at ``attach`` avoids a circular reference
            between the trainer and its handlers in bundle configs.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = "latest.pt",
        interval: int = 1,
        iteration_interval: int = 0,
        engine_key: str | None = "trainer",
    ) -> None:
        if not save_dict:
            raise ValueError("LatestCheckpointSaver: save_dict is empty.")
        self.path = Path(save_dir) / filename
        self.save_dict = dict(save_dict)
        self.interval = int(interval)
        self.iteration_interval = int(iteration_interval)
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        """Register on ``EPOCH_COMPLETED`` (every ``interval``), ``ITERATION_COMPLETED`` and ``COMPLETED``."""
        if self.engine_key is not None:
            self.save_dict[self.engine_key] = engine
        if self.interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        if self.iteration_interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.iteration_interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        atomic_torch_save(_state_dicts(self.save_dict), self.path)
        engine.logger.debug(f"LatestCheckpointSaver: epoch {engine.state.epoch}, saved '{self.path}'.")


class ResumeFromLatestCheckpoint:
    """Load ``latest.pt`` into the given objects when the trainer starts, if ``resume`` is true.

    Place it first in ``train#handlers`` so everything else starts from the restored state. Loading is MONAI's
    :class:`monai.handlers.CheckpointLoader` (``weights_only=True``, ``map_location``).

    Args:
        save_dir: the checkpoint folder written by :class:`LatestCheckpointSaver`.
        load_dict: the same objects as its ``save_dict``; ``None`` values are skipped.
        resume: whether to resume. ``False`` makes the handler do nothing (a fresh run).
        filename: file name of the latest checkpoint.
        map_location: passed to ``torch.load``, e.g. the training device.
        engine_key: the key of the engine's own state in the checkpoint (as in :class:`LatestCheckpointSaver`);
            the engine attached to is restored under it. ``None`` leaves the engine's state alone.

    Raises:
        FileNotFoundError: when attached with ``resume=True`` and the checkpoint does not exist.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        load_dict: Mapping[str, Any],
        resume: bool = False,
        filename: str = "latest.pt",
        map_location: Any = None,
        engine_key: str | None = "trainer",
    ) -> None:
        self.path = Path(save_dir) / filename
        self.load_dict = {k: v for k, v in load_dict.items() if v is not None}
        self.resume = bool(resume)
        self.map_location = map_location
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        """Attach MONAI's ``CheckpointLoader`` for ``latest.pt`` when resuming."""
        if not self.resume:
            return
        if not self.path.is_file():
            raise FileNotFoundError(
                f"resume was requested but there is no checkpoint '{self.path}'; run training without --resume "
                "first, or point --ckpt_dir to the folder of the run to continue."
            )
        load_dict = dict(self.load_dict)
        if self.engine_key is not None:
            load_dict[self.engine_key] = engine
        CheckpointLoader(load_path=str(self.path), load_dict=load_dict, map_location=self.map_location).attach(engine)
        logger.info(f"resuming from '{self.path}'.")
