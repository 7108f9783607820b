# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""An ignite handler that records the augmentation policies' probabilities every epoch and plots their evolution.

Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data augmentation in
segmentation", IEEE TMI 2023 (method section: the class-specific policies): the learned class-specific policies are the
thing to watch while JCSAugment trains (does the foreground policy apply stronger transformations than the background
one?). At the end of every epoch :class:`PolicyPlotHandler`

1. records each class group's probabilities ``P^G_o`` of every operation and bin (and, with a test-time policy, the
   probability of every test-time transform) into :attr:`PolicyPlotHandler.history`;
2. adds TensorBoard scalars when ``log_dir`` or ``summary_writer`` is given: ``policy/<group>/<op>`` = the
   probability that the operation is applied, ``1 - P^G_o(identity)``, and ``test_time_policy/<transform>``;
3. writes the policies' files into ``policy_dir`` when given: ``policy.pt`` / ``policy.json`` and
   ``test_time_policy.pt`` / ``test_time_policy.json`` (the state dict on the CPU and the readable description of
   :func:`~monai_imbalance.augment.describe_policy`, the format of :func:`~monai_imbalance.augment.save_policy`,
   each written atomically), which :func:`~monai_imbalance.augment.load_policy` and
   :class:`~monai_imbalance.augment.LearnedTTAInferer` read;

and every ``interval`` epochs (and at the last epoch) it draws
:func:`~monai_imbalance.visualize.plot_policy_evolution` as ``<output_dir>/policy_epoch<NNNN>.png`` and logs how far
the policies moved since the run started (:meth:`PolicyPlotHandler.movement`: the largest change of any probability),
so that a learned policy no better than a fixed one can be told apart from a policy that never moved. The history is a
state dict of primitives, so a bundle can list the handler in its checkpoint and a resumed run keeps the curves.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from monai_imbalance.augment import AugmentationPolicy, TestTimePolicy, describe_policy, policy_paths
from monai_imbalance.utils import atomic_open, atomic_write_text

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["PolicyPlotHandler"]

logger = logging.getLogger(__name__)


def _cpu_state(module: torch.nn.Module) -> dict[str, Any]:
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in module.state_dict().items()}


