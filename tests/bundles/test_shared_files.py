# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""What the bundles share stays the same in every bundle, so that rows of different bundles compare.

Every bundle trains the same segmenter on the same data pipeline and validates it the same way; only the method
differs. The shared parts live in each bundle (a Model Zoo bundle is self-contained), so a change to one copy must be
made to all: these tests fail until it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
NAMES = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "train.json").is_file())

#: train.json settings that are the same experiment in every bundle: data, label view, sizes, schedule, optimiser
SHARED_SETTINGS = (
    "amp", "batch_size", "cache_rate", "ckpt_dir", "classes", "dataset_dir", "device", "epochs", "filters",
    "initialize", "iterations_per_epoch", "labels", "learning_rate", "log_interval", "lr_scheduler", "network",
    "num_classes", "num_samples", "num_workers", "optimizer", "output_dir", "patch_size", "pixdim", "resume", "run",
    "seed", "source_labels", "tensorboard_dir", "training", "training_fraction", "val_interval",
)  # fmt: skip
#: sections of train.json that every bundle shares whole: the cached data pipeline and the validation (its inferer
#: may differ: the learned-augmentation bundle validates through its test-time augmentation)
SHARED_SECTIONS = ("train#deterministic_transforms",) + tuple(
    f"validate#{k}"
    for k in ("datalist", "preprocessing", "dataset", "dataloader", "postprocessing", "handlers", "key_metric",
              "additional_metrics", "evaluator")
)  # fmt: skip


def _train(name: str) -> dict:
    return json.loads((BUNDLES / name / "configs" / "train.json").read_text())


def _get(config: dict, path: str):
    for key in path.split("#"):
        config = config[key]
    return config


def test_there_are_bundles_to_compare():
    assert len(NAMES) >= 4, NAMES


@pytest.mark.parametrize("key", SHARED_SETTINGS + SHARED_SECTIONS)
def test_shared_train_settings_are_identical(key):
    values = {name: _get(_train(name), key) for name in NAMES}
    reference = values[NAMES[0]]
    differ = [name for name, value in values.items() if value != reference]
    assert not differ, f"train.json '{key}' differs from {NAMES[0]}'s in {differ}: change it in every bundle"


#: files every bundle ships the same: the logging set-up, the presets (sizes and schedules), the optimisers
SHARED_FILES = ["logging.conf"] + sorted(
    p.relative_to(BUNDLES / name / "configs").as_posix()
    for name in NAMES
    for folder in ("presets", "optimizers")
    for p in (BUNDLES / name / "configs" / folder).glob("*.json")
)


@pytest.mark.parametrize("path", sorted(set(SHARED_FILES)))
def test_shared_files_are_byte_identical(path):
    missing = [name for name in NAMES if not (BUNDLES / name / "configs" / path).is_file()]
    assert not missing, f"configs/{path} is missing in {missing}"
    contents = {name: (BUNDLES / name / "configs" / path).read_bytes() for name in NAMES}
    differ = [name for name, data in contents.items() if data != contents[NAMES[0]]]
    assert not differ, f"configs/{path} differs from {NAMES[0]}'s in {differ}"


def test_the_check_sees_a_difference(tmp_path):
    """The comparison itself: a changed optimiser in one copy is a difference."""
    a, b = _train(NAMES[0]), _train(NAMES[0])
    b["optimizer"] = {**b["optimizer"], "lr": "$@learning_rate * 2"}
    assert _get(a, "optimizer") != _get(b, "optimizer")
    assert _get(a, "train#deterministic_transforms") == _get(b, "train#deterministic_transforms")
