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

Distributed evaluation (``torchrun``, a bundle's ``multi_gpu_evaluate.json``): every rank evaluates its shard of the
cases (``monai.data.DistributedSampler(even_divisible=False, shuffle=False)``) and attaches the handler; at the end of
the run the ranks exchange their rows (``torch.distributed.all_gather_object``), so every rank's report holds every
case exactly once, in the single-process order, and rank 0 alone logs and saves the tables.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Mapping, Sequence
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
    ``liver_3``; ``<split>_<k>``, or ``<split>_rank<r>_<k>`` under distributed evaluation, when there is none); on
    ``COMPLETED`` it gathers the rows of all ranks (distributed evaluation, see the module docstring), logs the
    Markdown table of the run's split(s) with ``engine.logger`` and, when the report has an ``output_dir``, saves
    the report (rank 0 only).

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
        gather: under ``torch.distributed`` with several ranks, gather every rank's rows of the run on
            ``COMPLETED`` (a collective: every rank must attach the handler and run the evaluator); rank 0 then
            logs and saves the complete tables. ``False`` leaves each rank's report with its own shard (a warning
            is issued) and rank 0 saves its shard.
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
        gather: bool = True,
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
        self.gather = bool(gather)
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
        if idist.get_world_size() > 1 and not self.gather:
            warnings.warn(
                "SegmentationReportHandler(gather=False) under distributed evaluation: each rank's report holds only "
                "its shard of the cases.",
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
            rank = f"rank{idist.get_rank()}_" if idist.get_world_size() > 1 else ""
            case_id = _case_id(label, pred) or f"{split}_{rank}{self._count:04d}"
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
        """Gather the ranks' rows (distributed), log the split's Markdown table and save the report (rank 0).

        Raises:
            ValueError: in a distributed run, when two ranks evaluated the same case of a split (a sampler that pads
                the shards, e.g. ``DistributedSampler(even_divisible=True)``) or their HD95 units differ.
        """
        if idist.get_world_size() > 1:
            if self.gather:
                self._gather_ranks()
            if idist.get_rank() != 0:
                return
        if self.log_table:
            names = ", ".join(f"'{s}'" for s in self._splits) or f"'{self.split}'"
            engine.logger.info(
                f"segmentation report, split {names} ({self._count} cases):\n"
                f"{self.report.to_markdown(splits=self._splits)}"
            )
        if self.save and self.report.output_dir is not None:
            self.report.save()

    def _gather_ranks(self) -> None:
        """Replace this run's rows by those of every rank, interleaved case by case in rank order.

        ``DistributedSampler(shuffle=False, even_divisible=False)`` gives rank ``r`` the cases ``r, r + W, ...`` of
        the datalist, so taking the ranks' ``k``-th cases in rank order, for ``k = 0, 1, ...``, restores its order.
        """
        import torch.distributed as dist

        rows = [r for r in self.report.rows if r["split"] in self._splits]
        mine = {"rows": rows, "splits": self._splits, "unit": self.report.hd95_unit if rows else None}
        ranks: list[dict] = [{}] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
        units = sorted({r["unit"] for r in ranks if r["unit"] is not None})
        if len(units) > 1:
            raise ValueError(f"the ranks computed HD95 in different units {units}: give every case a spacing, or none.")
        cases = [_by_case(r["rows"]) for r in ranks]
        ordered = [c for k in range(max(map(len, cases))) for c in (rank[k] for rank in cases if k < len(rank))]
        evaluated_by: dict[tuple[str, str], int] = {}
        for r, rank in enumerate(cases):
            for case in rank:
                key = (case[0]["split"], case[0]["case"])
                if key in evaluated_by:
                    raise ValueError(
                        f"case {key[1]!r} ({key[0]}) was evaluated by ranks {evaluated_by[key]} and {r}: shard the "
                        "cases with monai.data.DistributedSampler(even_divisible=False) so that each is evaluated once."
                    )
                evaluated_by[key] = r
        splits = list(dict.fromkeys(s for r in ranks for s in r["splits"]))
        for split in splits:
            self.report.reset(split=split)
        self.report.add_rows([row for case in ordered for row in case], units[0] if units else "mm")
        self._splits = splits
        self._count = len(ordered)


def _by_case(rows: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Consecutive rows of one (split, case), as :meth:`SegmentationReport.add_case` appends them."""
    return [list(group) for _, group in itertools.groupby(rows, key=lambda r: (r["split"], r["case"]))]


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
