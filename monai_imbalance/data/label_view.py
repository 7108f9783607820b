# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Label views: train and evaluate on a subset of a dataset's classes without copying the data.

One dataset serves several tasks. The built-in ``brain_lesion`` labels ``0`` background, ``1`` deep grey matter
(the organ) and ``2`` lesion; the binary lesion task keeps ``["lesion"]`` (the organ folds into the background),
the organ + lesion task keeps all classes. A bundle names the kept classes in its ``classes`` key, derives its
``labels`` with :func:`select_labels`, and maps the label images with MONAI's ``MapLabelValued`` and the values of
:func:`label_view_mapping`, after the labels were checked against the dataset's own ``labels``::

    "classes": ["lesion"],
    "source_labels": "$monai_imbalance.data.load_labels(@dataset_dir)",
    "labels": "$monai_imbalance.data.select_labels(@source_labels, @classes)",
    {"_target_": "monai.transforms.MapLabelValued", "_disabled_": "$@classes is None", "keys": "label",
     "orig_labels": "$monai_imbalance.data.label_view_mapping(@source_labels, @classes)[0]",
     "target_labels": "$monai_imbalance.data.label_view_mapping(@source_labels, @classes)[1]"}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .validation import DataValidationError

__all__ = ["select_labels", "label_view_mapping", "folded_classes", "context_view_mapping"]


def _kept_indices(labels: Mapping[int, str], classes: Sequence[str | int]) -> list[int]:
    if isinstance(classes, (str, int)):
        raise DataValidationError(f"classes must be a list of class names or indices, got {classes!r}.")
    by_name = {str(name): int(index) for index, name in labels.items()}
    kept: list[int] = []
    for item in classes:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise DataValidationError(f"classes: {item!r} is neither a class name nor an index.")
        index = int(item) if isinstance(item, int) else by_name.get(item)
        if index is None or index not in labels:
            known = ", ".join(f"{i}: {n!r}" for i, n in sorted(labels.items()))
            raise DataValidationError(f"classes: {item!r} is not a class of the dataset (labels {{{known}}}).")
        if index == 0:
            raise DataValidationError(f"classes: {item!r} is the background; list foreground classes only.")
        if index in kept:
            raise DataValidationError(f"classes: {item!r} is listed twice.")
        kept.append(index)
    if not kept:
        raise DataValidationError("classes must name at least one foreground class (or be null for all classes).")
    return kept


def select_labels(labels: Mapping[int, str], classes: Sequence[str | int] | None = None) -> dict[int, str]:
    """The ``{index: name}`` labels of the view that keeps ``classes``.

    Args:
        labels: the dataset's labels, ``{index: name}`` with 0 the background (:func:`load_labels`).
        classes: the foreground classes to keep, by name or index, in their new order (class ``k`` of the view is
            ``classes[k - 1]``); ``None`` keeps every class as it is.

    Returns:
        ``{0: background name, 1: classes[0], ...}``, or a copy of ``labels`` when ``classes`` is ``None``.

    Raises:
        DataValidationError: an unknown class, the background, a class listed twice, or an empty list.
    """
    if classes is None:
        return dict(labels)
    kept = _kept_indices(labels, classes)
    return {0: labels[0], **{k: labels[index] for k, index in enumerate(kept, start=1)}}


def label_view_mapping(
    labels: Mapping[int, str], classes: Sequence[str | int] | None = None
) -> tuple[list[int], list[int]]:
    """``(orig_labels, target_labels)`` of ``monai.transforms.MapLabelValued`` for the view that keeps ``classes``.

    Every dataset value is listed: a kept class goes to its index in the view, any other to 0 (background).

    Args:
        labels: the dataset's labels, ``{index: name}``.
        classes: as in :func:`select_labels`; ``None`` gives the identity.

    Returns:
        two lists of the same length, dataset values and their values in the view.
    """
    values = sorted(int(i) for i in labels)
    if classes is None:
        return values, list(values)
    new = {index: k for k, index in enumerate(_kept_indices(labels, classes), start=1)}
    return values, [new.get(v, 0) for v in values]


def folded_classes(labels: Mapping[int, str], classes: Sequence[str | int] | None = None) -> list[str]:
    """The foreground classes that the view keeping ``classes`` folds into the background, by name.

    E.g. the binary lesion view of a dataset with an organ and a lesion folds the organ: CoLab's human-defined context
    (the organ mask as a context class of the background) takes exactly these classes.

    Args:
        labels: the dataset's labels, ``{index: name}`` (0 is the background).
        classes: as in :func:`select_labels`; ``None`` (every class kept) folds nothing.
    """
    if classes is None:
        return []
    kept = set(_kept_indices(labels, classes))
    return [labels[i] for i in sorted(int(i) for i in labels) if i != 0 and i not in kept]


def context_view_mapping(labels: Mapping[int, str], context_classes: Sequence[str]) -> tuple[list[int], list[int]]:
    """``(orig_labels, target_labels)`` of ``monai.transforms.MapLabelValued`` for a binary context map.

    Every dataset value is listed: the values of ``context_classes`` go to 1 (the second context class), any other to 0
    (context 0). An empty ``context_classes`` gives an all-zero map.

    Args:
        labels: the dataset's labels, ``{index: name}``.
        context_classes: class names whose voxels form the context class.

    Raises:
        DataValidationError: a name that is not a class of the dataset.
    """
    names = {name: int(i) for i, name in labels.items()}
    unknown = [c for c in context_classes if c not in names]
    if unknown:
        raise DataValidationError(
            f"context_classes: {unknown} not classes of the dataset (labels {dict(sorted(labels.items()))})."
        )
    chosen = {names[c] for c in context_classes}
    values = sorted(int(i) for i in labels)
    return values, [1 if v in chosen else 0 for v in values]
