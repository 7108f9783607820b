# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Performance estimation in MONAI engines: fit the estimators on a labelled validation run, estimate the per-class
Dice of the model's own prediction on unlabelled data, case by case.

Li, Kamnitsas, Islam, Chen, Glocker, "Estimating model performance under domain shifts with class-specific confidence
scores", MICCAI 2022, method section: the estimators (:mod:`monai_imbalance.estimation`) are calibrated on a labelled
source-domain validation set and tell, without labels, how good a segmentation is on a target domain (a new scanner or
site). :class:`PerformanceEstimationHandler` does this inside ignite runs, in one of three modes:

- ``"track"`` (attached to a trainer): in every ``interval``-th epoch it collects the raw logits of the validation
  evaluator's run (attach it after ``ValidationHandler``), fits the estimators at the end of the epoch, runs the
  ``targets`` (evaluators, or data loaders run with the validation evaluator's network and inferer) and logs the
  estimated Dice per class (and the true Dice where the target's batches carry labels) to the Python log and
  TensorBoard, and writes ``<file_prefix>_epoch<NNNN>.json`` / ``.csv``: an unlabelled target domain tracked during
  training.
- ``"fit"`` (attached to a lone labelled evaluator): fits at ``COMPLETED`` and saves every estimator in one JSON file
  (:func:`~monai_imbalance.estimation.save_estimators`).
- ``"estimate"`` (attached to a lone evaluator, labels optional): loads that file, estimates every case, and writes
  ``<file_prefix>.json`` / ``.csv`` (case ids from the images' file names).

Logits are read at ``IterationEvents.FORWARD_COMPLETED`` (MONAI runs the postprocessing later, at ``MODEL_COMPLETED``;
for a sliding-window evaluator these are the whole-volume logits ``(B, C, *spatial)``) and reduced or estimated at once,
one case at a time: the fit keeps a :class:`~monai_imbalance.estimation.SegmentationFitSet` (bounded memory), estimation
keeps a few numbers per case. Output channels beyond ``num_classes`` (CoLab's context channels) are merged into the
background by :func:`~monai_imbalance.networks.fold_context_channels` (``logsumexp``: their softmax probabilities add
up, exactly).

Files (JSON and CSV, written atomically): per case and target, the estimated Dice of each foreground class for every
estimator and the true Dice when labelled; the means over cases (``case = "mean"``) and, when every case of a target
is labelled, the absolute error of the mean estimate. Under distributed training every rank fits on its own shard of
the validation set and only rank 0 logs and writes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from monai_imbalance.estimation import (
    PerformanceEstimator,
    SegmentationFitSet,
    confusion_counts,
    create_estimators,
    dice_from_confusion,
    load_estimators,
    save_estimators,
)
from monai_imbalance.networks.context_channels import fold_context_channels
from monai_imbalance.utils import atomic_write_text, highest_resolution, plain_tensor

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
idist, _ = optional_import("ignite", IgniteInfo.OPT_IMPORT_VERSION, min_version, "distributed")

__all__ = ["PerformanceEstimationHandler", "ESTIMATION_MODES", "format_estimates", "write_estimates"]

ESTIMATION_MODES: tuple[str, ...] = ("track", "fit", "estimate")
CSV_FIELDS: tuple[str, ...] = ("target", "case", "estimator", "class", "estimated_dice", "true_dice")

logger = logging.getLogger(__name__)


def _case_name(path: Any, default: str) -> str:
    """``/a/b/case_003.nii.gz`` -> ``case_003``; ``default`` when there is no usable name."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        return default
    name = Path(str(path)).name
    for ext in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".npy", ".npz", ".png", ".dcm", ".gz"):
        if name.lower().endswith(ext):
            return name[: -len(ext)] or default
    return name


def _class_names(class_names: Mapping[Any, str] | Sequence[str] | None, num_classes: int) -> list[str]:
    """Names of the foreground classes ``1..C-1``."""
    if class_names is None:
        return [f"class_{c}" for c in range(1, num_classes)]
    names = {int(k): str(v) for k, v in class_names.items()} if isinstance(class_names, Mapping) else {}
    if not isinstance(class_names, Mapping):
        names = dict(enumerate(map(str, class_names)))
    if len(names) != num_classes:
        raise ValueError(f"class_names {class_names!r} name {len(names)} classes, the estimators have {num_classes}.")
    return [names.get(c, f"class_{c}") for c in range(1, num_classes)]


def _summarize(records: Sequence[Mapping[str, Any]], specs: Sequence[str]) -> dict[str, Any]:
    """Mean estimated and true Dice over the cases of one target, and the absolute error of the means."""
    est = {s: torch.tensor([r["estimated"][s] for r in records], dtype=torch.float64) for s in specs}
    labelled = [r["true"] for r in records if r["true"] is not None]
    mean_est = {s: v.mean(0).tolist() for s, v in est.items()}
    true = torch.tensor(labelled, dtype=torch.float64).mean(0).tolist() if labelled else None
    error = None
    if labelled and len(labelled) == len(records):
        error = {s: [abs(a - b) for a, b in zip(mean_est[s], true, strict=True)] for s in specs}
    return {
        "num_cases": len(records),
        "num_labelled": len(labelled),
        "estimated": mean_est,
        "true": true,
        "abs_error": error,
    }


def write_estimates(results: Mapping[str, Any], output_dir: str | os.PathLike, stem: str) -> list[Path]:
    """Write the handler's results as ``<stem>.json`` and ``<stem>.csv`` in ``output_dir`` (atomically).

    The CSV is in long form, one row per target, case, estimator and class (:data:`CSV_FIELDS`; ``true_dice`` empty
    when the case is unlabelled), then one ``case = "mean"`` row per target, estimator and class.

    Args:
        results: ``{"classes": [...], "estimators": [...], "targets": {name: {"cases": [...], "mean": {...}}}}``.
        output_dir: the folder (created).
        stem: the file names' stem.

    Returns:
        the two paths.
    """
    out = Path(output_dir)
    classes, specs = results["classes"], results["estimators"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)

    def fmt(x: float | None) -> str:
        return "" if x is None else f"{x:.6f}"

    for target, res in results["targets"].items():
        for case in res["cases"]:
            for s in specs:
                for k, name in enumerate(classes):
                    true = None if case["true"] is None else case["true"][k]
                    writer.writerow([target, case["case"], s, name, fmt(case["estimated"][s][k]), fmt(true)])
        mean = res["mean"]
        for s in specs:
            for k, name in enumerate(classes):
                true = None if mean["true"] is None else mean["true"][k]
                writer.writerow([target, "mean", s, name, fmt(mean["estimated"][s][k]), fmt(true)])
    paths = [
        atomic_write_text(json.dumps(results, indent=2) + "\n", out / f"{stem}.json"),
        atomic_write_text(buffer.getvalue(), out / f"{stem}.csv"),
    ]
    return paths


def format_estimates(results: Mapping[str, Any]) -> str:
    """A Markdown table per target: one row per estimator, ``estimated (|error|)`` per class, the true Dice last."""
    lines = []
    classes, specs = results["classes"], results["estimators"]
    for target, res in results["targets"].items():
        mean = res["mean"]
        lines.append(f"{target}: {mean['num_cases']} case(s), {mean['num_labelled']} labelled; mean Dice per class")
        lines.append("| estimator | " + " | ".join(classes) + " |")
        lines.append("|---|" + "---|" * len(classes))
        for s in specs:
            cells = []
            for k in range(len(classes)):
                cell = f"{mean['estimated'][s][k]:.4f}"
                if mean["abs_error"] is not None:
                    cell += f" (err {mean['abs_error'][s][k]:.4f})"
                cells.append(cell)
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        if mean["true"] is not None:
            lines.append("| true | " + " | ".join(f"{v:.4f}" for v in mean["true"]) + " |")
    return "\n".join(lines)


def _label_indices(label: Any, logits: torch.Tensor, owner: str) -> torch.Tensor:
    """``(B, *S)`` long class indices of a ``(B, 1, *S)`` index or ``(B, C, *S)`` one-hot label of ``logits``."""
    label = plain_tensor(label, detach=True)
    c = logits.shape[1]
    if label.ndim == logits.ndim and label.shape[1] == 1:
        labels = label[:, 0]
    elif label.ndim == logits.ndim and label.shape[1] == c and c > 1:
        labels = label.argmax(1)
    else:
        raise ValueError(
            f"{owner}: label of shape {tuple(label.shape)} does not fit logits {tuple(logits.shape)}; expected "
            "(B, 1, *spatial) indices or (B, C, *spatial) one-hot."
        )
    return (labels.round() if labels.is_floating_point() else labels).long()


def _case_names(engine: Engine, image_key: str, default: list[str]) -> list[str]:
    """The file names of the batch's images (``filename_or_obj`` of their meta data), else ``default``."""
    for source in (engine.state.batch, engine.state.output):
        if not isinstance(source, Mapping):
            continue
        meta = getattr(source.get(image_key), "meta", None)
        if not isinstance(meta, Mapping) or "filename_or_obj" not in meta:
            meta = source.get(f"{image_key}_meta_dict")
        if isinstance(meta, Mapping) and "filename_or_obj" in meta:
            names = meta["filename_or_obj"]
            names = [names] if isinstance(names, (str, os.PathLike)) else list(names)
            if len(names) == len(default):
                return [_case_name(n, d) for n, d in zip(names, default, strict=True)]
    return default


def _add_scalars(writer: Any, results: Mapping[str, Any], step: int) -> None:
    """TensorBoard scalars of :meth:`PerformanceEstimationHandler.report`'s results: estimated, error, true Dice."""
    for target, res in results["targets"].items():
        mean = res["mean"]
        for k, name in enumerate(results["classes"]):
            for spec in results["estimators"]:
                writer.add_scalar(f"estimated_dice/{target}/{name}/{spec}", mean["estimated"][spec][k], step)
                if mean["abs_error"] is not None:
                    writer.add_scalar(f"estimation_error/{target}/{name}/{spec}", mean["abs_error"][spec][k], step)
            if mean["true"] is not None and not math.isnan(mean["true"][k]):
                writer.add_scalar(f"true_dice/{target}/{name}", mean["true"][k], step)
    writer.flush()


class PerformanceEstimationHandler:
    """Fit performance estimators on a labelled evaluator run and estimate the Dice on unlabelled runs.

    Args:
        mode: ``"track"`` (attach to a trainer), ``"fit"`` or ``"estimate"`` (attach to a lone evaluator); see the
            module docstring.
        estimators: ``"track"`` / ``"fit"``: spec names (e.g. ``["cs-ts", "atc"]``, default all of
            :data:`~monai_imbalance.estimation.ESTIMATOR_SPECS`) or a dict ``{name: estimator}`` (refitted at every
            fit). ``"estimate"``: the names to use from ``estimators_path`` (default all), or a dict of fitted
            estimators (then ``estimators_path`` may be ``None``).
        estimators_path: the fitted-estimator JSON: written by ``"fit"`` (and by ``"track"`` at each fit, if given),
            read by ``"estimate"``.
        evaluator: ``"track"``: the validation evaluator (labelled) the trainer runs through ``ValidationHandler``.
        targets: ``"track"``: ``{name: evaluator or data loader}`` to estimate on; a loader is run by a
            ``SupervisedEvaluator`` with the validation evaluator's network, inferer, device, amp and
            ``prepare_batch``.
        interval: ``"track"``: estimate every ``interval`` epochs (and at the last epoch); a multiple of the
            validation interval.
        output_dir: folder of the JSON / CSV files (``None``: no files, except ``estimators_path``).
        log_dir: folder of a TensorBoard ``SummaryWriter`` created on first use (ignored if ``summary_writer``).
        summary_writer: an existing writer (anything with ``add_scalar``).
        class_names: names of all classes ``{index: name}`` or a list (background first); default ``class_<c>``.
        num_classes: the number of classes ``C``; logit channels beyond it are merged into the background. Default:
            the logits' channel count.
        keep_margin: the fit's reduction margin (:class:`~monai_imbalance.estimation.SegmentationSetReducer`).
        background_samples: the fit's per-case background sample.
        estimator_kwargs: keyword arguments of the calibration estimators built from spec names (``convention``,
            ``solver``, ...).
        pred_key: key of the logits in ``engine.state.output``.
        label_key: key of the labels in ``engine.state.output`` (falls back to ``engine.state.batch``).
        image_key: key of the image whose meta data ``filename_or_obj`` names the case.
        target_name: the target name of a lone evaluator's cases in ``"estimate"`` mode.
        file_prefix: stem of the result files.

    Attributes:
        estimators: ``{name: estimator}`` (fitted after a fit, or loaded in ``"estimate"`` mode).
        last_results: the results of the last estimation (the dict written as JSON), or ``None``.

    Raises:
        ValueError: unknown ``mode``, ``interval < 1``, ``"track"`` without ``evaluator`` or ``targets``,
            ``"estimate"`` with neither ``estimators_path`` nor fitted estimators, bad spec names; during runs: a fit
            without labelled cases, logits whose channel count differs from the fitted estimators'.
        FileNotFoundError: ``"estimate"`` and no file at ``estimators_path`` (the message names the path).
    """

    def __init__(
        self,
        mode: str = "track",
        estimators: Mapping[str, PerformanceEstimator] | Sequence[str] | str | None = None,
        estimators_path: str | os.PathLike | None = None,
        evaluator: Engine | None = None,
        targets: Mapping[str, Any] | None = None,
        interval: int = 1,
        output_dir: str | os.PathLike | None = None,
        log_dir: str | os.PathLike | None = None,
        summary_writer: Any | None = None,
        class_names: Mapping[Any, str] | Sequence[str] | None = None,
        num_classes: int | None = None,
        keep_margin: float | None = 10.0,
        background_samples: int = 4096,
        estimator_kwargs: Mapping[str, Any] | None = None,
        pred_key: str = "pred",
        label_key: str = "label",
        image_key: str = "image",
        target_name: str = "target",
        file_prefix: str = "estimates",
    ) -> None:
        name = type(self).__name__
        if mode not in ESTIMATION_MODES:
            raise ValueError(f"{name}: unknown mode {mode!r}; choose one of {list(ESTIMATION_MODES)}.")
        if isinstance(interval, bool) or int(interval) != interval or int(interval) < 1:
            raise ValueError(f"{name}: interval must be an integer >= 1, got {interval!r}.")
        if num_classes is not None and int(num_classes) < 2:
            raise ValueError(f"{name}: num_classes must be >= 2, got {num_classes}.")
        self.mode = mode
        self.estimators_path = None if estimators_path is None else Path(estimators_path)
        self.evaluator = evaluator
        self.targets = dict(targets or {})
        self.interval = int(interval)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.log_dir = log_dir
        self.summary_writer = summary_writer
        self.class_names = class_names
        self.num_classes = None if num_classes is None else int(num_classes)
        self.keep_margin = keep_margin
        self.background_samples = int(background_samples)
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.target_name = str(target_name)
        self.file_prefix = str(file_prefix)
        self.estimators: dict[str, PerformanceEstimator] = {}
        self._names: list[str] | None = None
        if isinstance(estimators, Mapping):
            if not estimators:
                raise ValueError(f"{name}: estimators is an empty dict.")
            self.estimators = dict(estimators)
        elif mode == "estimate":
            self._names = (
                None if estimators is None else ([estimators] if isinstance(estimators, str) else list(estimators))
            )
        else:
            self.estimators = create_estimators(estimators, **dict(estimator_kwargs or {}))
        if mode != "estimate":
            SegmentationFitSet(keep_margin, background_samples, name=name)  # checks the reduction arguments now
        if mode == "track":
            if evaluator is None:
                raise ValueError(f"{name}: mode 'track' needs the validation evaluator (evaluator=...).")
            if not self.targets:
                raise ValueError(f"{name}: mode 'track' needs at least one target evaluator or loader (targets=...).")
        if mode == "estimate" and self.estimators_path is None:
            unfitted = [k for k, e in self.estimators.items() if not e.fitted]
            if not self.estimators or unfitted:
                raise ValueError(
                    f"{name}: mode 'estimate' needs estimators_path (the file written in 'fit' mode) or a dict of "
                    f"fitted estimators; unfitted: {unfitted or 'no estimators given'}."
                )
        self.last_results: dict[str, Any] | None = None
        self._fit_set: SegmentationFitSet | None = None
        self._records: dict[str, list[dict[str, Any]]] = {}
        self._active: str | None = None  # the target being estimated (None: not collecting)
        self._collect_validation = False
        self._validation_epoch: int | None = None
        self._target_engines: dict[str, Engine] = {}
        self._fitted_classes: int | None = None
        self._runs = 0
        self._trainer: Engine | None = None

    # -- attaching ----------------------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        """Attach to a trainer (``"track"``) or to a lone evaluator (``"fit"``, ``"estimate"``).

        Args:
            engine: a MONAI trainer (``"track"``) or evaluator; both register ``IterationEvents``.
        """
        from monai.engines import Evaluator, IterationEvents

        if self.mode == "fit":
            engine.add_event_handler(Events.STARTED, self._fit_started)
            engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._collect_fit)
            engine.add_event_handler(Events.COMPLETED, self._fit_completed)
            return
        if self.mode == "estimate":
            engine.add_event_handler(Events.STARTED, self._estimate_started)
            engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._collect_estimates, self.target_name)
            engine.add_event_handler(Events.COMPLETED, self._estimate_completed)
            return
        if isinstance(engine, Evaluator):
            raise ValueError(
                f"{type(self).__name__}: mode 'track' attaches to the trainer, not to an evaluator (use mode 'fit' "
                "or 'estimate' for a lone evaluator)."
            )
        self._trainer = engine
        val = self.evaluator
        val.add_event_handler(Events.STARTED, self._validation_started)
        val.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._collect_fit)
        for target, item in self.targets.items():
            evaluator = item if isinstance(item, Evaluator) else self._loader_evaluator(target, item, val)
            evaluator.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._collect_estimates, target)
            self._target_engines[target] = evaluator
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _loader_evaluator(self, target: str, loader: Any, val: Engine) -> Engine:
        from monai.engines import SupervisedEvaluator

        if not isinstance(loader, Iterable):
            raise ValueError(
                f"{type(self).__name__}: target {target!r} is a {type(loader).__name__}, neither an evaluator nor a "
                "data loader."
            )
        return SupervisedEvaluator(
            device=val.state.device,
            val_data_loader=loader,
            network=val.network,
            inferer=val.inferer,
            prepare_batch=val.prepare_batch,
            amp=val.amp,
        )

    # -- reading a batch ----------------------------------------------------------------------------------------
    def _batch(self, engine: Engine, need_label: bool) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
        """``(B, C, *S)`` logits, ``(B, *S)`` long labels (or ``None``) and the case names of the current batch."""
        output = engine.state.output
        if not isinstance(output, Mapping) or self.pred_key not in output:
            raise KeyError(f"{type(self).__name__}: engine.state.output has no {self.pred_key!r} at FORWARD_COMPLETED.")
        logits = plain_tensor(highest_resolution(output[self.pred_key]), detach=True)
        if self.num_classes is not None:
            logits = fold_context_channels(logits, self.num_classes)  # exact: context probabilities add up
        if logits.ndim < 3:
            raise ValueError(f"{type(self).__name__}: logits must be (B, C, *spatial), got {tuple(logits.shape)}.")
        batch = engine.state.batch if isinstance(engine.state.batch, Mapping) else {}
        label = output.get(self.label_key)
        if label is None:
            label = batch.get(self.label_key)
        if label is None and need_label:
            raise ValueError(
                f"{type(self).__name__}: fitting needs labelled cases, but the batch has no {self.label_key!r} (in "
                "engine.state.output or engine.state.batch)."
            )
        labels = None if label is None else _label_indices(label, logits, type(self).__name__)
        start = len(self._records.get(self._active or "", []))
        default = [f"case_{start + i:04d}" for i in range(logits.shape[0])]
        return logits, labels, _case_names(engine, self.image_key, default)

    # -- fitting ------------------------------------------------------------------------------------------------
    def _new_fit_set(self) -> None:
        needs_qc = any(getattr(e, "method", "") == "qc" for e in self.estimators.values())
        self._fit_set = SegmentationFitSet(
            self.keep_margin, self.background_samples, quality_features=needs_qc, name=type(self).__name__
        )

    def _fit_started(self, engine: Engine) -> None:
        self._new_fit_set()

    def _validation_started(self, engine: Engine) -> None:
        trainer = self._trainer
        epoch = trainer.state.epoch
        self._collect_validation = epoch % self.interval == 0 or (
            trainer.state.max_epochs is not None and epoch >= trainer.state.max_epochs
        )
        if self._collect_validation:
            self._new_fit_set()
            self._validation_epoch = epoch

    def _collect_fit(self, engine: Engine) -> None:
        if self.mode == "track" and not self._collect_validation:
            return
        with torch.no_grad():
            logits, labels, _ = self._batch(engine, need_label=True)
            for i in range(logits.shape[0]):
                self._fit_set.add(logits[i], labels[i])

    def fit(self) -> dict[str, PerformanceEstimator]:
        """Fit the estimators on the cases collected in the last labelled run (and save them if
        ``estimators_path``). Returns the fitted estimators."""
        if self._fit_set is None or not len(self._fit_set):
            raise ValueError(
                f"{type(self).__name__}: no labelled validation case was collected, nothing to fit the estimators on "
                "(did the labelled evaluator run with this handler attached, over a non-empty loader?)."
            )
        with torch.no_grad():
            self._fit_set.fit(self.estimators)
        c = self._fit_set.num_classes
        self._fitted_classes = c
        true = self._fit_set.true_dice.mean(0).tolist()
        if self.estimators_path is not None and idist.get_rank() == 0:
            names = self._all_class_names(c)
            info = {"validation_cases": len(self._fit_set), "validation_true_dice": true}
            save_estimators(self.estimators_path, self.estimators, labels=names, extra=info)
        self._log().info(
            f"{type(self).__name__}: fitted {list(self.estimators)} on {len(self._fit_set)} validation case(s) "
            f"(true mean Dice per class {[round(v, 4) for v in true]})"
            + (f"; saved to '{self.estimators_path}'" if self.estimators_path is not None else "")
        )
        return self.estimators

    def _all_class_names(self, c: int) -> list[str]:
        return ["background", *_class_names(self.class_names, c)]

    def _fit_completed(self, engine: Engine) -> None:
        self.fit()

    # -- estimating ---------------------------------------------------------------------------------------------
    def load(self) -> dict[str, PerformanceEstimator]:
        """``"estimate"`` mode: load the estimators from ``estimators_path`` (unless given fitted)."""
        if self.estimators_path is not None and not (
            self.estimators and all(e.fitted for e in self.estimators.values())
        ):
            self.estimators = load_estimators(self.estimators_path, self._names)
            if self.class_names is None:
                from monai_imbalance.estimation import read_estimator_file

                self.class_names = read_estimator_file(self.estimators_path)["labels"]
        counts = {e.num_classes for e in self.estimators.values()}
        if len(counts) != 1:
            raise ValueError(f"{type(self).__name__}: the estimators were fitted with different class counts {counts}.")
        self._fitted_classes = counts.pop()
        return self.estimators

    def _estimate_started(self, engine: Engine) -> None:
        self.load()
        self._records = {self.target_name: []}
        self._active = self.target_name

    def _collect_estimates(self, engine: Engine, target: str) -> None:
        if self._active != target:
            return
        with torch.no_grad():
            logits, labels, names = self._batch(engine, need_label=False)
            c = logits.shape[1]
            if c != self._fitted_classes:
                where = f" in '{self.estimators_path}'" if self.estimators_path is not None else ""
                raise ValueError(
                    f"{type(self).__name__}: the estimators{where} were fitted on logits with C={self._fitted_classes} "
                    f"channels, target {target!r} gives {c} (another network or label set? set num_classes to merge "
                    "extra context channels into the background)."
                )
            for i in range(logits.shape[0]):
                z = logits[i]
                record = {
                    "case": names[i],
                    "estimated": {k: est.estimate_case(z).tolist() for k, est in self.estimators.items()},
                    "true": None,
                }
                if labels is not None:
                    conf = confusion_counts(z.max(0).indices, labels[i].to(z.device), c)
                    record["true"] = dice_from_confusion(conf)[1:].tolist()
                self._records[target].append(record)

    def _estimate_completed(self, engine: Engine) -> None:
        self._active = None
        self._runs += 1
        self.report(self._runs, self.file_prefix)

    def _epoch_completed(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if not (
            epoch % self.interval == 0 or (engine.state.max_epochs is not None and epoch >= engine.state.max_epochs)
        ):
            return
        if self._validation_epoch != epoch:
            engine.logger.info(
                f"{type(self).__name__}: no validation run in epoch {epoch}; no estimates (set interval to a multiple "
                "of the validation interval)."
            )
            return
        self._collect_validation = False
        self.fit()
        from monai.engines import Evaluator

        self._records = {t: [] for t in self._target_engines}
        try:
            for target, evaluator in self._target_engines.items():
                self._active = target
                if isinstance(evaluator, Evaluator):
                    evaluator.run(epoch)  # MONAI's global epoch: the evaluator's handlers log at the trainer's epoch
                else:
                    evaluator.run()
        finally:
            self._active = None
        self.report(epoch, f"{self.file_prefix}_epoch{epoch:04d}")

    # -- output -------------------------------------------------------------------------------------------------
    def _log(self) -> logging.Logger:
        return logger

    def _writer(self) -> Any | None:
        if self.summary_writer is None and self.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.summary_writer = SummaryWriter(log_dir=str(self.log_dir))
        return self.summary_writer

    def report(self, step: int, stem: str) -> dict[str, Any]:
        """Summarise the collected estimates, log them, write the files and TensorBoard scalars (rank 0 only).

        Args:
            step: the TensorBoard step (the epoch, or the run count of a lone evaluator).
            stem: the result files' stem.

        Returns:
            the results (also :attr:`last_results`).
        """
        specs = list(self.estimators)
        classes = _class_names(self.class_names, int(self._fitted_classes))
        results: dict[str, Any] = {"step": step, "classes": classes, "estimators": specs, "targets": {}}
        for target, records in self._records.items():
            if not records:
                self._log().warning(f"{type(self).__name__}: target {target!r} gave no case.")
                continue
            results["targets"][target] = {"cases": records, "mean": _summarize(records, specs)}
        self.last_results = results
        if idist.get_rank() != 0:
            return results
        if self.output_dir is not None and results["targets"]:
            write_estimates(results, self.output_dir, stem)
        writer = self._writer()
        if writer is not None:
            _add_scalars(writer, results, step)
        if results["targets"]:
            self._log().info(f"Estimated Dice ({stem}):\n" + format_estimates(results))
        return results