class PolicyPlotHandler:
    """Record the policies' probabilities every epoch; plot them every ``interval`` epochs (module docstring).

    Args:
        policy: the training-time policy (one categorical per operation and class group); may be ``None`` when only
            a test-time policy is given.
        output_dir: folder of the PNG files (a bundle uses ``<output_dir>/policy``).
        test_time_policy: the test-time policy, recorded, logged and saved too.
        interval: epochs between plots (the last epoch is always plotted).
        log_dir: folder of a TensorBoard ``SummaryWriter`` created on first use.
        summary_writer: an existing writer (wins over ``log_dir``).
        policy_dir: folder where the policy files are written every epoch (``None``: not written).
        test_time_top_k: how many test-time transforms the plot shows (the most probable at the plotted epoch).

    Raises:
        ValueError: no policy at all, a policy of the wrong type, ``interval < 1`` or ``test_time_top_k < 1``.
    """

    POLICY_NAME = "policy"
    TEST_TIME_POLICY_NAME = "test_time_policy"

    def __init__(
        self,
        policy: AugmentationPolicy | None,
        output_dir: str | os.PathLike,
        test_time_policy: TestTimePolicy | None = None,
        interval: int = 5,
        log_dir: str | os.PathLike | None = None,
        summary_writer: Any | None = None,
        policy_dir: str | os.PathLike | None = None,
        test_time_top_k: int = 8,
    ) -> None:
        if policy is None and test_time_policy is None:
            raise ValueError("PolicyPlotHandler needs a policy, a test_time_policy, or both; got neither.")
        if policy is not None and not isinstance(policy, AugmentationPolicy):
            raise ValueError(f"policy must be an AugmentationPolicy, got {type(policy).__name__}.")
        if test_time_policy is not None and not isinstance(test_time_policy, TestTimePolicy):
            raise ValueError(f"test_time_policy must be a TestTimePolicy, got {type(test_time_policy).__name__}.")
        if int(interval) < 1:
            raise ValueError(f"interval must be >= 1, got interval={interval!r}.")
        if int(test_time_top_k) < 1:
            raise ValueError(f"test_time_top_k must be >= 1, got test_time_top_k={test_time_top_k!r}.")
        self.policy = policy
        self.test_time_policy = test_time_policy
        self.output_dir = Path(output_dir)
        self.interval = int(interval)
        self.log_dir = log_dir
        self.summary_writer = summary_writer
        self.policy_dir = None if policy_dir is None else Path(policy_dir)
        self.test_time_top_k = int(test_time_top_k)
        self.last_path: Path | None = None
        self.epochs: list[int] = []
        #: ``{group: {op: [per epoch: [P(bin 0), P(bin 1), ...]]}}``
        self.training: dict[str, dict[str, list[list[float]]]] = {}
        #: ``{transform: [per epoch: P]}``
        self.test_time: dict[str, list[float]] = {}

    def attach(self, engine: Engine) -> None:
        """Run at the end of every epoch of ``engine`` (the trainer); remember the policies when it starts."""
        engine.add_event_handler(Events.STARTED, self._remember_start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _probabilities(self) -> dict[str, torch.Tensor]:
        """Every probability of both policies, by ``"training/<group>/<op>"`` and ``"test_time"``."""
        out: dict[str, torch.Tensor] = {}
        if self.policy is not None:
            for group, ops in self.policy.probabilities().items():
                for op, p in ops.items():
                    out[f"training/{group}/{op}"] = p.detach().cpu().double()
        if self.test_time_policy is not None:
            out["test_time"] = self.test_time_policy.probabilities().detach().cpu().double()
        return out

    def _remember_start(self, engine: Engine | None = None) -> None:
        """Keep the policies' probabilities at the start of the run (after a resumed checkpoint is loaded)."""
        with torch.no_grad():
            self._start = self._probabilities()

    def movement(self) -> dict[str, tuple[float, str] | None]:
        """The largest absolute change of a probability since the run started, per policy, and where it is.

        Returns:
            ``{"training": (change, "<group>/<op>[bin]"), "test_time": (change, "<transform>")}``, ``None`` for a
            policy that is absent (or before the run started).
        """
        start = getattr(self, "_start", None)
        out: dict[str, tuple[float, str] | None] = {"training": None, "test_time": None}
        if start is None:
            return out
        with torch.no_grad():
            now = self._probabilities()
        for key, p in now.items():
            delta = (p - start[key]).abs()
            k = int(delta.argmax())
            if key == "test_time":
                assert self.test_time_policy is not None
                out["test_time"] = (float(delta[k]), self.test_time_policy.pool.names[k])
            else:
                where = f"{key.split('/', 1)[1]}[{k}]"
                if out["training"] is None or float(delta[k]) > out["training"][0]:
                    out["training"] = (float(delta[k]), where)
        return out

    # -------------------------------------------------------------------------------------------------- records
    @property
    def history(self) -> dict[str, Any]:
        """``{"epochs": [...], "training": {group: {op: [[P per bin] per epoch]}}, "test_time": {name: [P]}}``."""
        return {"epochs": list(self.epochs), "training": self.training, "test_time": self.test_time}

    def record(self, epoch: int) -> None:
        """Append the current probabilities of the policies as the values of ``epoch`` (replacing a later record).

        A resumed run re-records from its restored epoch on, so the history never holds an epoch twice.
        """
        keep = sum(1 for e in self.epochs if e < epoch)
        if keep < len(self.epochs):
            self._truncate(keep)
        self.epochs.append(int(epoch))
        if self.policy is not None:
            for group, ops in self.policy.probabilities().items():
                per_group = self.training.setdefault(group, {})
                for op in self.policy.pool.op_names:  # the pool's order (the order the plot lists them in)
                    per_group.setdefault(op, []).append([float(v) for v in ops[op].cpu()])
        if self.test_time_policy is not None:
            probs = self.test_time_policy.probabilities().cpu()
            for name, p in zip(self.test_time_policy.pool.names, probs.tolist(), strict=True):
                self.test_time.setdefault(name, []).append(float(p))

    def _truncate(self, n: int) -> None:
        self.epochs = self.epochs[:n]
        for ops in self.training.values():
            for op in ops:
                ops[op] = ops[op][:n]
        for name in self.test_time:
            self.test_time[name] = self.test_time[name][:n]

    def applied(self) -> dict[str, dict[str, list[float]]]:
        """``{group: {op: [1 - P(identity) per epoch]}}`` from the history."""
        return {g: {op: [1.0 - p[0] for p in rows] for op, rows in ops.items()} for g, ops in self.training.items()}

    def top_test_time(self) -> dict[str, list[float]]:
        """The ``test_time_top_k`` test-time transforms most probable at the last recorded epoch, with their series."""
        if not self.test_time:
            return {}
        ranked = sorted(self.test_time, key=lambda n: -self.test_time[n][-1])
        return {n: self.test_time[n] for n in ranked[: self.test_time_top_k]}

    # ------------------------------------------------------------------------------------------------- outputs
    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        self.record(epoch)
        self._log_scalars(epoch)
        if self.policy_dir is not None:
            self.save_policies(self.policy_dir)
        if epoch % self.interval == 0 or epoch == engine.state.max_epochs:
            self.plot(f"epoch {epoch}")
            moved = {k: v for k, v in self.movement().items() if v is not None}
            if moved:
                logger.info(
                    "augmentation policies at epoch %d, largest change of a probability since the start of the run: %s",
                    epoch,
                    "; ".join(f"{k} {v[0]:.4f} ({v[1]})" for k, v in moved.items()),
                )

    def _log_scalars(self, epoch: int) -> None:
        writer = self._writer()
        if writer is None:
            return
        for group, ops in self.applied().items():
            for op, values in ops.items():
                writer.add_scalar(f"policy/{group}/{op}", values[-1], epoch)
        for name, values in self.test_time.items():
            writer.add_scalar(f"test_time_policy/{name}", values[-1], epoch)
        writer.flush()

    def save_policies(self, folder: str | os.PathLike) -> list[Path]:
        """Write ``policy.pt/.json`` and ``test_time_policy.pt/.json`` (those that exist) into ``folder``, atomically.

        Returns:
            the paths written.
        """
        written = []
        for name, module in ((self.POLICY_NAME, self.policy), (self.TEST_TIME_POLICY_NAME, self.test_time_policy)):
            if module is None:
                continue
            pt, js = policy_paths(Path(folder) / name)
            with atomic_open(pt, "wb") as f:
                torch.save(_cpu_state(module), f)
            atomic_write_text(json.dumps(describe_policy(module), indent=4) + "\n", js)
            written += [pt, js]
        return written

    def plot(self, title: str = "") -> Path:
        """Draw the history as ``<output_dir>/policy_epoch<NNNN>.png`` (the last recorded epoch) and return its path.

        Raises:
            ValueError: nothing recorded yet.
        """
        if not self.epochs:
            raise ValueError("PolicyPlotHandler: nothing recorded yet.")
        from monai_imbalance.visualize import plot_policy_evolution, save_figure

        applied = self.applied()
        test_time = self.top_test_time()
        if not applied:  # a test-time policy alone: its panel is the only one
            applied, test_time = {"test-time": test_time}, None
        fig = plot_policy_evolution(self.epochs, applied, test_time, title=title)
        self.last_path = save_figure(fig, self.output_dir / f"policy_epoch{self.epochs[-1]:04d}.png")
        logger.info("policy probabilities up to epoch %d drawn in %s", self.epochs[-1], self.last_path)
        return self.last_path

    def _writer(self) -> Any | None:
        if self.summary_writer is None and self.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.summary_writer = SummaryWriter(log_dir=str(self.log_dir))
        return self.summary_writer

    # ------------------------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The recorded history (primitives only: safe for ``weights_only`` loading)."""
        return json.loads(json.dumps(self.history))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a history written by :meth:`state_dict`.

        Raises:
            ValueError: a history whose series lengths differ from its number of epochs.
        """
        epochs = [int(e) for e in state.get("epochs", [])]
        training = {
            g: {op: [[float(v) for v in p] for p in rows] for op, rows in ops.items()}
            for g, ops in dict(state.get("training", {})).items()
        }
        test_time = {n: [float(v) for v in values] for n, values in dict(state.get("test_time", {})).items()}
        lengths = {len(rows) for ops in training.values() for rows in ops.values()} | {
            len(v) for v in test_time.values()
        }
        if lengths - {len(epochs)}:
            raise ValueError(f"PolicyPlotHandler state: series of lengths {sorted(lengths)} for {len(epochs)} epochs.")
        self.epochs, self.training, self.test_time = epochs, training, test_time
