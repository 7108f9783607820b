# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Input validation where data enters: ``dataset.json``, files on disk, and loaded image/label pairs.

Bad input must fail before training starts, with a message that names the file, the key or the value:

- :func:`read_dataset_json` checks that ``dataset.json`` exists, parses, and has the Medical Segmentation
  Decathlon keys this project relies on (``labels`` with ``"0"`` for background, a ``training`` list).
- :func:`check_datalist_files` checks that every file of a datalist exists and, from the NIfTI headers alone
  (cheap: no voxel data is read), that each label has the image's spatial shape and affine.
- :class:`ValidateSegmentationPaird` is a dictionary transform placed right after ``LoadImaged``: it checks the
  loaded voxels (label values in the declared set, finite intensities, matching shape and affine, empty
  foreground) and names the file. Put it in the cached, deterministic part of the pipeline: with
  ``CacheDataset`` every case is checked once, while the cache is filled, before the first iteration.

A bundle config evaluates these checks inside MONAI's config parser, which wraps every error in a ``RuntimeError``
("Failed to evaluate ConfigExpression ..."), so the message would sit in the middle of a long traceback.
:func:`install_error_summary` (run when :mod:`monai_imbalance.data` is imported, as every bundle config does) makes
an uncaught error whose chain holds a :class:`DataValidationError` print that message as one line,
``ERROR: <message>``, before the traceback. Other errors, and errors that are caught, are left alone.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = [
    "DataValidationError",
    "data_error_in",
    "install_error_summary",
    "read_dataset_json",
    "parse_labels",
    "check_datalist_files",
    "ValidateSegmentationPaird",
]

logger = logging.getLogger(__name__)

#: The largest difference between image and label affine entries (in mm) still taken as "the same grid".
AFFINE_ATOL = 1e-3


class DataValidationError(ValueError):
    """Raised when a dataset, a datalist entry or a loaded case is not usable; the message names the source."""


