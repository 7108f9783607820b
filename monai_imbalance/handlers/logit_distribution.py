# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Logit-distribution analysis: where the voxels of each class lie relative to the decision boundary.

Li, Kamnitsas, Glocker, "Analyzing Overfitting Under Class Imbalance in Neural Networks for Image Segmentation", IEEE
TMI 2021 (analysis of the logit distributions), show that under class imbalance the *test* pre-softmax logits of the
rare (overfitted) class drift towards and across the decision boundary while those of the background do not, and that
the train-test gap of the rare class grows as training data shrinks. This module measures that, for any model and any
bundle:

- :func:`logit_margins` is the per-voxel margin of the ground-truth class, ``m = z_y - max_{k != y} z_k`` (binary:
  ``z_fg - z_bg`` for foreground voxels and ``z_bg - z_fg`` for background voxels); ``m < 0`` means misclassified.
  Output channels ``>= num_classes`` (CoLab's extra context channels) count as background: they are folded into
  channel 0 by :func:`~monai_imbalance.networks.fold_context_channels` with ``reduction="max"``, so that ``m < 0``
  exactly where the paper's CoLab label rule (``argmax`` over all ``K`` channels, context mapped to background)
  misclassifies the voxel; the exact probability rule (``logsumexp``) would shift background margins.
- :class:`LogitMarginSampler` keeps a class-balanced, bounded, uniform sample of those margins from a stream of
  batches (vectorised reservoir sampling by random keys, with its own ``torch.Generator``): at most ``capacity``
  voxels per class whatever the data size, so memory stays flat.
- :class:`LogitDistributionHandler` feeds one sampler per split from a trainer's and an evaluator's
  ``IterationEvents.FORWARD_COMPLETED`` (raw logits, before postprocessing) and every ``interval`` epochs writes, via
  :func:`write_margin_report`: a PNG per class (training vs validation histograms, the boundary at 0, the means),
  TensorBoard histograms, an ``.npz`` of the samples, and a summary in the log (mean margin per class and split,
  train-minus-validation shift, fraction of rare-class validation voxels on the wrong side of the boundary).

The same report for a trained model without training: ``python -m monai_imbalance.inspect logits``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.utils import IgniteInfo, min_version, optional_import

from monai_imbalance.networks.context_channels import fold_context_channels
from monai_imbalance.utils import atomic_write_bytes, highest_resolution, plain_tensor

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
idist, _ = optional_import("ignite", IgniteInfo.OPT_IMPORT_VERSION, min_version, "distributed")

__all__ = [
    "LogitDistributionHandler",
    "LogitMarginSampler",
    "logit_margins",
    "summarize_margins",
    "format_margin_summary",
    "write_margin_report",
]

logger = logging.getLogger(__name__)


def _label_index(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class index per voxel, ``(B, *spatial)`` long, from a ``(B, 1, *spatial)`` map or a ``(B, C, ...)`` one-hot."""
    label = plain_tensor(label, detach=True)
    if label.ndim < 2:
        raise ValueError(f"label must be (B, 1, *spatial) or (B, C, *spatial), got shape {tuple(label.shape)}.")
    if label.shape[1] == 1:
        index = label[:, 0]
        return (index.round() if index.is_floating_point() else index).long()
    if label.shape[1] == num_classes:
        return label.argmax(1)
    raise ValueError(f"label has {label.shape[1]} channels; expected 1 (class indices) or {num_classes} (one-hot).")


def logit_margins(logits: torch.Tensor, label: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Margin of the ground-truth class at every voxel: ``m_i = z_{i,y_i} - max_{k != y_i} z_{i,k}``.

    Args:
        logits: raw (pre-softmax) network output, ``(B, K, *spatial)``, ``K >= num_classes``; channels
            ``>= num_classes`` are context channels and count as background (folded into channel 0 by max, see
            the module docstring).
        label: ``(B, 1, *spatial)`` class indices or ``(B, C, *spatial)`` one-hot, on the logits' grid.
        num_classes: number of classes ``C`` including background; default ``K``.

    Returns:
        ``(B, *spatial)`` float32 margins (computed without gradient); voxels whose label is outside ``[0, C)`` get
        ``nan``.
    """
    with torch.no_grad():
        logits = plain_tensor(logits, detach=True)
        num_classes = int(logits.shape[1] if num_classes is None else num_classes)
        z = fold_context_channels(logits.float(), num_classes, reduction="max")
        y = _label_index(label, num_classes).to(z.device)
        valid = (y >= 0) & (y < num_classes)
        own = z.gather(1, y.clamp(0, num_classes - 1).unsqueeze(1))
        other = z.scatter(1, y.clamp(0, num_classes - 1).unsqueeze(1), float("-inf")).amax(1, keepdim=True)
        margin = (own - other)[:, 0]
        return torch.where(valid, margin, torch.full_like(margin, float("nan")))


class LogitMarginSampler:
    """Class-balanced, bounded, uniform sample of voxel margins from a stream of batches.

    Reservoir sampling by random keys (bottom-k): every voxel of class ``c`` seen gets a key ``u ~ U(0, 1)`` from the
    sampler's own generator, and the reservoir of ``c`` keeps the ``capacity`` voxels with the smallest keys: a
    uniform sample without replacement of all voxels of ``c`` seen so far, of size ``min(capacity, seen_c)``. Once a
    reservoir has overflowed, only voxels whose key is below its threshold are candidates, so after the first
    batches almost no margins need computing. Margins are computed only for the voxels that enter (see
    :func:`logit_margins` for the definition); nothing is changed in place and the global RNG is not consumed.

    Args:
        num_classes: number of classes ``C`` including background; logit channels ``>= C`` count as background.
        capacity: maximum number of voxels kept per class.
        seed: seed of the sampler's ``torch.Generator`` (one per device).

    Attributes:
        seen: number of voxels of each class seen since the last :meth:`reset`, ``(C,)`` ints.
    """

    def __init__(self, num_classes: int, capacity: int = 50_000, seed: int = 0) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}.")
        self.num_classes = int(num_classes)
        self.capacity = int(capacity)
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}
        self.reset()

    def reset(self) -> None:
        """Empty the reservoirs (the generators keep their state, so successive windows draw fresh keys)."""
        self._keys: list[list[torch.Tensor]] = [[] for _ in range(self.num_classes)]
        self._values: list[list[torch.Tensor]] = [[] for _ in range(self.num_classes)]
        self._sizes = [0] * self.num_classes
        self._thresholds = [1.0] * self.num_classes  # keys >= threshold can no longer enter
        self.seen = [0] * self.num_classes

    def _generator(self, device: torch.device) -> torch.Generator:
        name = str(device)
        if name not in self._generators:
            self._generators[name] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[name]

    def _compact(self, c: int, size: int) -> None:
        """Keep the ``size`` smallest keys of class ``c`` (and lower its threshold to the largest kept key)."""
        keys, values = torch.cat(self._keys[c]), torch.cat(self._values[c])
        if keys.numel() > size:
            chosen = torch.topk(keys, size, largest=False, sorted=False).indices
            keys, values = keys[chosen], values[chosen]
            self._thresholds[c] = float(keys.max())
        self._keys[c], self._values[c], self._sizes[c] = [keys], [values], int(keys.numel())

    def update(self, logits: torch.Tensor, label: torch.Tensor) -> None:
        """Offer every voxel of a batch to the reservoir of its ground-truth class.

        One pass over the batch draws a key per voxel and keeps the voxels whose key is below their class's
        threshold (all of them until the reservoir first overflows, then a fraction ``~capacity / seen``); margins
        are computed for those candidates only. A reservoir grows to ``2 * capacity`` before it is cut back to the
        ``capacity`` smallest keys, so the cut is amortised over many batches.

        Args:
            logits: raw network output ``(B, K, *spatial)``, ``K >= num_classes`` (a list/tuple or a
                ``(B, heads, K, *spatial)`` deep-supervision output: the first, full-resolution head is used).
            label: ``(B, 1, *spatial)`` class indices or ``(B, C, *spatial)`` one-hot; other values are ignored.
        """
        with torch.no_grad():
            label = plain_tensor(label, detach=True)
            logits = plain_tensor(highest_resolution(logits, label.ndim), detach=True)
            b, k = logits.shape[:2]
            flat = logits.reshape(b, k, -1)
            n = flat.shape[2]
            y = _label_index(label, self.num_classes).to(logits.device).reshape(-1)
            if y.numel() != b * n:
                raise ValueError(f"label shape {tuple(label.shape)} does not match logits {tuple(logits.shape)}.")
            c_all = self.num_classes
            y = torch.where(y < 0, c_all, y).clamp_(max=c_all)  # a new tensor; value C = ignored
            counts = torch.bincount(y, minlength=c_all + 1)[:c_all].tolist()
            self.seen = [s + int(m) for s, m in zip(self.seen, counts, strict=True)]
            thresholds = torch.tensor([*self._thresholds, -1.0], device=logits.device)
            keys = torch.rand(y.numel(), generator=self._generator(logits.device), device=logits.device)
            candidates = (keys < thresholds[y]).nonzero().squeeze(1)
            if candidates.numel() == 0:
                return
            keys, y = keys[candidates], y[candidates]
            for c in range(c_all):
                mine = y == c
                index, new_keys = candidates[mine], keys[mine]
                if new_keys.numel() == 0:
                    continue
                if self._sizes[c] + new_keys.numel() > 2 * self.capacity:  # cut old and new keys together first
                    merged = torch.cat([*self._keys[c], new_keys.cpu()])
                    kept = torch.topk(merged, self.capacity, largest=False, sorted=False).values.max()
                    self._thresholds[c] = float(kept)
                    enter = new_keys <= self._thresholds[c]
                    index, new_keys = index[enter], new_keys[enter]
                    if self._sizes[c]:
                        self._compact_below(c)
                z = fold_context_channels(flat[index // n, :, index % n].float(), c_all, reduction="max")  # (M, C)
                margin = z[:, c] - torch.cat([z[:, :c], z[:, c + 1 :]], 1).amax(1)
                self._keys[c].append(new_keys.cpu())
                self._values[c].append(margin.cpu())
                self._sizes[c] += int(new_keys.numel())

    def _compact_below(self, c: int) -> None:
        """Drop the stored keys of class ``c`` above its threshold."""
        keys, values = torch.cat(self._keys[c]), torch.cat(self._values[c])
        keep = keys <= self._thresholds[c]
        self._keys[c], self._values[c], self._sizes[c] = [keys[keep]], [values[keep]], int(keep.sum())

    def samples(self) -> dict[int, np.ndarray]:
        """The sampled margins of each class, ``{c: (n_c,) float32}``, ``n_c = min(capacity, seen[c])``."""
        out = {}
        for c in range(self.num_classes):
            if self._sizes[c] > self.capacity:
                self._compact(c, self.capacity)
            values = torch.cat(self._values[c]) if self._values[c] else torch.empty(0)
            out[c] = values.numpy().astype(np.float32, copy=True)
        return out


def summarize_margins(
    samples: Mapping[str, Mapping[int, np.ndarray]],
    class_names: Sequence[str] | None = None,
    rare_classes: Sequence[int] | None = None,
    reference_split: str | None = None,
) -> dict[str, Any]:
    """Summary figures of sampled margins: mean, std, count and fraction below 0 per class and split, and shifts.

    Args:
        samples: ``{split: {class: (n,) margins}}``, e.g. ``{"train": ..., "validation": ...}``.
        class_names: a name per class (default ``class_<c>``).
        rare_classes: classes whose wrong-side fraction is reported (default all but class 0).
        reference_split: the split shifts are measured from (``reference - other``); default the first split.

    Returns:
        ``{"classes": [...], "splits": [...], "stats": {split: {name: {"n", "mean", "std", "wrong_side"}}},
        "shift": {"<ref>-<split>": {name: mean difference}}, "wrong_side_rare": {split: {name: fraction}}}``;
        statistics of an empty sample are ``nan``.
    """
    splits = list(samples)
    num_classes = max((max(s, default=-1) for s in samples.values()), default=-1) + 1
    names = list(class_names) if class_names is not None else [f"class_{c}" for c in range(num_classes)]
    rare = list(range(1, len(names))) if rare_classes is None else [int(c) for c in rare_classes]
    stats: dict[str, dict[str, dict[str, float]]] = {}
    for split in splits:
        stats[split] = {}
        for c, name in enumerate(names):
            x = np.asarray(samples[split].get(c, np.empty(0)), dtype=np.float64)
            stats[split][name] = {
                "n": int(x.size),
                "mean": float(x.mean()) if x.size else math.nan,
                "std": float(x.std()) if x.size else math.nan,
                "wrong_side": float((x < 0).mean()) if x.size else math.nan,
            }
    reference = reference_split if reference_split is not None else (splits[0] if splits else None)
    shift = {
        f"{reference}-{split}": {n: stats[reference][n]["mean"] - stats[split][n]["mean"] for n in names}
        for split in splits
        if split != reference
    }
    wrong = {
        split: {names[c]: stats[split][names[c]]["wrong_side"] for c in rare if c < len(names)} for split in splits
    }
    return {"classes": names, "splits": splits, "stats": stats, "shift": shift, "wrong_side_rare": wrong}


def format_margin_summary(summary: Mapping[str, Any]) -> str:
    """A Markdown table of :func:`summarize_margins`: one row per class, mean (n) per split, shifts, wrong side."""
    splits, names = summary["splits"], summary["classes"]
    shifts = list(summary["shift"])
    header = ["class"] + [f"mean {s} (n)" for s in splits] + [f"shift {s}" for s in shifts]
    header += [f"wrong side {s}" for s in splits]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        row = [name] + [f"{summary['stats'][s][name]['mean']:.3f} ({summary['stats'][s][name]['n']})" for s in splits]
        row += [f"{summary['shift'][s][name]:+.3f}" for s in shifts]
        row += [
            f"{summary['wrong_side_rare'][s][name]:.2%}" if name in summary["wrong_side_rare"][s] else "-"
            for s in splits
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "class"


def write_margin_report(
    samples: Mapping[str, Mapping[int, np.ndarray]],
    output_dir: str | os.PathLike | None,
    tag: str,
    class_names: Sequence[str] | None = None,
    rare_classes: Sequence[int] | None = None,
    summary_writer: Any | None = None,
    global_step: int = 0,
    bins: int = 100,
    log: logging.Logger | None = None,
) -> dict[str, Any]:
    """Write the logit-distribution report of sampled margins and return its summary.

    Files (each written atomically) in ``output_dir``: ``<tag>_<c>_<name>.png`` per class (one histogram per split,
    boundary at 0, means marked), ``<tag>.npz`` (arrays ``<split>_<c>``, plus ``class_names`` and ``splits``) and
    ``<tag>_summary.json``. With a ``summary_writer``, one TensorBoard histogram per class and split
    (``logit_margin/<split>/<name>``). The Markdown summary table goes to ``log`` (default this module's logger).

    Args:
        samples: ``{split: {class: (n,) margins}}``; the first split is the reference of the shifts.
        output_dir: where the files go; ``None`` writes no files.
        tag: file-name stem, e.g. ``logit_margins_epoch0005``.
        class_names: a name per class (default ``class_<c>``).
        rare_classes: classes whose wrong-side fraction is reported (default all but 0).
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter`` (or anything with ``add_histogram``).
        global_step: TensorBoard step (the epoch).
        bins: histogram bins.
        log: logger for the summary table.

    Returns:
        the :func:`summarize_margins` dict, with ``"files"``: the paths written.
    """
    summary = summarize_margins(samples, class_names, rare_classes)
    names = summary["classes"]
    files: list[str] = []
    if output_dir is not None:
        from monai_imbalance.visualize.logit_plots import plot_margin_histograms, save_figure

        out = Path(output_dir)
        for c, name in enumerate(names):
            per_split = {s: np.asarray(samples[s].get(c, np.empty(0))) for s in samples}
            fig = plot_margin_histograms(per_split, title=f"{name} (class {c}): margin z_c - max_(k!=c) z_k", bins=bins)
            files.append(str(save_figure(fig, out / f"{tag}_{c}_{_slug(name)}.png")))
        arrays = {
            f"{s}_{c}": np.asarray(samples[s].get(c, np.empty(0)), dtype=np.float32)
            for s in samples
            for c in range(len(names))
        }
        buffer = io.BytesIO()
        np.savez_compressed(buffer, class_names=np.asarray(names), splits=np.asarray(list(samples)), **arrays)
        atomic_write_bytes(buffer.getvalue(), out / f"{tag}.npz")
        files.append(str(out / f"{tag}.npz"))
        atomic_write_bytes(json.dumps({k: summary[k] for k in summary}, indent=2).encode(), out / f"{tag}_summary.json")
        files.append(str(out / f"{tag}_summary.json"))
    if summary_writer is not None:
        for s in samples:
            for c, name in enumerate(names):
                x = np.asarray(samples[s].get(c, np.empty(0)))
                if x.size:
                    summary_writer.add_histogram(f"logit_margin/{s}/{name}", x, global_step=global_step)
                    summary_writer.add_scalar(f"logit_margin_mean/{s}/{name}", float(x.mean()), global_step=global_step)
        summary_writer.flush()
    (log or logger).info(
        f"Logit margins ({tag}; m = z_c - max_(k!=c) z_k, m < 0 is wrong):\n" + format_margin_summary(summary)
    )
    summary["files"] = files
    return summary


class LogitDistributionHandler:
    """Collect class-balanced samples of voxel margins during training and validation and report them periodically.

    Attach it to a MONAI trainer (``attach(trainer)``), giving the evaluator that validates it (``evaluator=``): on
    both engines it reads the raw logits ``engine.state.output[pred_key]`` and the labels at
    ``IterationEvents.FORWARD_COMPLETED`` (MONAI runs the postprocessing later, at ``MODEL_COMPLETED``, so for a
    sliding-window evaluator these are the stitched whole-volume logits), and feeds the ``"train"`` and
    ``"validation"`` :class:`LogitMarginSampler`. Training samples are only collected during the epochs that end in
    a report (``epoch % interval == 0`` and the last epoch), validation samples only from evaluator runs in those
    epochs, so other epochs cost nothing. At the end of a report epoch (attach it after ``ValidationHandler`` so the
    evaluator has run) it calls :func:`write_margin_report` with tag ``logit_margins_epoch<NNNN>``.

    Attached to an evaluator only (e.g. in an evaluation config), it collects that evaluator's run under ``split``
    and reports when the run completes.

    Nothing is changed in place, the margins are computed under ``torch.no_grad()`` on detached tensors, and the
    sampler has its own ``torch.Generator``: training with and without the handler gives identical weights.
    Under distributed training only rank 0 writes (its own shard of the voxels; samples are not gathered).

    Args:
        num_classes: number of classes ``C`` including background; logit channels ``>= C`` (context) are background.
        output_dir: folder of the PNG/NPZ/JSON files (``None``: no files).
        evaluator: the validation evaluator to attach to as well (when attaching to a trainer).
        interval: report every ``interval`` epochs (and at the last epoch).
        samples_per_class: reservoir size per class and split.
        class_names: a name per class (default ``class_<c>``); e.g. ``list(@labels.values())``.
        rare_classes: classes whose validation wrong-side fraction is reported (default ``1..C-1``).
        log_dir: folder of a TensorBoard ``SummaryWriter`` created on first use (ignored if ``summary_writer``).
        summary_writer: an existing writer for the histograms.
        pred_key: key of the logits in ``engine.state.output``.
        label_key: key of the labels in ``engine.state.output`` (falls back to ``engine.state.batch``).
        split: the split name of a lone evaluator's samples.
        seed: seed of the samplers' generators.
        bins: histogram bins of the PNGs.
    """

    def __init__(
        self,
        num_classes: int,
        output_dir: str | os.PathLike | None = None,
        evaluator: Engine | None = None,
        interval: int = 1,
        samples_per_class: int = 50_000,
        class_names: Sequence[str] | None = None,
        rare_classes: Sequence[int] | None = None,
        log_dir: str | os.PathLike | None = None,
        summary_writer: Any | None = None,
        pred_key: str = "pred",
        label_key: str = "label",
        split: str = "validation",
        seed: int = 0,
        bins: int = 100,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}.")
        self.num_classes = int(num_classes)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.evaluator = evaluator
        self.interval = int(interval)
        self.class_names = list(class_names) if class_names is not None else None
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class_names for {self.num_classes} classes.")
        self.rare_classes = rare_classes
        self.log_dir = log_dir
        self.summary_writer = summary_writer
        self.pred_key = pred_key
        self.label_key = label_key
        self.split = split
        self.bins = bins
        self.samplers = {
            "train": LogitMarginSampler(num_classes, samples_per_class, seed),
            split: LogitMarginSampler(num_classes, samples_per_class, seed + 1),
        }
        self.trainer: Engine | None = None
        self.last_summary: dict[str, Any] | None = None
        self._train_active = False
        self._val_active = False
        self._val_epoch: int | None = None
        self._runs = 0

    # -- attaching -----------------------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        """Attach to a trainer (and to ``evaluator`` if given) or, for a MONAI ``Evaluator``, to that evaluator only.

        Args:
            engine: a MONAI ``Trainer`` or ``Evaluator`` (they register ``IterationEvents``).
        """
        from monai.engines import Evaluator, IterationEvents

        if isinstance(engine, Evaluator) and self.evaluator is None:
            engine.add_event_handler(Events.STARTED, self._evaluator_started)
            engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._collect, self.split)
            engine.add_event_handler(Events.COMPLETED, self._evaluator_completed)
            return
        self.trainer = engine
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._collect, "train")
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.STARTED, self._evaluator_started)
            self.evaluator.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._collect, self.split)

    def _report_epoch(self, engine: Engine) -> bool:
        epoch = engine.state.epoch
        return epoch % self.interval == 0 or (engine.state.max_epochs is not None and epoch >= engine.state.max_epochs)

    # -- events --------------------------------------------------------------------------------------------------
    def _epoch_started(self, engine: Engine) -> None:
        self._train_active = self._report_epoch(engine)
        if self._train_active:
            self.samplers["train"].reset()

    def _evaluator_started(self, engine: Engine) -> None:
        trainer = self.trainer
        self._val_active = trainer is None or self._report_epoch(trainer)
        if self._val_active:
            self.samplers[self.split].reset()
            self._val_epoch = None if trainer is None else trainer.state.epoch

    def _collect(self, engine: Engine, split: str) -> None:
        if not (self._train_active if split == "train" else self._val_active):
            return
        output = engine.state.output
        if not isinstance(output, Mapping) or self.pred_key not in output:
            raise KeyError(f"engine.state.output has no {self.pred_key!r} at FORWARD_COMPLETED.")
        label = output.get(self.label_key)
        if label is None and isinstance(engine.state.batch, Mapping):
            label = engine.state.batch.get(self.label_key)
        if label is None:
            raise KeyError(f"no {self.label_key!r} in engine.state.output or engine.state.batch.")
        self.samplers[split].update(output[self.pred_key], label)

    def _epoch_completed(self, engine: Engine) -> None:
        if not self._train_active:
            return
        self._train_active = False
        splits = ["train"]
        if self._val_epoch == engine.state.epoch and self.evaluator is not None:
            splits.append(self.split)
        elif self.evaluator is not None:
            engine.logger.info(
                f"LogitDistributionHandler: no validation run in epoch {engine.state.epoch}; reporting training only "
                "(set the handler's interval to a multiple of the validation interval)."
            )
        self.report(engine.state.epoch, splits, engine.logger)

    def _evaluator_completed(self, engine: Engine) -> None:
        self._runs += 1
        self.report(self._runs, [self.split], engine.logger)

    # -- output --------------------------------------------------------------------------------------------------
    def _writer(self) -> Any | None:
        if self.summary_writer is None and self.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.summary_writer = SummaryWriter(log_dir=str(self.log_dir))
        return self.summary_writer

    def report(
        self, step: int, splits: Sequence[str] | None = None, log: logging.Logger | None = None
    ) -> dict[str, Any]:
        """Write the report of the current samples (rank 0 only) and return its summary (also ``last_summary``).

        Args:
            step: the epoch (file tag ``logit_margins_epoch<step>`` and TensorBoard step).
            splits: the splits to include (default all).
            log: logger for the summary table.
        """
        splits = list(self.samplers) if splits is None else list(splits)
        samples = {s: self.samplers[s].samples() for s in splits}
        if idist.get_rank() != 0:
            return {}
        self.last_summary = write_margin_report(
            samples,
            self.output_dir,
            f"logit_margins_epoch{step:04d}",
            class_names=self.class_names,
            rare_classes=self.rare_classes,
            summary_writer=self._writer(),
            global_step=step,
            bins=self.bins,
            log=log,
        )
        return self.last_summary
