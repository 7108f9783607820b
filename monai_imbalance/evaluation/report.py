# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Per-case metric tables and their per-class summaries, as CSV and as the research's Markdown table.

:class:`SegmentationReport` collects one row per (case, class) from
:func:`~monai_imbalance.evaluation.metrics.segmentation_case_metrics`, summarises them per (split, class) with
NaN-aware means, standard deviations and counts of defined values, and writes

- ``metrics_per_case.csv``: columns ``case, split, class_index, class, dice, sensitivity, precision, hd95,
  n_label, n_pred`` (NaN written as ``nan``);
- ``metrics_summary.csv``: columns ``split, class_index, class, n`` then ``<metric>_mean``, ``<metric>_std`` and
  ``<metric>_count`` for ``dice, sensitivity, precision, hd95``, then ``hd95_unit``;
- ``metrics_summary.md``: one row per split and class with ``DSC (%)``, ``SEN (%)``, ``PRC (%)`` and
  ``HD95 (mm)`` as ``mean ± std`` and ``n`` (the number of cases).

The standard deviation is the population one (``ddof=0``, numpy's default) over the defined values. A metric cell
of the Markdown table carries ``(k/n)`` when it was defined in only ``k`` of the ``n`` cases (see the empty rules
in :mod:`monai_imbalance.evaluation.metrics`), and ``n/a`` when it was defined in none.

Example::

    report = SegmentationReport({"0": "background", "1": "liver", "2": "tumour"}, output_dir="eval")
    report.add_case("liver_3", "test", pred, label, spacing=label.pixdim)
    print(report.save())
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_imbalance.evaluation.metrics import METRIC_NAMES, ArrayLike, SpacingLike, segmentation_case_metrics
from monai_imbalance.utils import atomic_write_text

__all__ = ["SegmentationReport", "CASE_COLUMNS", "SUMMARY_COLUMNS", "MARKDOWN_HEADERS"]

#: Columns of ``metrics_per_case.csv`` and keys of :attr:`SegmentationReport.rows`.
CASE_COLUMNS: tuple[str, ...] = (
    "case",
    "split",
    "class_index",
    "class",
    "dice",
    "sensitivity",
    "precision",
    "hd95",
    "n_label",
    "n_pred",
)
#: Columns of ``metrics_summary.csv`` and keys of the :meth:`SegmentationReport.summary` entries.
SUMMARY_COLUMNS: tuple[str, ...] = (
    ("split", "class_index", "class", "n")
    + tuple(f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "std", "count"))
    + ("hd95_unit",)
)
#: Markdown column header of each metric (HD95's unit is filled in by the report) and its scale factor.
MARKDOWN_HEADERS: dict[str, tuple[str, float]] = {
    "dice": ("DSC (%)", 100.0),
    "sensitivity": ("SEN (%)", 100.0),
    "precision": ("PRC (%)", 100.0),
    "hd95": ("HD95 ({unit})", 1.0),
}

CASES_FILE = "metrics_per_case.csv"
SUMMARY_CSV_FILE = "metrics_summary.csv"
SUMMARY_MD_FILE = "metrics_summary.md"
_FILE_MODE = 0o644


