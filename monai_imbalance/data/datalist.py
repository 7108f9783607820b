# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Datalists from a Medical Segmentation Decathlon ``dataset.json``, with low-data training subsets.

The research this project packages is about low-data regimes (Li et al., TMI 2021: 5 %-100 % of the training
cases). :func:`load_datalist` returns the ``training`` cases of a fraction, chosen so that

- every method sees the same cases for the same ``seed`` (a seeded permutation of the training list), and
- the subsets are nested: a smaller fraction is always a subset of a larger one (the first ``k`` cases of
  that one permutation).

When ``dataset.json`` has no ``validation`` list (the original MSD tasks), a validation split is held out of
``training`` by the same seed, before any fraction is taken, so the validation cases never depend on the fraction.

Bundle configs build their datalists with it, from ``@dataset_dir``, so the datalists stay plain lists of dicts
that MONAI Label and the Model Zoo tooling can override:
``"$monai_imbalance.data.load_datalist(@dataset_dir, 'training', training_fraction=@training_fraction)"``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .validation import DataValidationError, check_datalist_files, read_dataset_json

__all__ = [
    "load_datalist",
    "load_evaluation_datalist",
    "load_inference_datalist",
    "training_subset",
    "holdout_split",
    "load_labels",
    "SPLITS",
    "INFERENCE_EXTENSIONS",
]

logger = logging.getLogger(__name__)

#: The splits ``load_datalist`` understands. ``external`` is an extra test domain (our built-in data has one).
SPLITS = ("training", "validation", "test", "external")


