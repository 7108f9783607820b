# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""An ignite handler that draws the CoLab generator's context labels on one validation case every N epochs.

Li, Kamnitsas, Ouyang, Chen, Glocker, "Context Label Learning: Improving Background Class Representations in Semantic
Segmentation", IEEE TMI 2023: the generator's output is the thing to look at while CoLab trains (does it split the
background into anatomically sensible context classes around the region of interest?). The handler runs the
generator over the whole case by sliding windows of the training patch size (the generator is fully convolutional,
but a whole volume need not match its strides), takes the argmax over the ``t`` context channels and writes
:func:`~monai_imbalance.visualize.plot_context_montage` as ``context_labels_epoch<NNNN>.png`` (and as a TensorBoard
image when ``log_dir`` or ``summary_writer`` is given). The generator's train/eval mode is restored afterwards and no
gradient is recorded, so training is unaffected.

With each montage it logs how far the generator has moved, so that a CoLab result no better than vanilla can be told
apart from a generator that never learned: the relative change of its parameters since the run started
``||phi - phi_0|| / ||phi_0||``, the mean entropy of its context probabilities over the case's background voxels
(normalised by ``log t``: 1 is uniform, 0 is hard labels) and the share of background voxels in each context class
(:attr:`history`; also TensorBoard scalars and the training log).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.utils import IgniteInfo, min_version, optional_import

from monai_imbalance.utils import plain_tensor

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["ContextLabelMontageHandler"]

logger = logging.getLogger(__name__)