def data_error_in(error: BaseException | None) -> DataValidationError | None:
    """The first :class:`DataValidationError` in ``error`` and the exceptions it was raised from or during.

    Args:
        error: an exception (e.g. MONAI's ``RuntimeError`` wrapping a failed config expression).

    Returns:
        the data error, or None when the chain has none.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, DataValidationError):
            return error
        seen.add(id(error))
        error = error.__cause__ if error.__cause__ is not None or error.__suppress_context__ else error.__context__
    return None


def _one_line(error: DataValidationError) -> str:
    """The message in one line; for an error re-raised from a DataLoader worker, the original message only."""
    text = str(error)
    marker = f"{DataValidationError.__name__}: "
    if "Original Traceback" in text and marker in text:  # torch's ExceptionWrapper keeps the type, adds the trace
        text = text.rsplit(marker, 1)[1]
    return " ".join(text.split())


def install_error_summary() -> None:
    """Make an uncaught error caused by bad input print its message in one line before the traceback.

    Wraps ``sys.excepthook`` once (calling it again does nothing): when the chain of an uncaught exception holds a
    :class:`DataValidationError` (see :func:`data_error_in`), ``ERROR: <message>`` goes to stderr first, then the
    previous hook prints the traceback as usual. Any other exception goes to the previous hook untouched.
    """
    previous = sys.excepthook
    if getattr(previous, "_monai_imbalance_error_summary", False):
        return

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        found = data_error_in(exc)
        if found is not None:
            sys.stderr.write(f"ERROR: {_one_line(found)}\n")
            sys.stderr.flush()
        previous(exc_type, exc, tb)

    hook._monai_imbalance_error_summary = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _dataset_json_path(dataset: str | os.PathLike) -> Path:
    path = Path(dataset)
    if path.is_dir() or path.suffix.lower() != ".json":
        if not path.exists():
            raise DataValidationError(
                f"dataset folder '{path}' does not exist. Pass --dataset_dir pointing to a folder with a "
                "dataset.json (Medical Segmentation Decathlon layout), or run "
                "`python -m monai_imbalance.data prepare` to build the built-in dataset."
            )
        path = path / "dataset.json"
    if not path.is_file():
        raise DataValidationError(
            f"'{path}' not found: a dataset folder needs a dataset.json (Medical Segmentation Decathlon layout)."
        )
    return path


def parse_labels(labels: Any, source: str = "dataset.json") -> dict[int, str]:
    """Parse the ``labels`` entry of a ``dataset.json`` into ``{index: name}``.

    Args:
        labels: the raw entry, e.g. ``{"0": "background", "1": "tumour"}``.
        source: where it came from, for the error message.

    Returns:
        a dict sorted by index whose keys are ``0..C-1``.

    Raises:
        DataValidationError: if it is not a mapping of integer-like keys to names, lacks ``"0"``, or has gaps.
    """
    if not isinstance(labels, Mapping) or not labels:
        raise DataValidationError(f'{source}: \'labels\' must be a non-empty object like {{"0": "background"}}.')
    parsed: dict[int, str] = {}
    for key, name in labels.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise DataValidationError(f"{source}: label key {key!r} in 'labels' is not an integer.") from None
        if index < 0:
            raise DataValidationError(f"{source}: label key {key!r} in 'labels' is negative.")
        parsed[index] = str(name)
    indices = sorted(parsed)
    if indices != list(range(len(indices))):
        raise DataValidationError(f"{source}: 'labels' keys must be 0..C-1 with 0 the background; got {indices}.")
    return {i: parsed[i] for i in indices}


def read_dataset_json(dataset: str | os.PathLike) -> dict[str, Any]:
    """Read and check a Medical Segmentation Decathlon ``dataset.json``.

    Args:
        dataset: the dataset folder or the path of its ``dataset.json``.

    Returns:
        the parsed content, with ``labels`` normalised by :func:`parse_labels` and the path under ``"_path"``.

    Raises:
        DataValidationError: missing folder or file, invalid JSON (with line and column), missing ``labels`` or
            ``training``, a split that is not a list, or an entry without an ``image``.
    """
    path = _dataset_json_path(dataset)
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise DataValidationError(f"'{path}' is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.") from e
    if not isinstance(content, dict):
        raise DataValidationError(f"'{path}' must hold a JSON object, got {type(content).__name__}.")
    for key in ("labels", "training"):
        if key not in content:
            raise DataValidationError(f"'{path}' has no '{key}' key (Medical Segmentation Decathlon layout).")
    content["labels"] = parse_labels(content["labels"], source=str(path))
    for split, entries in content.items():
        if split not in ("training", "validation", "test", "external") or entries is None:
            continue
        if not isinstance(entries, list):
            raise DataValidationError(f"'{path}': '{split}' must be a list, got {type(entries).__name__}.")
        for i, entry in enumerate(entries):
            if isinstance(entry, str):
                continue
            if not isinstance(entry, Mapping) or not isinstance(entry.get("image"), (str, list)):
                raise DataValidationError(f"'{path}': entry {i} of '{split}' has no 'image' path: {entry!r}.")
    content["_path"] = str(path)
    return content


def _spatial_header(path: str) -> tuple[tuple[int, ...], np.ndarray] | None:
    """Spatial shape and affine from a NIfTI header, or None for formats nibabel cannot read."""
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception:  # not a format nibabel knows: the loaded-data check still covers it
        return None
    return tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, dtype=np.float64)


def check_datalist_files(
    datalist: Sequence[Mapping[str, Any]],
    keys: Iterable[str] = ("image", "label"),
    source: str = "datalist",
    check_headers: bool = True,
) -> None:
    """Check that the files of a datalist exist and that each label is on its image's grid.

    Args:
        datalist: entries like ``{"image": "/abs/img.nii.gz", "label": "/abs/lab.nii.gz"}``.
        keys: keys whose paths must exist (missing keys are an error too).
        source: a name for messages, e.g. the ``dataset.json`` path and split.
        check_headers: also compare image and label spatial shape and affine from their NIfTI headers.

    Raises:
        DataValidationError: listing every missing file (up to 10), or the first shape/affine mismatch.
    """
    keys = tuple(keys)
    missing: list[str] = []
    for i, entry in enumerate(datalist):
        for key in keys:
            if key not in entry:
                raise DataValidationError(f"{source}: entry {i} has no '{key}': {dict(entry)!r}.")
            paths = entry[key] if isinstance(entry[key], (list, tuple)) else [entry[key]]
            missing.extend(str(p) for p in paths if not os.path.exists(p))
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataValidationError(f"{source}: {len(missing)} file(s) not found:\n  {shown}{more}")
    if not (check_headers and "image" in keys and "label" in keys):
        return
    for entry in datalist:
        if isinstance(entry["image"], (list, tuple)) or isinstance(entry["label"], (list, tuple)):
            continue
        image, label = _spatial_header(entry["image"]), _spatial_header(entry["label"])
        if image is None or label is None:
            continue
        _check_same_grid(image[0], label[0], image[1], label[1], entry["image"], entry["label"], source)


def _check_same_grid(
    image_shape: Sequence[int],
    label_shape: Sequence[int],
    image_affine: np.ndarray | None,
    label_affine: np.ndarray | None,
    image_name: str,
    label_name: str,
    source: str,
) -> None:
    if tuple(image_shape) != tuple(label_shape):
        raise DataValidationError(
            f"{source}: image '{image_name}' has spatial shape {tuple(image_shape)} but label '{label_name}' has "
            f"{tuple(label_shape)}; they must be on the same grid."
        )
    if image_affine is not None and label_affine is not None:
        diff = float(np.max(np.abs(np.asarray(image_affine) - np.asarray(label_affine))))
        if diff > AFFINE_ATOL:
            raise DataValidationError(
                f"{source}: image '{image_name}' and label '{label_name}' have different affines (largest "
                f"difference {diff:.4g} mm):\nimage:\n{np.round(image_affine, 4)}\nlabel:\n{np.round(label_affine, 4)}"
            )


def _name_of(data: Any, fallback: str) -> str:
    meta = getattr(data, "meta", None)
    if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    return fallback


def _affine_of(data: Any) -> np.ndarray | None:
    affine = getattr(data, "affine", None)
    return None if affine is None else np.asarray(torch.as_tensor(affine).detach().cpu(), dtype=np.float64)


class ValidateSegmentationPaird(MapTransform):
    """Check a loaded image/label pair and raise :class:`DataValidationError` naming the file.

    Place it after ``LoadImaged`` and ``EnsureChannelFirstd`` (inputs ``(C, *spatial)`` and ``(1, *spatial)``),
    before any resampling, in the cached deterministic transforms.

    Checks: the image has the bundle's number of spatial dimensions (``spatial_dims``); the label has the image's
    spatial shape and affine; label values are integers in ``labels``; the image has no NaN or infinite value; the
    label has some foreground (an empty label logs a warning, or raises when ``allow_empty_foreground=False``).

    Args:
        keys: the image key(s) to check for finite values.
        label_key: the label key. A case without it (an unlabelled test image) is checked for finiteness only.
        labels: the declared label indices (e.g. the ``labels`` of ``dataset.json``, a mapping or a sequence of
            indices), or the number of classes ``C`` for ``0..C-1``.
        allow_empty_foreground: whether a label without foreground is allowed (warned about) or an error.
        spatial_dims: the spatial dimensions the network takes (3 for the bundles' 3D DynUNet); an image with
            another number (a 2D PNG given to a 3D bundle) is an error naming the file. ``None``: not checked.
        allow_missing_keys: as for :class:`monai.transforms.MapTransform`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        labels: Mapping[Any, Any] | Sequence[int] | int = 2,
        allow_empty_foreground: bool = True,
        spatial_dims: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.spatial_dims = spatial_dims
        if isinstance(labels, int):
            allowed: Iterable[Any] = range(labels)
        elif isinstance(labels, Mapping):
            allowed = parse_labels(labels, source="ValidateSegmentationPaird(labels=...)").keys()
        else:
            allowed = labels
        self.allowed = torch.as_tensor(sorted(int(v) for v in allowed), dtype=torch.float64)
        self.allow_empty_foreground = allow_empty_foreground

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label = d.get(self.label_key)
        label_name = _name_of(label, f"key '{self.label_key}'")
        for key in self.key_iterator(d):
            image = d[key]
            image_name = _name_of(image, f"key '{key}'")
            if self.spatial_dims is not None and image.ndim - 1 != self.spatial_dims:
                raise DataValidationError(
                    f"image '{image_name}' has {image.ndim - 1} spatial dimension(s) (shape {tuple(image.shape)} with "
                    f"the channel first), this bundle's network takes {self.spatial_dims}D images."
                )
            values = torch.as_tensor(image)
            if not torch.isfinite(values).all():
                n_bad = int((~torch.isfinite(values)).sum())
                raise DataValidationError(
                    f"image '{image_name}' has {n_bad} non-finite (NaN or infinite) voxel(s); clean or mask them."
                )
            if label is not None:
                _check_same_grid(
                    tuple(image.shape[1:]),
                    tuple(label.shape[1:]),
                    _affine_of(image),
                    _affine_of(label),
                    image_name,
                    label_name,
                    "ValidateSegmentationPaird",
                )
        if label is not None:
            self._check_label(torch.as_tensor(label), label_name)
        return d

    def _check_label(self, label: torch.Tensor, name: str) -> None:
        if label.shape[0] != 1:
            raise DataValidationError(
                f"label '{name}' has {label.shape[0]} channels; expected a single-channel label map (1, *spatial)."
            )
        values = torch.unique(label.detach().cpu().to(torch.float64))
        if not torch.isfinite(values).all():
            raise DataValidationError(f"label '{name}' has non-finite values.")
        unexpected = values[~torch.isin(values, self.allowed)]
        if unexpected.numel() > 0:
            shown = [v if v != int(v) else int(v) for v in unexpected.tolist()[:10]]
            raise DataValidationError(
                f"label '{name}' has value(s) {shown} not among the declared labels "
                f"{[int(v) for v in self.allowed.tolist()]} (see 'labels' in dataset.json)."
            )
        if not bool((values > 0).any()):
            msg = f"label '{name}' has no foreground voxel."
            if not self.allow_empty_foreground:
                raise DataValidationError(msg)
            logger.warning(msg + " Class-balanced patch sampling will only draw background patches from it.")
