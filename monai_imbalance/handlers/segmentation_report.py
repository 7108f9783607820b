# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Ignite handler that fills a :class:`~monai_imbalance.evaluation.SegmentationReport` from an evaluator.

Either attach one :class:`SegmentationReportHandler` per evaluator (one per split, ``split="test"``), all sharing
one report, or run one evaluator over a datalist whose entries carry their split (``split=None``: the split is read
from each case's ``"split"`` item, as tagged by :func:`monai_imbalance.data.load_evaluation_datalist`). After the
runs, the report holds one row per case and class of every split, and (when it has an ``output_dir``) its CSV and
Markdown files are rewritten at the end of each run. In a bundle's ``evaluate.json``::

    "report": {"_target_": "monai_imbalance.evaluation.SegmentationReport",
               "class_names": "$@metadata['network_data_format']['outputs']['pred']['channel_def']",
               "output_dir": "$@output_dir + '/eval'"},
    "validate#handlers": [..., {"_target_": "monai_imbalance.handlers.SegmentationReportHandler",
                                "report": "@report", "split": null}]

The evaluator's postprocessing must make ``pred`` discrete (``AsDiscreted(keys="pred", argmax=True)``, optionally
``to_onehot``) on the same grid as ``label``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from monai.data import MetaTensor, decollate_batch
from monai.utils import IgniteInfo, min_version, optional_import
from monai.utils import ImageMetaKey as Key

from monai_imbalance.evaluation.report import SegmentationReport

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
idist, _ = optional_import("ignite", IgniteInfo.OPT_IMPORT_VERSION, min_version, "distributed")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["SegmentationReportHandler"]

#: File-name endings dropped from ``filename_or_obj`` to make the case id (longest first).
_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".npz", ".npy", ".dcm", ".png")