class SegmentationReport:
    """Per-case, per-class DSC / SEN / PRC / HD95 table with per-(split, class) summaries.

    Args:
        class_names: index -> name, either a mapping (e.g. the ``labels`` dict of an MSD ``dataset.json``, whose
            keys are strings such as ``"0"``) or a sequence whose position is the index. The indices must be
            ``0..C-1`` with class 0 the background; ``C`` (at least 2) is the number of classes.
        output_dir: default folder of :meth:`save`.
        include_background: whether class 0 gets rows too.

    Raises:
        ValueError: when the class indices are not ``0..C-1``, not integers, or fewer than 2.
    """

    def __init__(
        self,
        class_names: Mapping[Any, str] | Sequence[str],
        output_dir: str | os.PathLike | None = None,
        include_background: bool = False,
    ) -> None:
        self.class_names = _class_names(class_names)
        self.num_classes = len(self.class_names)
        self.output_dir = output_dir
        self.include_background = include_background
        self._rows: list[dict[str, Any]] = []
        self._cases: set[tuple[str, str]] = set()  # (split, case) already added
        self._hd95_unit: str | None = None

    # ----------------------------------------------------------------------------------------------- collecting
    def add_case(
        self,
        case_id: str,
        split: str,
        pred: ArrayLike,
        label: ArrayLike,
        spacing: SpacingLike | None = None,
    ) -> dict[int, dict[str, float]]:
        """Compute one case's metrics and add one row per evaluated class.

        Args:
            case_id: case identifier (e.g. the image file name without extension).
            split: the split the case belongs to (e.g. ``"validation"``, ``"test"``, ``"shifted"``).
            pred: discrete prediction, label map ``(*spatial)`` / ``(1, *spatial)`` or one-hot ``(C, *spatial)``.
            label: reference segmentation, in any of the same formats.
            spacing: voxel spacing (one value or one per spatial dimension); HD95 is then in mm, else in voxels.
                All cases of a report must agree on this (a table must not mix mm and voxels).

        Returns:
            The case's metrics, as returned by :func:`segmentation_case_metrics`.

        Raises:
            ValueError: when the case is already in the split, when some cases have a spacing and others do not,
                or on invalid inputs (see :func:`segmentation_case_metrics`).
        """
        case_id, split = str(case_id), str(split)
        if (split, case_id) in self._cases:
            raise ValueError(f"case {case_id!r} is already in split {split!r} of the report.")
        unit = "voxels" if spacing is None else "mm"
        if self._rows and self._hd95_unit != unit:
            raise ValueError(
                f"case {case_id!r} has HD95 in {unit} but earlier cases in {self._hd95_unit}: give a spacing for "
                "all cases or for none."
            )
        metrics = segmentation_case_metrics(
            pred, label, self.num_classes, spacing=spacing, include_background=self.include_background
        )
        self._hd95_unit = unit
        self._cases.add((split, case_id))
        for c, values in metrics.items():
            self._rows.append(
                {"case": case_id, "split": split, "class_index": c, "class": self.class_names[c], **values}
            )
        return metrics

    def add_rows(self, rows: Sequence[Mapping[str, Any]], hd95_unit: str) -> None:
        """Add rows computed by another report, e.g. the :attr:`rows` of the other ranks of a distributed evaluation.

        Nothing is added when a row is invalid.

        Args:
            rows: dicts with the keys :data:`CASE_COLUMNS` (others are ignored), all the rows of each case.
            hd95_unit: ``"mm"`` or ``"voxels"``, the unit of the rows' ``hd95`` (the source report's
                :attr:`hd95_unit`).

        Raises:
            ValueError: when ``hd95_unit`` is neither ``"mm"`` nor ``"voxels"`` or differs from the unit of the
                report's rows, when a row lacks a column or names a class (index and name) that this report does not
                evaluate, or when a case is already in its split.
        """
        if hd95_unit not in ("mm", "voxels"):
            raise ValueError(f"hd95_unit must be 'mm' or 'voxels', got {hd95_unit!r}.")
        rows = [dict(r) for r in rows]
        if not rows:
            return
        if self._rows and self._hd95_unit != hd95_unit:
            raise ValueError(f"rows have HD95 in {hd95_unit} but the report's rows in {self._hd95_unit}.")
        classes = {c: self.class_names[c] for c in self._classes()}
        new_cases = set()
        for row in rows:
            missing = [c for c in CASE_COLUMNS if c not in row]
            if missing:
                raise ValueError(f"row {row} lacks the column(s) {missing}.")
            key = (str(row["split"]), str(row["case"]))
            if key in self._cases:
                raise ValueError(f"case {key[1]!r} is already in split {key[0]!r} of the report.")
            if classes.get(row["class_index"]) != row["class"]:
                raise ValueError(
                    f"row of case {key[1]!r} has class {row['class_index']!r} ({row['class']!r}); the report evaluates "
                    f"{classes}."
                )
            new_cases.add(key)
        self._hd95_unit = hd95_unit
        self._cases |= new_cases
        self._rows.extend(
            {**{c: row[c] for c in CASE_COLUMNS}, "case": str(row["case"]), "split": str(row["split"])} for row in rows
        )

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One dict per (case, class) with the keys :data:`CASE_COLUMNS`, in insertion order (copies)."""
        return [dict(r) for r in self._rows]

    @property
    def hd95_unit(self) -> str:
        """``"mm"`` when the cases were added with a spacing, ``"voxels"`` otherwise (``"mm"`` while empty)."""
        return self._hd95_unit or "mm"

    @property
    def splits(self) -> list[str]:
        """The splits in order of their first case."""
        return list(dict.fromkeys(r["split"] for r in self._rows))

    def reset(self, split: str | None = None) -> None:
        """Drop all rows, or only those of ``split``."""
        if split is None:
            self._rows = []
        else:
            self._rows = [r for r in self._rows if r["split"] != split]
        self._cases = {(r["split"], r["case"]) for r in self._rows}
        if not self._rows:
            self._hd95_unit = None

    # ----------------------------------------------------------------------------------------------- summarising
    def summary(self, splits: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Per (split, class): number of cases ``n`` and, per metric, NaN-aware mean, std and count of defined values.

        Args:
            splits: the splits to summarise, in this order; all (in order of appearance) when ``None``.

        Returns:
            One dict per (split, class) with the keys :data:`SUMMARY_COLUMNS`; ``<metric>_mean`` and
            ``<metric>_std`` are NaN when ``<metric>_count`` is 0.
        """
        out = []
        for split in self.splits if splits is None else list(splits):
            for c in self._classes():
                rows = [r for r in self._rows if r["split"] == split and r["class_index"] == c]
                if not rows:
                    continue
                entry: dict[str, Any] = {"split": split, "class_index": c, "class": self.class_names[c], "n": len(rows)}
                for m in METRIC_NAMES:
                    values = np.asarray([r[m] for r in rows], dtype=np.float64)
                    defined = values[~np.isnan(values)]
                    entry[f"{m}_mean"] = float(defined.mean()) if defined.size else math.nan
                    entry[f"{m}_std"] = float(defined.std()) if defined.size else math.nan
                    entry[f"{m}_count"] = int(defined.size)
                entry["hd95_unit"] = self.hd95_unit
                out.append(entry)
        return out

    def to_markdown(self, splits: Sequence[str] | None = None, digits: int = 2) -> str:
        """The summary as a Markdown table: one row per split and class, metrics as ``mean ± std``.

        Args:
            splits: the splits to include (see :meth:`summary`).
            digits: decimals of the means and standard deviations.

        Returns:
            The table (header, separator and one line per row) followed by a footnote line, ending in a newline.
        """
        headers = (
            ["Split", "Class"] + [MARKDOWN_HEADERS[m][0].format(unit=self.hd95_unit) for m in METRIC_NAMES] + ["n"]
        )
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(headers) - 2)) + "|"]
        for e in self.summary(splits):
            cells = [str(e["split"]), str(e["class"])]
            for m in METRIC_NAMES:
                scale = MARKDOWN_HEADERS[m][1]
                count = e[f"{m}_count"]
                if count == 0:
                    cells.append("n/a")
                    continue
                cell = f"{e[f'{m}_mean'] * scale:.{digits}f} ± {e[f'{m}_std'] * scale:.{digits}f}"
                if count < e["n"]:
                    cell += f" ({count}/{e['n']})"
                cells.append(cell)
            cells.append(str(e["n"]))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(
            "mean ± std (population) over the cases where the metric is defined; (k/n): defined in k of n cases. "
            "Empty classes: both empty: DSC 1, HD95 0, SEN/PRC undefined; missed (prediction empty): DSC 0, SEN 0, "
            "PRC/HD95 undefined; spurious (reference empty): DSC 0, PRC 0, SEN/HD95 undefined."
        )
        return "\n".join(lines) + "\n"

    # ----------------------------------------------------------------------------------------------- writing
    def save(self, output_dir: str | os.PathLike | None = None) -> str:
        """Write ``metrics_per_case.csv``, ``metrics_summary.csv`` and ``metrics_summary.md`` atomically.

        Each file is written to a temporary file in ``output_dir`` and moved into place with :func:`os.replace`,
        so a reader never sees a half-written file.

        Args:
            output_dir: destination folder (created if missing); the report's ``output_dir`` when ``None``.

        Returns:
            The Markdown table (as written to ``metrics_summary.md``).

        Raises:
            ValueError: when neither ``output_dir`` nor the report's ``output_dir`` is set.
        """
        folder = output_dir if output_dir is not None else self.output_dir
        if folder is None:
            raise ValueError("SegmentationReport.save needs an output_dir (argument or constructor).")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        markdown = self.to_markdown()
        atomic_write_text(_csv_text(CASE_COLUMNS, self._rows), folder / CASES_FILE)
        atomic_write_text(_csv_text(SUMMARY_COLUMNS, self.summary()), folder / SUMMARY_CSV_FILE)
        atomic_write_text(markdown, folder / SUMMARY_MD_FILE)
        return markdown

    def _classes(self) -> range:
        return range(0 if self.include_background else 1, self.num_classes)

    def __len__(self) -> int:
        """Number of rows (cases x evaluated classes)."""
        return len(self._rows)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(classes={self.class_names}, rows={len(self._rows)}, splits={self.splits}, "
            f"include_background={self.include_background})"
        )


def _class_names(class_names: Mapping[Any, str] | Sequence[str]) -> list[str]:
    if isinstance(class_names, str):
        raise ValueError("class_names must be a mapping index -> name or a sequence of names, not a string.")
    if isinstance(class_names, Mapping):
        try:
            named = {int(k): str(v) for k, v in class_names.items()}
        except (TypeError, ValueError) as e:
            raise ValueError(f"class_names keys must be integers or integer strings, got {list(class_names)}.") from e
        if sorted(named) != list(range(len(named))):
            raise ValueError(f"class_names indices must be 0..C-1 (0 = background), got {sorted(named)}.")
        names = [named[i] for i in range(len(named))]
    else:
        names = [str(n) for n in class_names]
    if len(names) < 2:
        raise ValueError(f"class_names needs the background and at least one class, got {names}.")
    return names


def _csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
