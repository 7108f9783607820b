# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Data: MSD datalists with training fractions, input validation, phantoms, the built-in dataset, lesions, shifts.

The built-in dataset is built by ``python -m monai_imbalance.data prepare`` (:func:`prepare_dataset`, see
:mod:`monai_imbalance.data.builtin` for what it is and :mod:`monai_imbalance.data.sources` for where it comes from).
"""

from __future__ import annotations

from .builtin import TASKS, PrepareError, prepare_dataset, synthesize_case
from .datalist import (
    INFERENCE_EXTENSIONS,
    SPLITS,
    holdout_split,
    load_datalist,
    load_evaluation_datalist,
    load_inference_datalist,
    load_labels,
    training_subset,
)
from .label_view import context_view_mapping, folded_classes, label_view_mapping, select_labels
from .lesions import Lesion, LesionParams, add_lesions, lesion_centre_region
from .phantoms import make_phantom_case, make_phantom_dataset
from .shifts import RANDOM_SHIFTS, SHIFT_SEVERITIES, SHIFTS, SimulateDomainShiftd, apply_shift, shift_parameters
from .sources import ChecksumError, SourceError, default_cache_dir
from .validation import (
    DataValidationError,
    ValidateSegmentationPaird,
    check_datalist_files,
    data_error_in,
    install_error_summary,
    parse_labels,
    read_dataset_json,
)

# Bundle configs import this package: an uncaught bad-input error then prints its message in one line before MONAI's
# long config traceback (see monai_imbalance.data.validation.install_error_summary).
install_error_summary()

__all__ = [
    "label_view_mapping",
    "folded_classes",
    "context_view_mapping",
    "select_labels",
    "RANDOM_SHIFTS",
    "SHIFTS",
    "SHIFT_SEVERITIES",
    "SPLITS",
    "INFERENCE_EXTENSIONS",
    "load_inference_datalist",
    "TASKS",
    "ChecksumError",
    "Lesion",
    "LesionParams",
    "PrepareError",
    "SourceError",
    "add_lesions",
    "default_cache_dir",
    "lesion_centre_region",
    "prepare_dataset",
    "synthesize_case",
    "DataValidationError",
    "data_error_in",
    "install_error_summary",
    "SimulateDomainShiftd",
    "ValidateSegmentationPaird",
    "apply_shift",
    "check_datalist_files",
    "holdout_split",
    "load_datalist",
    "load_evaluation_datalist",
    "load_labels",
    "make_phantom_case",
    "make_phantom_dataset",
    "parse_labels",
    "read_dataset_json",
    "shift_parameters",
    "training_subset",
]
