# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Label views: the labels a bundle trains on and MONAI's MapLabelValued with the view's values."""

from __future__ import annotations

import numpy as np
import pytest
from monai.transforms import MapLabelValued

from monai_imbalance.data import DataValidationError, label_view_mapping, select_labels

LABELS = {0: "background", 1: "deep_grey_matter", 2: "lesion"}


def _view(label: np.ndarray, classes) -> np.ndarray:
    orig, target = label_view_mapping(LABELS, classes)
    return np.asarray(MapLabelValued("label", orig, target)({"label": label})["label"])


def test_binary_lesion_view_folds_the_organ_into_the_background():
    label = np.array([[0, 1, 2, 2, 1, 0]])
    assert select_labels(LABELS, ["lesion"]) == {0: "background", 1: "lesion"}
    np.testing.assert_array_equal(_view(label, ["lesion"]), [[0, 0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(_view(label, [2]), [[0, 0, 1, 1, 0, 0]])  # by index too


def test_all_classes_is_the_identity_and_a_reordered_view_swaps_values():
    label = np.array([[0, 1, 2, 2, 1, 0]])
    assert select_labels(LABELS, None) == LABELS
    np.testing.assert_array_equal(_view(label, None), label)
    swapped = {0: "background", 1: "lesion", 2: "deep_grey_matter"}
    assert select_labels(LABELS, ["lesion", "deep_grey_matter"]) == swapped
    np.testing.assert_array_equal(_view(label, ["lesion", "deep_grey_matter"]), [[0, 2, 1, 1, 2, 0]])


@pytest.mark.parametrize(
    "classes, message",
    [
        (["tumour"], "'tumour' is not a class of the dataset"),
        ([7], "7 is not a class of the dataset"),
        (["background"], "is the background"),
        (["lesion", 2], "listed twice"),
        ([], "at least one foreground class"),
        ("lesion", "must be a list"),
        ([1.5], "neither a class name nor an index"),
    ],
)
def test_bad_classes_are_named(classes, message):
    with pytest.raises(DataValidationError, match=message):
        select_labels(LABELS, classes)
    with pytest.raises(DataValidationError, match=message):
        label_view_mapping(LABELS, classes)


def test_folded_classes_and_the_context_map_of_a_view():
    """The organ that the binary lesion view folds into the background is the human-defined context class."""
    from monai_imbalance.data import context_view_mapping, folded_classes

    labels = {0: "background", 1: "organ", 2: "lesion", 3: "vessel"}
    assert folded_classes(labels, ["lesion"]) == ["organ", "vessel"]
    assert folded_classes(labels, ["organ", "lesion", "vessel"]) == [] and folded_classes(labels, None) == []
    assert context_view_mapping(labels, ["organ"]) == ([0, 1, 2, 3], [0, 1, 0, 0])
    assert context_view_mapping(labels, []) == ([0, 1, 2, 3], [0, 0, 0, 0])  # nothing folded: an empty context
    with pytest.raises(DataValidationError, match="context_classes"):
        context_view_mapping(labels, ["liver"])