class ContextLabelMontageHandler:
    """Write a montage of the generated context labels on one case every ``interval`` epochs (and the last epoch).

    Args:
        generator: the context generator ``g_phi`` (input ``(1, C_in, *patch)``, output ``(1, t, *patch)``).
        dataset: a dataset whose item ``index`` is a dict with ``image`` ``(C_in, H, W, D)`` and ``label``
            ``(1, H, W, D)`` (e.g. the validation dataset); read on first use.
        num_classes: ``C`` (background included).
        output_dir: folder of the PNG files.
        roi_size: sliding-window size (the training patch size).
        interval: epochs between montages.
        index: which item of ``dataset`` to draw.
        log_dir: folder of a TensorBoard ``SummaryWriter`` created on first use.
        summary_writer: an existing writer (wins over ``log_dir``).
        device: where to run the generator (default: the device of its parameters).
        image_key: key of the image in the dataset item.
        label_key: key of the label in the dataset item.
    """

    def __init__(
        self,
        generator: torch.nn.Module,
        dataset: Sequence[Mapping[str, Any]],
        num_classes: int,
        output_dir: str | os.PathLike,
        roi_size: Sequence[int],
        interval: int = 5,
        index: int = 0,
        log_dir: str | os.PathLike | None = None,
        summary_writer: Any | None = None,
        device: str | torch.device | None = None,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        if int(interval) < 1:
            raise ValueError(f"interval must be >= 1, got interval={interval!r}.")
        if len(dataset) == 0:
            raise ValueError("ContextLabelMontageHandler: the dataset is empty; give it the validation dataset.")
        if not 0 <= int(index) < len(dataset):
            raise ValueError(f"index={index!r} is out of range for a dataset of {len(dataset)} items.")
        self.generator = generator
        self.dataset = dataset
        self.num_classes = int(num_classes)
        self.output_dir = Path(output_dir)
        self.roi_size = list(roi_size)
        self.interval = int(interval)
        self.index = int(index)
        self.log_dir = log_dir
        self.summary_writer = summary_writer
        self.device = device
        self.image_key = image_key
        self.label_key = label_key
        self.last_path: Path | None = None
        self.history: list[dict[str, Any]] = []
        self._start: list[torch.Tensor] | None = None

    def attach(self, engine: Engine) -> None:
        """Draw at the end of every ``interval``-th epoch and of the last epoch of ``engine``."""
        engine.add_event_handler(Events.STARTED, self._remember_start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _remember_start(self, engine: Engine) -> None:
        """Keep the generator's parameters at the start of the run (after a resumed checkpoint is loaded)."""
        self._start = [p.detach().clone() for p in self.generator.parameters()]

    @torch.no_grad()
    def statistics(self, logits: torch.Tensor, label: torch.Tensor) -> dict[str, Any]:
        """How far the generator moved: parameter change since the start, context entropy and class shares.

        Args:
            logits: the generator's output on the case ``(t, *spatial)``.
            label: the case's label ``(1, *spatial)`` or ``(*spatial)``; background is ``0``.

        Returns:
            ``{"parameter_change": ||phi - phi_0|| / ||phi_0|| (None before the start is known), "entropy": mean
            normalised entropy over background voxels (None when t = 1), "shares": [share of background voxels
            per context class]}``.
        """
        change = None
        if self._start is not None:
            params = [p.detach() for p in self.generator.parameters()]
            diff = sum(float(((p - p0.to(p.device)) ** 2).sum()) for p, p0 in zip(params, self._start, strict=True))
            ref = sum(float((p0**2).sum()) for p0 in self._start)
            change = (diff / max(ref, 1e-30)) ** 0.5
        background = label.reshape(logits.shape[1:]).to(logits.device) == 0
        t = int(logits.shape[0])
        probs = torch.softmax(logits.float(), dim=0)[:, background]  # (t, N_bg)
        entropy = None
        if t > 1 and probs.shape[1] > 0:
            entropy = float((-(probs * torch.log(probs.clamp_min(1e-12))).sum(0) / np.log(t)).mean())
        counts = torch.bincount(probs.argmax(0), minlength=t).float() if probs.shape[1] else torch.zeros(t)
        shares = (counts / counts.sum().clamp_min(1.0)).tolist()
        return {"parameter_change": change, "entropy": entropy, "shares": shares}

    def _case(self) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.dataset[self.index]
        if isinstance(item, list):  # a dataset with num_samples > 1 returns a list of dicts
            item = item[0]
        for key in (self.image_key, self.label_key):
            if key not in item:
                raise KeyError(f"ContextLabelMontageHandler: dataset item {self.index} has no '{key}' key.")
        return plain_tensor(item[self.image_key], detach=True).float(), plain_tensor(item[self.label_key], detach=True)

    @torch.no_grad()
    def context_map(self, image: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The hard context map ``argmax_t g_phi(x)`` of a whole image ``(C_in, *spatial)``.

        Returns:
            the map ``(*spatial)`` (long, on the CPU) and ``t``, the generator's number of output channels.
        """
        logits = self.context_logits(image)
        return logits.argmax(0).cpu(), int(logits.shape[0])

    @torch.no_grad()
    def context_logits(self, image: torch.Tensor) -> torch.Tensor:
        """The generator's logits ``(t, *spatial)`` on a whole image ``(C_in, *spatial)`` (sliding windows)."""
        device = self.device
        if device is None:
            device = next(self.generator.parameters()).device
        was_training = self.generator.training
        self.generator.eval()
        try:
            logits = sliding_window_inference(
                image[None].to(device), self.roi_size, 2, self.generator, overlap=0.25, mode="constant"
            )
        finally:
            self.generator.train(was_training)
        return plain_tensor(logits, detach=True)[0]

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch % self.interval != 0 and epoch != engine.state.max_epochs:
            return
        from monai_imbalance.visualize import plot_context_montage, save_figure

        image, label = self._case()
        logits = self.context_logits(image)
        context, num_context = logits.argmax(0).cpu(), int(logits.shape[0])
        stats = {"epoch": epoch, **self.statistics(logits, label)}
        self.history.append(stats)
        logger.info(
            "CoLab generator at epoch %d: parameters moved %s since the start of the run; context entropy %s "
            "(1 = uniform); background shares per context class %s",
            epoch,
            "n/a" if stats["parameter_change"] is None else f"{100 * stats['parameter_change']:.3g} %",
            "n/a" if stats["entropy"] is None else f"{stats['entropy']:.3f}",
            [round(v, 3) for v in stats["shares"]],
        )
        fig = plot_context_montage(
            image[0].numpy(),
            label.reshape(label.shape[-3:]).numpy(),
            context.numpy(),
            num_classes=self.num_classes,
            num_context=num_context,
            title=f"epoch {epoch}",
        )
        writer = self._writer()
        if writer is not None:
            for name in ("parameter_change", "entropy"):
                if stats[name] is not None:
                    writer.add_scalar(f"context_generator/{name}", stats[name], epoch)
            fig.canvas.draw()
            rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
            writer.add_image("context_labels", rgb, epoch, dataformats="HWC")
            writer.flush()
        self.last_path = save_figure(fig, self.output_dir / f"context_labels_epoch{epoch:04d}.png")
        logger.info("context labels of epoch %d written to %s", epoch, self.last_path)

    def _writer(self) -> Any | None:
        if self.summary_writer is None and self.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.summary_writer = SummaryWriter(log_dir=str(self.log_dir))
        return self.summary_writer
