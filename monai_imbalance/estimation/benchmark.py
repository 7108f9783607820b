# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The shift benchmark of the performance estimators: every fitted estimator on every simulated shift and severity of
a labelled test set, plus natural shifts (other sites), against the true Dice -> the MAE table of the paper's Table 1.

Protocol (Li, Kamnitsas, Islam, Chen, Glocker, "Estimating model performance under domain shifts with class-specific
confidence scores", MICCAI 2022, experimental set-up and Table 1): the estimators are fitted on a labelled source-domain
validation set (:class:`~monai_imbalance.handlers.PerformanceEstimationHandler` in ``"fit"`` mode); a *test condition*
is the test set under one corruption type and severity (:mod:`monai_imbalance.data.shifts`, inserted after the
preprocessing, with a per-case seed) or one natural shift (e.g. the external site, unshifted). For each condition,
estimator and foreground class, the estimated performance is the mean over cases of the estimated Dice, the true
performance the mean over cases of the true Dice of the model's argmax prediction (on the network's grid), and the error
is ``|estimated - true|``; the MAE averages it over the synthetic conditions (and foreground classes), over each shift
type, and over the natural conditions. The unshifted test set (``identity``) is reported separately, not in the
synthetic MAE.

Cost and memory: each case is loaded and preprocessed once; for each condition the shifted image goes through the
network once and its logits are estimated by every estimator (``estimate_case``) and compared with the label at once,
then released: one case's logits are held at a time, whatever the number of cases, conditions and estimators.