class SegmentationReportHandler:
    """Adds every case an evaluator sees to a :class:`SegmentationReport` and logs the table when the run ends.

    On ``STARTED`` it drops the report's rows of the split(s) it filled in its previous run (so an evaluator that
    runs again, e.g. every validation interval, keeps only its latest run); on each ``ITERATION_COMPLETED`` it
    takes ``engine.state.output``, a list of per-case dicts (``decollate=True``) or a dict of batched values
    (decollated here), and adds each case with its ``pred`` (``(1, *spatial)`` label map or ``(C, *spatial)``
    one-hot), its ``label``, the voxel spacing of the label's MetaTensor (``pixdim``; the prediction's when the
    label has none) and the case id from the label's ``filename_or_obj`` (file name without extension, e.g.
    ``liver_3``; ``<split>_<k>`` when there is none); on ``COMPLETED`` it logs the Markdown table of the run's
    split(s) with ``engine.logger`` and, when the report has an ``output_dir``, saves the report.

    Args:
        report: the report to fill; share one between the handlers of several evaluators.
        split: the split this evaluator evaluates (e.g. ``"validation"``, ``"test"``), or ``None`` to read each
            case's split from its ``split_key`` item (in the engine output or, as MONAI leaves unused data keys
            there, in ``engine.state.batch``).
        pred_key: key of the discrete prediction in the output dicts.
        label_key: key of the reference segmentation.
        log_table: whether to log the Markdown table on ``COMPLETED``.
        save: whether to call ``report.save()`` on ``COMPLETED`` when ``report.output_dir`` is set.
        split_key: key of a case's split when ``split`` is ``None``.

    Note:
        Under distributed evaluation every rank sees only its shard of the cases, and rows are not gathered
        across ranks; run the evaluation on one process (a warning is issued otherwise).
    """

    def __init__(
        self,
        report: SegmentationReport,
        split: str | None,
        pred_key: str = "pred",
        label_key: str = "label",
        log_table: bool = True,
        save: bool = True,
        split_key: str = "split",
    ) -> None:
        if not isinstance(report, SegmentationReport):
            raise TypeError(f"report must be a SegmentationReport, got {type(report).__name__}.")
        self.report = report
        self.split = None if split is None else str(split)
        self.pred_key = pred_key
        self.label_key = label_key
        self.log_table = log_table
        self.save = save
        self.split_key = split_key
        self._count = 0
        self._splits: list[str] = []  # the splits filled by the current (or last) run, in order

    def attach(self, engine: Engine) -> None:
        """Register the handler on ``STARTED``, ``ITERATION_COMPLETED`` and ``COMPLETED`` of ``engine``.

        Args:
            engine: an ignite engine whose output holds ``pred_key`` and ``label_key``, e.g. a MONAI
                ``SupervisedEvaluator`` with discrete postprocessing.
        """
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        """Drop the rows of the split(s) of this handler's previous run, so a repeated run does not add them twice."""
        for split in self._splits + ([self.split] if self.split is not None else []):
            self.report.reset(split=split)
        self._splits = []
        self._count = 0
        if idist.get_world_size() > 1:
            warnings.warn(
                "SegmentationReportHandler does not gather cases across ranks: each rank's report holds only its "
                "shard. Evaluate on a single process for complete tables.",
                stacklevel=2,
            )

    def __call__(self, engine: Engine) -> None:
        """Add every case of the current iteration's output to the report.

        Raises:
            KeyError: when an output item lacks ``pred_key`` or ``label_key``.
            ValueError: when a case's prediction or label is invalid (the message names the case).
        """
        output = engine.state.output
        items = decollate_batch(output) if isinstance(output, Mapping) else output
        batch_items: list | None = None
        for i, item in enumerate(items):
            if not isinstance(item, Mapping) or self.pred_key not in item or self.label_key not in item:
                keys = list(item) if isinstance(item, Mapping) else type(item).__name__
                raise KeyError(
                    f"SegmentationReportHandler needs '{self.pred_key}' and '{self.label_key}' in the engine output "
                    f"items, got {keys}."
                )
            split = self.split
            if split is None:
                if self.split_key not in item and batch_items is None:
                    batch = engine.state.batch
                    batch_items = decollate_batch(batch) if isinstance(batch, Mapping) else list(batch or [])
                split = _split_of(item, batch_items, i, self.split_key)
            pred, label = item[self.pred_key], item[self.label_key]
            self._count += 1
            case_id = _case_id(label, pred) or f"{split}_{self._count:04d}"
            spacing = _spacing(label, pred)
            try:
                self.report.add_case(case_id, split, pred, label, spacing=spacing)
            except ValueError as e:
                hint = (
                    f" The prediction must be discrete, e.g. postprocessing with AsDiscreted(keys='{self.pred_key}', "
                    "argmax=True), on the label's grid."
                    if str(e).startswith(("pred ", "shape mismatch"))
                    else ""
                )
                raise ValueError(f"case {case_id!r} ({split}): {e}{hint}") from e
            if split not in self._splits:
                self._splits.append(split)

    def completed(self, engine: Engine) -> None:
        """Log the split's Markdown table and save the report when it has an ``output_dir``."""
        if self.log_table:
            names = ", ".join(f"'{s}'" for s in self._splits) or f"'{self.split}'"
            engine.logger.info(
                f"segmentation report, split {names} ({self._count} cases):\n"
                f"{self.report.to_markdown(splits=self._splits)}"
            )
        if self.save and self.report.output_dir is not None:
            self.report.save()


def _split_of(item: Mapping, batch_items: list | None, index: int, key: str) -> str:
    """The split of a case: ``item[key]``, else the ``key`` of the matching (decollated) batch item."""
    value = item.get(key)
    if value is None and batch_items is not None and index < len(batch_items):
        candidate = batch_items[index]
        value = candidate.get(key) if isinstance(candidate, Mapping) else None
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str) or not value:
        raise KeyError(
            f"SegmentationReportHandler(split=None) reads each case's split from its '{key}' item, found {value!r}; "
            "tag the datalist entries (e.g. monai_imbalance.data.load_evaluation_datalist) or give split."
        )
    return value


def _case_id(*tensors: Any) -> str | None:
    """File name without extension of the first MetaTensor's ``filename_or_obj``, if any."""
    for t in tensors:
        if not isinstance(t, MetaTensor):
            continue
        name = t.meta.get(Key.FILENAME_OR_OBJ)
        if isinstance(name, (list, tuple)) and len(name) == 1:
            name = name[0]
        if isinstance(name, (str, os.PathLike)) and str(name):
            base = os.path.basename(os.fspath(name))
            for ext in _EXTENSIONS:
                if base.lower().endswith(ext):
                    return base[: -len(ext)]
            return base
    return None


def _spacing(*tensors: Any) -> Any:
    """Voxel spacing (``pixdim``) of the first MetaTensor, or ``None``."""
    for t in tensors:
        if isinstance(t, MetaTensor):
            return t.pixdim
    return None