def _permutation(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def training_subset(datalist: Sequence[Any], fraction: float, seed: int = 0) -> list[Any]:
    """The nested, seeded subset of a training list: ``max(1, round(fraction * n))`` cases.

    Args:
        datalist: the training cases.
        fraction: in ``(0, 1]``, e.g. 0.05, 0.1, 0.2, 0.5, 1.0.
        seed: the permutation seed; for a fixed seed, ``training_subset(d, a)`` is a subset of
            ``training_subset(d, b)`` whenever ``a <= b``.

    Returns:
        the chosen cases, in their original order.
    """
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0 or math.isnan(fraction):
        raise DataValidationError(f"training_fraction must be in (0, 1], got {fraction}.")
    n = len(datalist)
    if n == 0:
        raise DataValidationError("the training list is empty.")
    k = max(1, int(round(fraction * n)))
    chosen = np.sort(_permutation(n, seed)[:k])
    return [datalist[int(i)] for i in chosen]


def holdout_split(datalist: Sequence[Any], validation_fraction: float, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """Split a list into (training, validation) by a seeded permutation; validation has ``round(f * n)`` >= 1 cases.

    Args:
        datalist: the cases.
        validation_fraction: in ``(0, 1)``.
        seed: the permutation seed (shared with :func:`training_subset`, but a different stream).

    Returns:
        ``(training, validation)``, each in original order. Training keeps at least one case.
    """
    n = len(datalist)
    if not 0.0 < validation_fraction < 1.0:
        raise DataValidationError(f"validation_fraction must be in (0, 1), got {validation_fraction}.")
    if n < 2:
        raise DataValidationError(f"cannot hold out a validation split from {n} training case(s); add a list.")
    k = min(n - 1, max(1, int(round(validation_fraction * n))))
    perm = _permutation(n, seed + 7919)  # its own stream: the training permutation is independent of this one
    val_idx = set(int(i) for i in perm[:k])
    training = [d for i, d in enumerate(datalist) if i not in val_idx]
    validation = [d for i, d in enumerate(datalist) if i in val_idx]
    return training, validation


def _absolute(entry: Any, base_dir: str) -> dict[str, Any]:
    if isinstance(entry, str):
        entry = {"image": entry}

    def join(p: Any) -> Any:
        if isinstance(p, (list, tuple)):
            return [join(x) for x in p]
        return os.path.normpath(os.path.join(base_dir, p)) if isinstance(p, str) else p

    return {k: join(v) if k in ("image", "label") else v for k, v in entry.items()}


def load_labels(dataset_dir: str | os.PathLike) -> dict[int, str]:
    """The ``labels`` of a dataset's ``dataset.json`` as ``{index: name}`` (checked; 0 is the background)."""
    return read_dataset_json(dataset_dir)["labels"]


def load_datalist(
    dataset_dir: str | os.PathLike,
    split: str = "training",
    training_fraction: float = 1.0,
    seed: int = 0,
    validation_fraction: float = 0.2,
    require_label: bool | None = None,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Load one split of a Medical Segmentation Decathlon dataset as a datalist with absolute paths.

    Args:
        dataset_dir: folder holding ``dataset.json`` (paths in it are relative to this folder, as in MSD).
        split: ``"training"``, ``"validation"``, ``"test"`` or ``"external"``.
        training_fraction: fraction of the training cases to keep (only for ``split="training"``), nested by seed.
        seed: seed of the case selection (training fraction and, when needed, the validation hold-out).
        validation_fraction: fraction held out of ``training`` when ``dataset.json`` has no ``validation`` list.
        require_label: whether every entry needs a ``label``; default True for training and validation.
        check_files: check that files exist and labels match their images' grids (NIfTI headers only).

    Returns:
        a list of dicts ``{"image": ..., "label": ..., ...}`` with absolute paths.

    Raises:
        DataValidationError: bad ``dataset.json``, unknown split, missing files or labels, grid mismatch.
    """
    if split not in SPLITS:
        raise DataValidationError(f"unknown split {split!r}; choose one of {SPLITS}.")
    content = read_dataset_json(dataset_dir)
    source = content["_path"]
    base_dir = os.path.dirname(os.path.abspath(source))
    training = [_absolute(e, base_dir) for e in content["training"]]
    if split in ("training", "validation"):
        if content.get("validation"):
            validation = [_absolute(e, base_dir) for e in content["validation"]]
        else:
            training, validation = holdout_split(training, validation_fraction, seed)
        datalist = training_subset(training, training_fraction, seed) if split == "training" else validation
    else:
        entries = content.get(split)
        if not entries:
            raise DataValidationError(f"'{source}' has no '{split}' cases.")
        datalist = [_absolute(e, base_dir) for e in entries]
    if require_label is None:
        require_label = split in ("training", "validation")
    if check_files:
        keys = ("image", "label") if require_label else ("image",)
        check_datalist_files(datalist, keys=keys, source=f"'{source}' ({split})")
    return datalist


def load_evaluation_datalist(
    dataset_dir: str | os.PathLike,
    splits: Sequence[str] = ("test", "external"),
    skip_missing: bool = True,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """The labelled cases of several splits in one datalist, each entry tagged with its ``"split"``.

    An evaluator runs over it once, and per-split tables are made from the tag (see
    :class:`monai_imbalance.handlers.SegmentationReportHandler`).

    Args:
        dataset_dir: folder holding ``dataset.json``.
        splits: the splits to evaluate, e.g. ``("test", "external")``.
        skip_missing: skip (with a warning) a split that ``dataset.json`` does not have; if False, raise.
        check_files: as in :func:`load_datalist`; every entry must have a ``label``.

    Raises:
        DataValidationError: no split left, an unlabelled entry, or a problem found by :func:`load_datalist`.
    """
    if isinstance(splits, str):
        splits = (splits,)
    available = read_dataset_json(dataset_dir)
    datalist: list[dict[str, Any]] = []
    for split in splits:
        if skip_missing and split in SPLITS and not available.get(split):
            logger.warning(f"'{available['_path']}' has no '{split}' cases; skipping that split.")
            continue
        entries = load_datalist(dataset_dir, split, require_label=True, check_files=check_files)
        datalist.extend({**e, "split": split} for e in entries)
    if not datalist:
        raise DataValidationError(f"'{available['_path']}' has none of the splits {list(splits)} to evaluate.")
    return datalist


#: The image files the bundles' inference reads from a folder (MONAI's NIfTI reader, nibabel).
INFERENCE_EXTENSIONS = (".nii", ".nii.gz")


def load_inference_datalist(
    input_dir: str | os.PathLike, extensions: Sequence[str] = INFERENCE_EXTENSIONS
) -> list[dict[str, str]]:
    """The images of a folder to segment, as a datalist ``[{"image": path}, ...]`` sorted by file name.

    Args:
        input_dir: the folder (not searched recursively).
        extensions: the file name endings read, e.g. ``(".nii", ".nii.gz")``.

    Raises:
        DataValidationError: the folder does not exist, is not a folder, or holds no file with one of the
            ``extensions`` (the message names the folder, the extensions read and a few of the files it holds).
    """
    folder = os.fspath(input_dir)
    wanted = ", ".join(f"*{e}" for e in extensions)
    if not os.path.exists(folder):
        raise DataValidationError(f"input folder '{folder}' does not exist (inference reads {wanted}).")
    if not os.path.isdir(folder):
        raise DataValidationError(f"input folder '{folder}' is not a folder (inference reads {wanted} in a folder).")
    names = sorted(os.listdir(folder))
    images = [n for n in names if n.endswith(tuple(extensions)) and os.path.isfile(os.path.join(folder, n))]
    if not images:
        held = f"it holds {len(names)} other entries, e.g. {', '.join(names[:3])}" if names else "it is empty"
        raise DataValidationError(
            f"input folder '{folder}' has no images to segment: inference reads {wanted}; {held}."
        )
    return [{"image": os.path.abspath(os.path.join(folder, n))} for n in images]