Files in ``output_dir`` (atomic writes): ``cases.csv`` (one row per condition, case, estimator and class),
``conditions.csv`` (per condition, estimator and class: mean estimated, mean true, absolute error, number of cases),
``results.csv`` and ``results.md`` (the MAE table; the Markdown in Dice points, i.e. x 100, with the mean true Dice
per condition below it), ``results.json`` (settings, timings and the table) and ``scatter.png``
(:func:`~monai_imbalance.visualize.estimation_plots.plot_estimated_vs_true`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_imbalance.utils import highest_resolution, plain_tensor

from .base import PerformanceEstimator
from .reduction import confusion_counts, dice_from_confusion
from .suite import load_estimators, read_estimator_file

__all__ = ["ShiftBenchmark", "summarize_shift_benchmark", "format_mae_table", "CONDITION_KINDS"]

#: Kinds of test conditions: the unshifted test set, simulated shifts, natural shifts.
CONDITION_KINDS: tuple[str, ...] = ("identity", "synthetic", "natural")
CASE_FIELDS: tuple[str, ...] = (
    "condition",
    "kind",
    "shift",
    "severity",
    "case",
    "estimator",
    "class",
    "estimated",
    "true",
)
CONDITION_FIELDS: tuple[str, ...] = (
    "condition",
    "kind",
    "shift",
    "severity",
    "estimator",
    "class",
    "estimated",
    "true",
    "abs_error",
    "num_cases",
)

logger = logging.getLogger(__name__)


def _case_name(path: Any, default: str) -> str:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        return default
    name = Path(str(path)).name
    for ext in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".npy", ".npz", ".png", ".dcm"):
        if name.lower().endswith(ext):
            return name[: -len(ext)] or default
    return name


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def summarize_shift_benchmark(
    conditions: Sequence[Mapping[str, Any]], shifts: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """The MAE table from per-condition rows.

    Args:
        conditions: rows with ``kind``, ``shift``, ``estimator`` and ``abs_error`` (as in ``conditions.csv``; one per
            condition, estimator and class).
        shifts: the shift types with their own column (default those in the rows, in order of appearance).

    Returns:
        ``{estimator: {"synthetic": MAE, "natural": MAE, "identity": error, "<shift>": MAE, ...}}`` (NaN where the
        rows have no such condition), estimators in order of appearance.
    """
    order: list[str] = []
    shift_order: list[str] = []
    groups: dict[tuple[str, str], list[float]] = {}
    for row in conditions:
        est, kind = str(row["estimator"]), str(row["kind"])
        if est not in order:
            order.append(est)
        err = float(row["abs_error"])
        groups.setdefault((est, kind), []).append(err)
        if kind == "synthetic":
            shift = str(row["shift"])
            if shift not in shift_order:
                shift_order.append(shift)
            groups.setdefault((est, f"shift:{shift}"), []).append(err)
    columns = list(shifts) if shifts is not None else shift_order
    table = {}
    for est in order:
        entry = {k: _mean(groups.get((est, k), [])) for k in ("synthetic", "natural", "identity")}
        entry.update({s: _mean(groups.get((est, f"shift:{s}"), [])) for s in columns})
        table[est] = entry
    return table


def format_mae_table(table: Mapping[str, Mapping[str, float]], scale: float = 100.0, digits: int = 2) -> str:
    """A Markdown table of :func:`summarize_shift_benchmark` (values times ``scale``: Dice points by default)."""
    if not table:
        return ""
    columns = list(next(iter(table.values())))
    titles = {"synthetic": "synthetic (all)", "natural": "natural", "identity": "no shift"}
    lines = [
        "| estimator | " + " | ".join(titles.get(c, c) for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    best = {c: min((v[c] for v in table.values() if not math.isnan(v[c])), default=math.nan) for c in columns}
    for est, values in table.items():
        cells = []
        for c in columns:
            v = values[c]
            cell = "-" if math.isnan(v) else f"{v * scale:.{digits}f}"
            cells.append(f"**{cell}**" if not math.isnan(v) and v == best[c] else cell)
        lines.append(f"| {est} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _csv_text(fields: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


class ShiftBenchmark:
    """Run fitted estimators on simulated and natural shifts of labelled test data and write the MAE table.

    Args:
        network: the segmentation network (its output: ``(1, C, *spatial)`` logits).
        inferer: a MONAI inferer, e.g. ``SlidingWindowInferer``; called as ``inferer(image, network)``.
        dataset: the labelled source-domain test cases, indexable, each a dict with ``image_key`` ``(C_in,
            *spatial)`` and ``label_key`` ``(1, *spatial)`` after preprocessing (e.g. a ``monai.data.Dataset``).
        estimators: ``{name: fitted estimator}``, or the path of a file of
            :func:`~monai_imbalance.estimation.save_estimators`.
        output_dir: the folder of the result files.
        shifts: shift names of :data:`~monai_imbalance.data.SHIFTS` (default all).
        severities: severities 1..5 (default all).
        natural: ``{name: dataset}`` of natural shifts, run unshifted (e.g. ``{"external": ...}``).
        estimator_names: the estimators to use from a file (default all).
        class_names: names of the foreground classes (default from the file, else ``class_<c>``).
        device: where the network runs (default: the device of its parameters).
        amp: CUDA autocast during inference.
        seed: base seed of the random shifts (per case: combined with a CRC-32 of the image, as
            :class:`~monai_imbalance.data.SimulateDomainShiftd`).
        include_identity: also run the unshifted test set.
        checkpoint: a state dict file loaded into ``network`` before the run (a bare state dict or ``{"model": ...}``).
        image_key: the image key of the dataset's dicts.
        label_key: the label key.
        plot: write ``scatter.png``.

    Raises:
        ValueError: an unknown shift or severity, an empty dataset, unfitted estimators or different class counts; at
            run: logits whose channel count differs from the estimators', a case without a label.
        FileNotFoundError: no estimator file or checkpoint at the given path.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: Any,
        dataset: Sequence[Mapping[str, Any]],
        estimators: Mapping[str, PerformanceEstimator] | str | os.PathLike,
        output_dir: str | os.PathLike,
        shifts: Sequence[str] | None = None,
        severities: Sequence[int] | None = None,
        natural: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        estimator_names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        device: str | torch.device | None = None,
        amp: bool = False,
        seed: int = 0,
        include_identity: bool = True,
        checkpoint: str | os.PathLike | None = None,
        image_key: str = "image",
        label_key: str = "label",
        plot: bool = True,
    ) -> None:
        from monai_imbalance.data import SHIFT_SEVERITIES, SHIFTS

        name = type(self).__name__
        self.shifts = list(SHIFTS if shifts is None else ([shifts] if isinstance(shifts, str) else shifts))
        unknown = [s for s in self.shifts if s not in SHIFTS]
        if unknown:
            raise ValueError(f"{name}: unknown shift(s) {unknown}; valid shifts: {list(SHIFTS)}.")
        self.severities = [int(s) for s in (SHIFT_SEVERITIES if severities is None else severities)]
        bad = [s for s in self.severities if s not in SHIFT_SEVERITIES]
        if bad:
            raise ValueError(f"{name}: severities must be in {list(SHIFT_SEVERITIES)}, got {bad}.")
        if len(dataset) == 0:
            raise ValueError(f"{name}: the test dataset is empty.")
        if isinstance(estimators, (str, os.PathLike)):
            path = estimators
            estimators = load_estimators(path, estimator_names)
            if class_names is None:
                labels = read_estimator_file(path)["labels"]
                class_names = [labels[c] for c in sorted(labels) if c > 0]
        elif estimator_names is not None:
            estimators = {k: estimators[k] for k in estimator_names}
        if not estimators:
            raise ValueError(f"{name}: no estimator.")
        unfitted = [k for k, e in estimators.items() if not e.fitted]
        if unfitted:
            raise ValueError(f"{name}: estimator(s) {unfitted} are not fitted.")
        counts = {e.num_classes for e in estimators.values()}
        if len(counts) != 1:
            raise ValueError(f"{name}: the estimators were fitted with different class counts {counts}.")
        self.num_classes = int(counts.pop())
        self.estimators = dict(estimators)
        self.class_names = (
            list(class_names) if class_names is not None else [f"class_{c}" for c in range(1, self.num_classes)]
        )
        if len(self.class_names) != self.num_classes - 1:
            raise ValueError(
                f"{name}: {len(self.class_names)} class_names for {self.num_classes - 1} foreground classes."
            )
        self.network, self.inferer, self.dataset = network, inferer, dataset
        self.natural = dict(natural or {})
        self.output_dir = Path(output_dir)
        self.device = torch.device(device) if device is not None else next(network.parameters()).device
        self.amp, self.seed, self.include_identity = bool(amp), int(seed), bool(include_identity)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.image_key, self.label_key, self.plot = image_key, label_key, bool(plot)
        self.results: dict[str, Any] | None = None

    def _load_checkpoint(self) -> None:
        if self.checkpoint is None:
            return
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"{type(self).__name__}: no checkpoint at '{self.checkpoint}'.")
        state = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
        if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
            state = state["model"]
        self.network.load_state_dict(state)

    def _conditions(self) -> list[tuple[str, str, str, int]]:
        """``(condition, kind, shift, severity)`` of the source dataset's conditions."""
        out = [("identity", "identity", "none", 0)] if self.include_identity else []
        out += [(f"{s}-{v}", "synthetic", s, v) for s in self.shifts for v in self.severities]
        return out

    def _infer(self, image: torch.Tensor) -> torch.Tensor:
        x = image[None].to(self.device)
        with torch.no_grad():
            if self.amp and self.device.type == "cuda":
                with torch.autocast("cuda"):
                    out = self.inferer(x, self.network)
            else:
                out = self.inferer(x, self.network)
        return plain_tensor(highest_resolution(out, x.ndim))[0].float()

    def _evaluate(self, z: torch.Tensor, label: torch.Tensor, where: str) -> tuple[dict[str, list[float]], list[float]]:
        c = z.shape[0]
        if c != self.num_classes:
            raise ValueError(
                f"{type(self).__name__}: the estimators were fitted on C={self.num_classes} channels, the network "
                f"gives {c} for {where} (another network or label set?)."
            )
        est = {k: e.estimate_case(z).tolist() for k, e in self.estimators.items()}
        y = label.to(z.device).long()
        y = y[0] if y.ndim == z.ndim else y
        if tuple(y.shape) != tuple(z.shape[1:]):
            raise ValueError(
                f"{type(self).__name__}: label of {where} has shape {tuple(y.shape)}, logits {tuple(z.shape)}."
            )
        true = dice_from_confusion(confusion_counts(z.max(0).indices, y, c))[1:].tolist()
        return est, true

    def _case(self, data: Mapping[str, Any], index: int, split: str) -> tuple[str, torch.Tensor, torch.Tensor]:
        if self.label_key not in data or data[self.label_key] is None:
            raise ValueError(f"{type(self).__name__}: case {index} of {split!r} has no {self.label_key!r}.")
        image = data[self.image_key]
        meta = getattr(image, "meta", {}) or {}
        name = _case_name(meta.get("filename_or_obj"), f"{split}_{index:04d}")
        image = plain_tensor(image)
        label = plain_tensor(data[self.label_key])
        return name, image, label

    def run(self) -> dict[str, Any]:
        """Run every condition and write the files; returns ``{"table", "conditions", "cases", "settings", ...}``."""
        from monai_imbalance.data import SimulateDomainShiftd
        from monai_imbalance.utils import atomic_write_text

        start = time.perf_counter()
        self._load_checkpoint()
        self.network.eval()
        conditions = self._conditions()
        cases: list[dict[str, Any]] = []
        infer_time, inferences = 0.0, 0
        shifters = {
            cond: SimulateDomainShiftd(keys="image", shift=shift, severity=sev, seed=self.seed)
            for cond, kind, shift, sev in conditions
            if kind == "synthetic"
        }

        def record(cond: str, kind: str, shift: str, sev: int, case: str, z: torch.Tensor, label: torch.Tensor) -> None:
            est, true = self._evaluate(z, label, f"case {case!r}, condition {cond!r}")
            for k, e in est.items():
                for j, cname in enumerate(self.class_names):
                    cases.append(
                        {
                            "condition": cond,
                            "kind": kind,
                            "shift": shift,
                            "severity": sev,
                            "case": case,
                            "estimator": k,
                            "class": cname,
                            "estimated": float(e[j]),
                            "true": float(true[j]),
                        }
                    )

        n = len(self.dataset)
        for i in range(n):
            t0 = time.perf_counter()
            name, image, label = self._case(self.dataset[i], i, "test")
            for cond, kind, shift, sev in conditions:
                x = image if kind == "identity" else shifters[cond]({"image": image})["image"]
                t1 = time.perf_counter()
                z = self._infer(x)
                infer_time += time.perf_counter() - t1
                inferences += 1
                record(cond, kind, shift, sev, name, z, label)
                del z, x
            logger.info(
                f"shift benchmark: test case {i + 1}/{n} ({name}): {len(conditions)} conditions in "
                f"{time.perf_counter() - t0:.1f} s"
            )
        for split, data in self.natural.items():
            for i in range(len(data)):
                name, image, label = self._case(data[i], i, split)
                t1 = time.perf_counter()
                z = self._infer(image)
                infer_time += time.perf_counter() - t1
                inferences += 1
                record(split, "natural", split, 0, name, z, label)
                del z
        per_condition = self._aggregate(cases)
        table = summarize_shift_benchmark(per_condition, self.shifts)
        wall = time.perf_counter() - start
        settings = {
            "shifts": self.shifts,
            "severities": self.severities,
            "natural": list(self.natural),
            "include_identity": self.include_identity,
            "seed": self.seed,
            "estimators": list(self.estimators),
            "classes": self.class_names,
            "test_cases": n,
            "inferences": inferences,
            "inference_seconds": round(infer_time, 2),
            "wall_seconds": round(wall, 2),
        }
        self.results = {"settings": settings, "table": table, "conditions": per_condition, "cases": cases}
        out = self.output_dir
        atomic_write_text(_csv_text(CASE_FIELDS, cases), out / "cases.csv")
        atomic_write_text(_csv_text(CONDITION_FIELDS, per_condition), out / "conditions.csv")
        table_rows = [{"estimator": k, **v} for k, v in table.items()]
        columns = ["estimator", *(next(iter(table.values())).keys())]
        atomic_write_text(_csv_text(columns, table_rows), out / "results.csv")
        atomic_write_text(self._markdown(table, per_condition, settings), out / "results.md")
        summary = {"settings": settings, "table": table, "conditions": per_condition}
        atomic_write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n", out / "results.json")
        if self.plot:
            from monai_imbalance.visualize.estimation_plots import plot_estimated_vs_true
            from monai_imbalance.visualize.logit_plots import save_figure

            save_figure(plot_estimated_vs_true(per_condition), out / "scatter.png")
        logger.info(
            f"shift benchmark: {inferences} inferences ({infer_time:.1f} s) in {wall:.1f} s; MAE in Dice points:\n"
            + format_mae_table(table)
        )
        return self.results

    def _aggregate(self, cases: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Per condition, estimator and class: mean estimated and mean true Dice over cases, their absolute error."""
        groups: dict[tuple, list[Mapping[str, Any]]] = {}
        for row in cases:
            key = (row["condition"], row["kind"], row["shift"], row["severity"], row["estimator"], row["class"])
            groups.setdefault(key, []).append(row)
        out = []
        for (cond, kind, shift, sev, est, cname), rows in groups.items():
            mean_est = _mean([r["estimated"] for r in rows])
            mean_true = _mean([r["true"] for r in rows])
            out.append(
                {
                    "condition": cond,
                    "kind": kind,
                    "shift": shift,
                    "severity": sev,
                    "estimator": est,
                    "class": cname,
                    "estimated": mean_est,
                    "true": mean_true,
                    "abs_error": abs(mean_est - mean_true),
                    "num_cases": len(rows),
                }
            )
        return out

    def _markdown(self, table: Mapping[str, Any], per_condition: Sequence[Mapping[str, Any]], settings: Mapping) -> str:
        lines = [
            "# Performance estimation under domain shift: MAE of the estimated Dice",
            "",
            f"MAE between the estimated and the true mean Dice of each test condition, in Dice points (x 100), "
            f"averaged over the foreground classes {self.class_names}. 'synthetic (all)': the {len(self.shifts)} "
            f"shift(s) x {len(self.severities)} severit(y/ies) {self.severities} of the {settings['test_cases']} test "
            f"case(s); one column per shift type; 'natural': {settings['natural'] or 'none'}; 'no shift': the "
            "unshifted test set. Best per column in bold.",
            "",
            format_mae_table(table),
            "",
            "## Mean true Dice per condition",
            "",
            "| condition | " + " | ".join(self.class_names) + " |",
            "|---|" + "---:|" * len(self.class_names),
        ]
        first = next(iter(self.estimators))
        for row_cond in dict.fromkeys(r["condition"] for r in per_condition):
            values = {
                r["class"]: r["true"] for r in per_condition if r["condition"] == row_cond and r["estimator"] == first
            }
            lines.append(f"| {row_cond} | " + " | ".join(f"{values[c]:.4f}" for c in self.class_names) + " |")
        lines += ["", f"{settings['inferences']} inferences, wall time {settings['wall_seconds']:.1f} s.", ""]
        return "\n".join(lines)
